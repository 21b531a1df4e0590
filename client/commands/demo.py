"""``semper demo``: the main job, end to end."""
from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    return run_demo(keep=args.keep)



def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="a whole marketplace on loopback: register, load, buy by mail order and by "
                                    "fair exchange, check the evidence")
    p.add_argument("--keep", action="store_true", help="keep the demo folder")
    p.set_defaults(fn=cmd_demo)
