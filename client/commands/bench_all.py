"""``semper bench all``: every bench's figures in one JSON document, with the machine they ran on.

Why a command of its own: ``docs/performance.md`` must quote figures from one run on one machine;
``--quick`` gives the same document at CI size (a test checks it is complete, never its timings),
``--no-pcscd`` leaves out what needs the PC/SC daemon (only one pcscd per machine).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import UsageError, print_json


def cmd_bench_all(args: argparse.Namespace) -> int:
    from semper.bench.all import SECTIONS, bench_all
    names = {s.name for s in SECTIONS}
    bad = sorted(set(args.only or ()) - names)
    if bad:
        raise UsageError(f"no bench called {', '.join(bad)}; benches: {', '.join(sorted(names))}")
    doc = bench_all(quick=args.quick, no_pcscd=args.no_pcscd, only=tuple(args.only or ()), progress=not args.silent)
    doc["command"] = "semper bench all" + (" --quick" if args.quick else "") + (" --no-pcscd" if args.no_pcscd else "") \
        + "".join(f" --only {o}" for o in args.only or ())
    if args.output is not None:
        args.output.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print_json(doc)
    return 1 if doc["errors"] else 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = groups["bench"].add_parser("all", help="every bench's figures in one JSON document, with the machine")
    p.add_argument("--quick", action="store_true", help="CI sizes: seconds, not minutes (figures are then rough)")
    p.add_argument("--no-pcscd", action="store_true", help="skip what needs pcscd (apdu through pcscd, card signatures)")
    p.add_argument("--only", action="append", metavar="BENCH", help="run only this bench (repeat for several)")
    p.add_argument("--output", type=Path, help="also write the JSON document to this file")
    p.add_argument("--silent", action="store_true", help="no progress lines on standard error")
    p.set_defaults(fn=cmd_bench_all)
