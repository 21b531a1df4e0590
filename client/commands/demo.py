"""``semper demo``: the main job, end to end."""
from __future__ import annotations

import argparse

from . import UsageError, port


def cmd_demo(args: argparse.Namespace) -> int:
    if not args.web and (args.no_browser or args.agent_port is not None):
        raise UsageError("--agent-port and --no-browser go with --web")
    if args.web:
        from ..demo_web import run_web_demo
        return run_web_demo(keep=args.keep, agent_port=8470 if args.agent_port is None else args.agent_port,
                            browse=not args.no_browser)
    from ..demo import run_demo
    return run_demo(keep=args.keep)



def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("demo", help="a whole marketplace on loopback: register, load, buy by mail order and by "
                                    "fair exchange, check the evidence")
    p.add_argument("--keep", action="store_true", help="keep the demo folder")
    p.add_argument("--web", action="store_true", help="the shop's web site and the buyer's agent instead: prints the "
                                                      "shop's URL, opens a browser in a terminal, runs until Ctrl-C")
    p.add_argument("--agent-port", type=port, help="the agent's loopback port with --web (default "
                                                                "8470; another free one if it is taken)")
    p.add_argument("--no-browser", action="store_true", help="with --web: print the shop's URL only")
    p.set_defaults(fn=cmd_demo)
