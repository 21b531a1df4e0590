"""The ``semper`` command: parses arguments, calls one layer, prints the outcome.

Command groups live in ``client/commands/``, one module each, found at start-up. Errors from below
arrive as the project's exceptions, all ``SemperError``: one line a person can act on, and the exit
status the error's class names (2 bad input, 1 the operation failed); never a traceback. Anything
else is a bug in semper: said so, with its traceback under ``SEMPER_DEBUG=1``. The exit statuses
are listed in docs/architecture.md.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable
from importlib import metadata
from importlib.metadata import entry_points
from typing import NoReturn

from semper.hardware.errors import SemperError

from . import commands

# groups that several modules add subcommands to
SHARED_GROUPS = {"bench": "measurements, as JSON", "serve": "run a party's network service (HTTPS)",
                 "card": "the simulated card: create, serve, inspect, use"}
#: command groups from other packages (the benches, chaos): ``register(sub, groups)`` functions
COMMANDS_GROUP = "semper.commands"


EPILOG = """exit status: 0 done (a check found nothing wrong); 1 the operation failed or a check found a problem
(a refused payment, a tampered archive, a bundle that is not ok); 2 bad input (arguments, files,
PINs that cannot be right), refused before anything was done; 130 interrupted. Results go to
standard output (-j/--json: one JSON document), notes and progress to standard error.
See docs/cli.md."""


class Parser(argparse.ArgumentParser):
    """argparse with one line for bad arguments (and a pointer to --help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def version() -> str:
    try:
        return f"semper {metadata.version('semper')}"
    except metadata.PackageNotFoundError:
        return "semper (not installed)"


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="semper", description="SEMPER secure electronic commerce: cards, purse, tools",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-V", "--version", action="version", version=version())
    sub = ap.add_subparsers(dest="command", required=True)
    groups = {name: sub.add_parser(name, help=text).add_subparsers(dest=f"{name}_command", required=True)
              for name, text in SHARED_GROUPS.items()}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub, groups)
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        ep.load()(sub, groups)
    return ap


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; a command whose positionals are a list (``semper buy [SHOP] ITEM...``) takes words that
    come after its options too (``semper buy teapot --pay card-purse tea-sampler``), as people type them."""
    args, extra = parser.parse_known_args(argv)
    more = getattr(args, "more_positionals", None)
    if extra:
        if more is None or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, more).extend(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except SemperError as e:
        print(f"semper: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("semper: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one readable line, the traceback on request
        if os.environ.get("SEMPER_DEBUG"):
            raise
        print(f"semper: unexpected error: {type(e).__name__}: {e} (set SEMPER_DEBUG=1 for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
