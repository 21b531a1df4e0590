"""``semper chaos --runs N --seed S``: randomised commerce runs under faults, each one checked.

Attached to the ``semper`` command through the ``semper.commands`` entry point (pyproject.toml).

Every run drives one workflow (mail order, information, registration, contract signing) through
the buyer's real client against real ``semper serve`` processes while the plan tears the buyer's
card, drops a connection, kills and restarts a party (between requests or while it handles one),
or makes the shop cheat (or injects nothing:
a control). After every run ``semper audit``, both archives, money and the honest party's holdings
are checked (``chaos/checks.py``). One line per run says what was injected and what was found; a
JSON summary ends the output; a failing run prints the command that replays it. Exit status 1 on
any violation. See docs/reliability.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from semper.client.commands import UsageError, positive_float, positive_int, print_json


def cmd_chaos(args: argparse.Namespace) -> int:
    from .plan import WORKFLOWS
    from .runner import RunReport, run_chaos
    if args.replay is None and args.runs < 1:
        raise UsageError("--runs must be at least 1")
    if args.patience <= 0 or args.patience > 60:
        raise UsageError("--patience must be between 0 and 60 seconds")
    workflows = tuple(dict.fromkeys(args.workflow)) if args.workflow else WORKFLOWS
    if not args.verbose:            # the parties log every failed exchange run; the run lines say it shorter
        logging.getLogger().setLevel(logging.CRITICAL)
    total = 1 if args.replay is not None else args.runs
    started = time.monotonic()
    step = max(1, total // 20)

    def on_run(report: RunReport) -> None:
        print(json.dumps(report.as_dict(), sort_keys=True) if args.json else report.line(), flush=True)
        done = report.index + 1
        if total >= 20 and (done % step == 0 or done == total):
            print(f"chaos: {done}/{total} runs, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    def say(line: str) -> None:
        print(f"chaos: {line}", file=sys.stderr, flush=True)
    try:
        summary = run_chaos(args.runs, args.seed, workflows=workflows, replay=args.replay, keep=args.keep,
                            on_run=on_run, say=say, patience=args.patience, db=args.db)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print_json(summary.as_dict())
    for f in summary.failing:
        if f.get("replay"):
            print(f"chaos: run {f['run']} failed; replay it with: {f['replay']}", file=sys.stderr)
    if summary.known_limits:
        print(f"chaos: {len(summary.known_limits)} run(s) met a known limit (listed in the summary and in "
              "docs/reliability.md)", file=sys.stderr)
    return 0 if summary.violations == 0 else 1


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    from .plan import WORKFLOWS
    p = sub.add_parser("chaos", help="randomised workflow runs with torn cards, dropped links, crashes, cheating")
    p.add_argument("--runs", type=positive_int, default=20, help="how many runs (default 20)")
    p.add_argument("--seed", type=int, default=1, help="the seed every run's own seed is derived from (default 1)")
    p.add_argument("--replay", type=int, metavar="RUN_SEED", help="run exactly the run with this run seed (printed "
                                                                   "on each run's line)")
    p.add_argument("--workflow", action="append", choices=WORKFLOWS,
                   help="only this workflow (repeat for several; default: all four, rotated)")
    p.add_argument("--json", action="store_true", help="one JSON object per run instead of a line")
    p.add_argument("--keep", type=Path, metavar="DIR", help="make the world in this new folder and keep it "
                                                           "(archives, bank, bundles) for inspection")
    p.add_argument("--patience", type=positive_float, default=2.0,
                   help="the buyer's patience for a delivery or an exchange step, seconds (default 2)")
    p.add_argument("--verbose", action="store_true", help="keep the parties' own log messages")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                   help="where every service keeps its state: SQLite in its folder (default), or a PostgreSQL "
                        "cluster the run starts for itself (needs Debian's postgresql)")
    p.set_defaults(fn=cmd_chaos)
