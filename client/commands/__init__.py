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

from semper.hardware.errors import SemperError


class UsageError(SemperError):
    """Bad input on the command line (exit status 2)."""

    exit_status = 2
    http_status = 400
    code = "bad_request"


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




# ---- the purse scheme's token ---------------------------------------------------------------------
SCHEME_PIN_ENV = "SEMPER_SCHEME_PIN_FILE"


def scheme_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheme-pin-file", type=Path,
                   help=f"read the purse scheme token's PIN from this file, kept outside the scheme folder "
                        f"(default: the file ${SCHEME_PIN_ENV} names, else ask on the terminal)")


def open_scheme(args: argparse.Namespace, folder: Path | None = None):  # type: ignore[no-untyped-def]
    """The purse scheme in ``folder`` (default ``$SEMPER_HOME/scheme``), opened on its token.

    On first use the scheme is made: a new SoftHSM2 token in the folder with the PIN given here,
    its SO PIN shown once. The PIN is never written into the folder: a file that would put it next
    to the token is refused.
    """
    import os

    from ..support.paths import semper_home
    from ..support.scheme import OLD_KEY_FILES, PIN_MIN, Scheme, weak_pin_message
    folder = Path(folder) if folder else semper_home() / "scheme"
    new = not Scheme.exists(folder)
    source = getattr(args, "scheme_pin_file", None) or (Path(os.environ[SCHEME_PIN_ENV])
                                                        if os.environ.get(SCHEME_PIN_ENV) else None)
    if source is not None:
        if Path(source).resolve().is_relative_to(folder.resolve()):
            raise UsageError(f"the scheme PIN file {source} is inside the scheme folder {folder}; whoever reads the "
                             f"folder would have the key and its PIN: keep the PIN elsewhere")
        try:
            pin = Path(source).read_text().strip().encode()
        except OSError as e:
            raise UsageError(f"cannot read the scheme PIN file {source}: {e.strerror}") from None
    elif sys.stdin.isatty():
        pin = read_secret("new purse scheme token PIN" if new else "purse scheme token PIN", False, confirm=new)
    else:
        raise UsageError(f"no terminal to ask for the purse scheme token's PIN; pass --scheme-pin-file FILE or set "
                         f"{SCHEME_PIN_ENV}")
    if new and len(pin) < PIN_MIN and not any((folder / n).exists() for n in OLD_KEY_FILES):
        raise UsageError(weak_pin_message())
    scheme = Scheme.load_or_create(folder, pin)
    if scheme.so_pin:
        print(f"made a new purse scheme in {folder}: root and issuer keys on its own SoftHSM2 token; "
              f"the token's SO PIN (shown once, keep it offline): {scheme.so_pin.decode()}")
    return scheme
