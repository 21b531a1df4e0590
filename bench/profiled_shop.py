"""``python -m semper.bench.profiled_shop --profile FILE ARGS...``: ``semper serve shop ARGS`` under the CPU
profiler (or, with ``--phases``, the phase timer of :mod:`.phases`), which runs from SIGUSR1 to SIGUSR2 and writes
its summary to FILE (``semper bench throughput``).

A launcher of its own so the shop's command knows nothing of profiling and production code never
imports the benches.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semper.client import cli

from .profiling import serve_profile_on_signals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semper.bench.profiled_shop",
                                 description="semper serve shop, profiled from SIGUSR1 to SIGUSR2")
    ap.add_argument("--profile", type=Path, required=True, help="where the profile's summary (JSON) goes")
    ap.add_argument("--phases", action="store_true",
                    help="time the purchase's phases (bench/phases.py) instead of profiling with yappi")
    args, rest = ap.parse_known_args(argv)
    serve_profile_on_signals(args.profile, phases=args.phases)
    return cli.main(["serve", "shop", *rest])


if __name__ == "__main__":
    sys.exit(main())
