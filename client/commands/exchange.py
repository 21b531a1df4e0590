"""``semper bench exchange``: messages, round trips and loopback latency of each exchange protocol (JSON)."""
from __future__ import annotations

import argparse

from . import UsageError, print_json


def cmd_bench_exchange(args: argparse.Namespace) -> int:
    from semper.bench.exchange import bench_exchange
    if args.runs < 1 or args.resolved_runs < 1:
        raise UsageError("--runs and --resolved-runs must be at least 1")
    print_json(bench_exchange(runs=args.runs, resolved_runs=args.resolved_runs, patience=args.patience))
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = groups["bench"].add_parser("exchange", help="fair exchange protocols over HTTPS on loopback")
    p.add_argument("--runs", type=int, default=20, help="fault-free runs per protocol (default 20)")
    p.add_argument("--resolved-runs", type=int, default=5, help="resolved runs per protocol (default 5)")
    p.add_argument("--patience", type=float, default=0.05,
                   help="seconds the buyer waits for the seller before it goes to the third party (default 0.05)")
    p.set_defaults(fn=cmd_bench_exchange)
