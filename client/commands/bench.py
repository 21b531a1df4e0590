"""``semper bench apdu``: APDU and PIV figures (other modules add their own bench commands)."""
from __future__ import annotations

import argparse

from . import print_json


def cmd_bench(args: argparse.Namespace) -> int:
    from semper.bench.apdu import bench_apdu
    print_json(bench_apdu(count=args.count))
    return 0



def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    bench = groups["bench"]
    p = bench.add_parser("apdu", help="APDU round trip in process and through pcscd")
    p.add_argument("--count", type=int, default=2000)
    p.set_defaults(fn=cmd_bench)

