"""Pieces every command module shares: the usage error, argument types, secret input, output.

Each module in this package adds its commands with ``register(sub, groups)``; ``client.cli``
finds the modules by itself, so a new command group is one new file.

Conventions every command keeps (docs/cli.md): data goes to standard output, as human text or, with
``-j/--json``, as one JSON document; progress and notes go to standard error; bad input is refused
before anything is done, with one line and exit status 2 (argument types below check what argparse
can); a failed operation is exit status 1.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semper.hardware.errors import SemperError

if TYPE_CHECKING:
    from ..support.scheme import Scheme


class UsageError(SemperError):
    """Bad input on the command line (exit status 2)."""

    exit_status = 2
    http_status = 400
    code = "bad_request"


class CommandFailed(SemperError):
    """The operation could not be done (exit status 1); the message says why and what to do."""

    exit_status = 1
    http_status = 500
    code = "failed"


# ---- argument types: bad input is refused by argparse, as one line with exit status 2 ------------------
def port(text: str) -> int:
    """A TCP port to listen on: 0 (any free port) to 65535. Without this check 99999 listened on another
    port (the kernel takes it modulo 65536) and -1 failed with 'Servname not supported'."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0 = any free port)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: use 0 to 65535 (0 = any free port)")
    return value


def amount(text: str) -> str:
    """An amount's syntax (plain decimal digits, positive); its decimals are checked against the currency
    once that is known (the card's, the account's)."""
    from ..support.money import AmountError, check_amount_text
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r}: the amount must be positive")
    try:
        check_amount_text(text)
    except AmountError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not any(c in "123456789" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: the amount must be positive")
    return text.strip()


def positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be positive (1 or more)")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0 and less than a day")
    return value


def hex_id(digits: int) -> Callable[[str], bytes]:
    """An identifier of ``digits`` hex digits (``:`` and spaces allowed between bytes)."""
    def parse(text: str) -> bytes:
        clean = text.replace(":", "").replace(" ", "")
        try:
            value = bytes.fromhex(clean)
        except ValueError:
            value = b""
        if len(value) * 2 != digits or len(clean) != digits:
            raise argparse.ArgumentTypeError(f"{text!r} is not {digits} hex digits")
        return value
    parse.__name__ = f"{digits} hex digits"
    return parse


def existing_file(text: str) -> Path:
    """A file that must exist now (a certificate, a PIN file, a root to pin)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def card_image(text: str) -> Path:
    """A card image path: may not exist yet (commands that open it say so), but is never a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a card image file")
    return path


def new_file(text: str) -> Path:
    """A file to write: its folder must exist (semper does not make folders it was not asked for)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file in it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {parent} does not exist")
    return path


# ---- helpers ------------------------------------------------------------------------------------
def read_secret(label: str, from_stdin: bool, confirm: bool = False) -> bytes:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UsageError(f"expected the {label} on standard input")
        value = line.strip()
        if not value:
            raise UsageError(f"the {label} line on standard input is empty; nothing was sent to the card")
        return value.encode()
    if not sys.stdin.isatty():
        raise UsageError(f"no terminal to ask for the {label}; pass --pin-stdin and send it on standard input")
    value = getpass.getpass(f"{label}: ")
    if not value:
        raise UsageError(f"no {label} entered; nothing was sent to the card")
    if confirm and getpass.getpass(f"{label} again: ") != value:
        raise UsageError(f"the two {label}s differ")
    return value.encode()


def read_pin_file(path: Path, what: str) -> bytes:
    try:
        value = Path(path).read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read the {what} file {path}: {e.strerror}") from None
    if not value:
        raise UsageError(f"the {what} file {path} is empty")
    return value.encode()


def card_args(p: argparse.ArgumentParser, psam: bool = False) -> None:
    p.add_argument("-r", "--reader", help="PC/SC reader of the buyer's card (default: search the readers)")
    p.add_argument("-i", "--image", type=card_image,
                   help="use a simulated card image in this process instead of a reader")
    if psam:
        p.add_argument("--psam-reader", help="PC/SC reader of the seller's PSAM (default: search)")
        p.add_argument("--psam-image", type=card_image, help="a simulated PSAM image in this process")


def json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-j", "--json", action="store_true", help="print the result as JSON (for scripts)")


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str), flush=True)


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str] | None = None) -> None:
    """The result of a command: ``data`` as JSON with --json, else ``text`` (or ``data``, readably)."""
    if getattr(args, "json", False) or text is None and not isinstance(data, dict):
        print_json(data)
        return
    if text is None:
        width = max((len(k) for k in data), default=0)
        text = "\n".join(f"{k.replace('_', ' '):>{width}}: {_plain(v)}" for k, v in data.items())
    print(text() if callable(text) else text, flush=True)


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "-"
    if isinstance(v, list | tuple):
        return ", ".join(_plain(x) for x in v) or "-"
    return str(v)


def note(line: str) -> None:
    """A line for the person, not the data: to standard error."""
    print(line, file=sys.stderr, flush=True)


# ---- the purse scheme's token ---------------------------------------------------------------------
SCHEME_PIN_ENV = "SEMPER_SCHEME_PIN_FILE"


def scheme_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheme-pin-file", type=Path,
                   help=f"read the purse scheme token's PIN from this file, kept outside the scheme folder "
                        f"(default: the file ${SCHEME_PIN_ENV} names, else ask on the terminal)")


def open_scheme(args: argparse.Namespace, folder: Path | None = None) -> Scheme:
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
