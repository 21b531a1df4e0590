"""The benches' command line: ``semper bench apdu|sign|exchange|clearing|purchase|throughput|all`` and
``semper card tear-test``.

Attached to the ``semper`` command through the ``semper.commands`` entry point (pyproject.toml), so
the command modules of ``client/commands`` never import the benches.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from semper.client.commands import UsageError, positive_float, positive_int, print_json

from .lean_buyers import LEAN_BUYERS, LEAN_PROCESSES


def cmd_apdu(args: argparse.Namespace) -> int:
    from .apdu import bench_apdu
    print_json(bench_apdu(count=args.count))
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from .sign import bench_sign
    if args.count < 10:
        raise UsageError("--count must be at least 10")
    print_json(bench_sign(count=args.count, card=not args.no_card))
    return 0


def cmd_exchange(args: argparse.Namespace) -> int:
    from .exchange import bench_exchange
    if args.runs < 1 or args.resolved_runs < 1:
        raise UsageError("--runs and --resolved-runs must be at least 1")
    print_json(bench_exchange(runs=args.runs, resolved_runs=args.resolved_runs, patience=args.patience))
    return 0


def cmd_clearing(args: argparse.Namespace) -> int:
    from .clearing import bench_clearing
    print_json(bench_clearing(count=args.count, cards=args.cards))
    return 0


def cmd_purchase(args: argparse.Namespace) -> int:
    from .purchase import bench_purchase
    print_json(bench_purchase(runs=args.runs, floor_runs=args.floor_runs))
    return 0


def cmd_throughput(args: argparse.Namespace) -> int:
    from .throughput import bench_throughput
    say = None if args.quiet else (lambda line: print(f"[throughput] {line}", file=sys.stderr, flush=True))
    buyers = args.buyers or (LEAN_BUYERS if args.lean_buyers else 16)
    processes = args.processes or (LEAN_PROCESSES if args.lean_buyers else 2)
    try:
        report = bench_throughput(buyers=buyers, seconds=args.seconds, processes=processes,
                                  warmup=args.warmup, profile_seconds=0.0 if args.no_profile else args.profile_seconds,
                                  say=say, workers=args.workers, db=args.db, phases=args.phases,
                                  keep_offers=not args.offer_every_purchase, lean=args.lean_buyers,
                                  psams=args.psams)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print_json(report)
    if args.lean_buyers and (report["failed"] or report["failed_whole_run"] or not report["money"]["conserved"]):
        return 1          # a purchase whose note did not check, or money not conserved: the figure is void
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    from .all import SECTIONS, bench_all
    names = {s.name for s in SECTIONS}
    bad = sorted(set(args.only or ()) - names)
    if bad:
        raise UsageError(f"no bench called {', '.join(bad)}; benches: {', '.join(sorted(names))}")
    doc = bench_all(quick=args.quick, no_pcscd=args.no_pcscd, only=tuple(args.only or ()), progress=not args.silent)
    doc["command"] = "semper bench all" + (" --quick" if args.quick else "") \
        + (" --no-pcscd" if args.no_pcscd else "") \
        + "".join(f" --only {o}" for o in args.only or ())
    if args.output is not None:
        args.output.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print_json(doc)
    return 1 if doc["errors"] else 0


def cmd_tear_test(args: argparse.Namespace) -> int:
    from .tearing import run_tear_test
    if args.runs < 1 or args.write_chunk < 0:
        raise UsageError("--runs must be at least 1 and --write-chunk 0 or more")
    report = run_tear_test(runs=args.runs, seed=args.seed, progress=not args.quiet, write_chunk=args.write_chunk)
    print_json(report)
    return 0 if report["violations"] == 0 else 1


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    bench = groups["bench"]
    p = bench.add_parser("apdu", help="APDU round trip in process and through pcscd")
    p.add_argument("--count", type=positive_int, default=2000)
    p.set_defaults(fn=cmd_apdu)

    p = bench.add_parser("sign", help="ECDSA P-256 signatures: raw, SoftHSM2, simulated card via pcscd")
    p.add_argument("--count", type=positive_int, default=1000, help="signatures per measurement (default 1000)")
    p.add_argument("--no-card", action="store_true", help="skip the card measurements (no pcscd)")
    p.set_defaults(fn=cmd_sign)

    p = bench.add_parser("exchange", help="fair exchange protocols over HTTPS on loopback")
    p.add_argument("--runs", type=positive_int, default=20, help="fault-free runs per protocol (default 20)")
    p.add_argument("--resolved-runs", type=positive_int, default=5, help="resolved runs per protocol (default 5)")
    p.add_argument("--patience", type=positive_float, default=0.05,
                   help="seconds the buyer waits for the seller before it goes to the third party (default 0.05)")
    p.set_defaults(fn=cmd_exchange)

    p = bench.add_parser("clearing", help="debit proofs cleared per second at the acquirer")
    p.add_argument("--count", type=positive_int, default=2000, help="proofs in the batch (1 to 5000)")
    p.add_argument("--cards", type=positive_int, default=4, help="cards that made them")
    p.set_defaults(fn=cmd_clearing)

    p = bench.add_parser("purchase", help="a card-purse purchase end to end: latency, counts, floor")
    p.add_argument("--runs", type=positive_int, default=30, help="purchases to time (after two warm-up ones)")
    p.add_argument("--floor-runs", type=positive_int, default=30, help="repetitions of each floor component")
    p.set_defaults(fn=cmd_purchase)

    p = bench.add_parser("throughput", help="purchases per second at one seller with N concurrent buyers")
    p.add_argument("--buyers", type=positive_int, default=None,
                   help=f"concurrent buyers, each with its own card (default 16; with --lean-buyers {LEAN_BUYERS})")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="length of the timed window (default 10)")
    p.add_argument("--processes", type=positive_int, default=None,
                   help=f"worker processes the buyers run in (default 2; with --lean-buyers {LEAN_PROCESSES})")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of buying before the window (default 2)")
    p.add_argument("--profile-seconds", type=float, default=4.0, help="profiled window after the timed one (default 4)")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled window")
    p.add_argument("--phases", action="store_true",
                   help="in the profiled window, time the seller's phases (microseconds per purchase: signing, "
                        "token, database, PSAM, archive, HTTP) instead of profiling with yappi")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="the shop's worker processes (semper serve shop --workers N; default 1; N > 1: no profile)")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the shop's storage: SQLite in its folder (default) or a PostgreSQL cluster of the run's own "
                        "(durable commits; its server's CPU is counted as the seller's)")
    p.add_argument("--offer-every-purchase", action="store_true",
                   help="buyers ask the shop for its standing offer at every purchase instead of keeping it while "
                        "it is valid (the default): what a client that keeps nothing costs the shop")
    p.add_argument("--lean-buyers", action="store_true",
                   help="lean buyers: the real protocol on their own cards, orders signed before the window, no "
                        "TINGUIN or archive, every note checked after it (bench/lean_buyers.py); exit status 1 "
                        "when a purchase failed or money was not conserved")
    p.add_argument("--psams", type=positive_int, default=1,
                   help="the shop's PSAMs, each a simulated card in a reader of its own (1 or 2: vpcd's readers; "
                        "default 1); the money check adds up what each took. (A second PSAM did not raise the "
                        "rate here: docs/performance.md, the tenth round)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on standard error")
    p.set_defaults(fn=cmd_throughput)

    p = bench.add_parser("all", help="every bench's figures in one JSON document, with the machine")
    p.add_argument("--quick", action="store_true", help="CI sizes: seconds, not minutes (figures are then rough)")
    p.add_argument("--no-pcscd", action="store_true",
                   help="skip what needs pcscd (apdu through pcscd, card signatures)")
    p.add_argument("--only", action="append", metavar="BENCH", help="run only this bench (repeat for several)")
    p.add_argument("--output", type=Path, help="also write the JSON document to this file")
    p.add_argument("--silent", action="store_true", help="no progress lines on standard error")
    p.set_defaults(fn=cmd_all)

    p = groups["card"].add_parser("tear-test", help="kill a served card at random moments; check nothing is lost")
    p.add_argument("--runs", type=positive_int, default=200, help="number of kills (default 200)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--write-chunk", type=int, default=4, metavar="BYTES",
                   help="the card writes each commit in pieces of BYTES, so kills can land inside a write "
                        "(0: one write per commit)")
    p.set_defaults(fn=cmd_tear_test)
