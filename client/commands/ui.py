"""``semper ui`` (also ``semper tinguin``): open the TINGUIN on your card, for looking and checking.

It shows the readers and the card, the purse balance and the on-card log, the evidence archive,
and can check the card PIN (the PIN goes to the card, or the reader's PIN pad takes it). Deals open
the same window through the commerce layer; this command only reads.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import UsageError, card_args


def cmd_ui(args: argparse.Namespace) -> int:
    from ..tinguin.api import load_phrase
    from ..tinguin.app import TinguinApp
    from ..tinguin.sources import CardAccess
    from .archive import default_db
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the TINGUIN needs a terminal (standard input and output); run 'semper ui' in one")
    if args.image is not None and not args.image.exists():
        raise UsageError(f"no card image at {args.image}; create one with 'semper card new --image {args.image}'")
    archive: Path | None = args.db if args.db is not None else default_db()
    if args.db is not None and not args.db.exists():
        raise UsageError(f"no evidence archive at {args.db}")
    app = TinguinApp(phrase=load_phrase(), card=CardAccess(args.reader, args.image),
                     archive=archive if archive is not None and archive.exists() else None, start=args.screen,
                     refresh=args.refresh)
    app.run()
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("ui", aliases=["tinguin"], help="the TINGUIN on your card: status, purse and log, archive, "
                                                       "PIN check")
    card_args(p)
    p.add_argument("--db", type=Path, help="the evidence archive (default: evidence.sqlite3 in the semper folder)")
    p.add_argument("--screen", choices=["card", "purse", "archive"], default="card", help="the first screen")
    p.add_argument("--refresh", type=float, default=2.0, metavar="SECONDS",
                   help="re-read readers and card this often on the card screen (0: only with 'r'; default 2)")
    p.set_defaults(fn=cmd_ui)
