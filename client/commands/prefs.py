"""``semper prefs show|set|unset``: the user's preferences file (see client/support/prefs.py)."""
from __future__ import annotations

import argparse

from . import emit, json_arg, print_json


def cmd_show(args: argparse.Namespace) -> int:
    from ..support import prefs
    p = prefs.load()
    if args.json:
        print_json({"path": str(p.path), "values": p.values})
        return 0
    print(f"# {p.path}{'' if p.path.exists() else ' (not created yet)'}")
    for key, spec in prefs.KEYS.items():
        value = p.values.get(key)
        print(f"{key} = {value!r}" if value is not None else f"# {key}: not set ({spec.help})")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from ..support import prefs
    p = prefs.set_value(args.key, args.value)
    emit(args, {"key": args.key, "value": p.values[args.key], "path": str(p.path)},
         f"{args.key} = {p.values[args.key]!r} (in {p.path})")
    return 0


def cmd_unset(args: argparse.Namespace) -> int:
    from ..support import prefs
    p = prefs.unset(args.key)
    emit(args, {"key": args.key, "value": None, "path": str(p.path)}, f"{args.key} unset (in {p.path})")
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    prefs = sub.add_parser("prefs", help="show or change your preferences").add_subparsers(
        dest="prefs_command", required=True)
    p = prefs.add_parser("show", help="every key, its value or what it is for")
    json_arg(p)
    p.set_defaults(fn=cmd_show)
    p = prefs.add_parser("set", help="check and store one value")
    p.add_argument("key")
    p.add_argument("value")
    json_arg(p)
    p.set_defaults(fn=cmd_set)
    p = prefs.add_parser("unset", help="remove one value")
    p.add_argument("key")
    json_arg(p)
    p.set_defaults(fn=cmd_unset)
