"""``semper bench throughput``: purchases per second at one seller with N concurrent buyers (bench/throughput.py)."""
from __future__ import annotations

import argparse
import sys

from . import print_json


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from semper.bench.throughput import bench_throughput
    say = None if args.quiet else (lambda line: print(f"[throughput] {line}", file=sys.stderr, flush=True))
    try:
        report = bench_throughput(buyers=args.buyers, seconds=args.seconds, processes=args.processes,
                                  warmup=args.warmup, profile_seconds=0.0 if args.no_profile else args.profile_seconds,
                                  say=say)
    except ValueError as e:
        print(f"semper bench throughput: {e}", file=sys.stderr)
        return 2
    print_json(report)
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = groups["bench"].add_parser("throughput", help="purchases per second at one seller with N concurrent buyers")
    p.add_argument("--buyers", type=int, default=16, help="concurrent buyers, each with its own card (default 16)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the timed window (default 10)")
    p.add_argument("--processes", type=int, default=2, help="worker processes the buyers run in (default 2)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of buying before the window (default 2)")
    p.add_argument("--profile-seconds", type=float, default=4.0, help="profiled window after the timed one (default 4)")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled window")
    p.add_argument("--quiet", action="store_true", help="no progress lines on standard error")
    p.set_defaults(fn=cmd_bench_throughput)
