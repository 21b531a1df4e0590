"""Pieces every command module shares: the usage error, secret input, JSON output.

Each module in this package adds its commands with ``register(sub, groups)``; ``client.cli``
finds the modules by itself, so a new command group is one new file.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path


class UsageError(Exception):
    """Bad input on the command line (exit status 2)."""


# ---- helpers ------------------------------------------------------------------------------------
def read_secret(label: str, from_stdin: bool, confirm: bool = False) -> bytes:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UsageError(f"expected the {label} on standard input")
        return line.strip().encode()
    if not sys.stdin.isatty():
        raise UsageError(f"no terminal to ask for the {label}; pass --pin-stdin and send it on standard input")
    value = getpass.getpass(f"{label}: ")
    if confirm and getpass.getpass(f"{label} again: ") != value:
        raise UsageError(f"the two {label}s differ")
    return value.encode()


def card_args(p: argparse.ArgumentParser, psam: bool = False) -> None:
    p.add_argument("--reader", help="PC/SC reader of the buyer's card (default: search the readers)")
    p.add_argument("--image", type=Path, help="use a simulated card image in this process instead of a reader")
    if psam:
        p.add_argument("--psam-reader", help="PC/SC reader of the seller's PSAM (default: search)")
        p.add_argument("--psam-image", type=Path, help="a simulated PSAM image in this process")


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


