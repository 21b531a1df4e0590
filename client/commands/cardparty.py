"""The buyer's card as a party of the bank on the command line: loads from the bank, e-cash withdrawals.

Why its own module: ``semper card load --bank`` and ``semper wallet`` need the same assembly as the
buyer's client (``client/commerce/setup.py``): the purse, the PIV signature key behind a
:class:`~client.commerce.pin.GatedSigner` (PIN right before each signature, PIV re-selected first),
the bank client signing with it, the PIN entry of the payment layer. Only the PIN prompt differs:
no TINGUIN deal is running, so :class:`PromptPin` asks on the terminal (or reads one line with
``--pin-stdin``) and hands the digits straight to the card session, as the TINGUIN's PIN screen does.
"""
from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import UsageError, note, read_secret


def check_pin_format(pin: bytes, what: str = "PIN") -> bytes:
    """A card PIN has 4 to 8 digits, a PUK 8: refuse anything else before it costs a try on the card."""
    ok = pin.isdigit() and (len(pin) == 8 if what == "PUK" else 4 <= len(pin) <= 8)
    if not ok:
        want = "8 digits" if what == "PUK" else "4 to 8 digits"
        raise UsageError(f"a card {what} has {want}; nothing was sent to the card")
    return pin


def read_card_pin(label: str, from_stdin: bool, what: str = "PIN", confirm: bool = False) -> bytes:
    return check_pin_format(read_secret(label, from_stdin, confirm=confirm), what)


class PromptPin:
    """The PIN entry of a command-line party: asked once per command, delivered straight to the card.

    Implements the PIN part of :class:`client.tinguin.api.TrustedUI`; a command that runs a deal uses
    the TINGUIN instead. With a PIN-pad reader the pad takes the PIN and nothing is typed here.
    """

    def __init__(self, from_stdin: bool) -> None:
        self.from_stdin = from_stdin
        self._pin: bytes | None = None

    def _get(self) -> bytes:
        if self._pin is None:
            self._pin = read_card_pin("card PIN", self.from_stdin)
        return self._pin

    def ask_pin(self, purpose: str, deliver: Callable[[bytes], None], *, pad: Callable[[], None] | None = None
                ) -> Any:
        from ..tinguin.model import PinOutcome, PinStatus
        if pad is not None:
            note(f"enter the PIN on the reader's PIN pad to {purpose}")
            pad()
        else:
            deliver(self._get())
        return PinOutcome(PinStatus.VERIFIED)

    def progress(self, step: Any) -> None:
        pass

    def review_offer(self, offer: Any) -> Any:
        raise UsageError("a deal needs the TINGUIN (semper buy)")

    confirm = result = review_offer


def bank_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bank", metavar="URL", help="the bank's URL (default: prefs servers.bank)")
    p.add_argument("--bank-tls-root", type=Path, help="the bank's TLS root, PEM (default: prefs trust.bank_tls_root)")
    p.add_argument("-a", "--account", help="your account at the bank (default: prefs payment.account)")


def bank_settings(args: argparse.Namespace) -> tuple[str, Path, str]:
    """(bank URL, its TLS root, the holder's account) from the arguments, else the preferences."""
    from ..support import prefs
    p = prefs.load()
    url = args.bank or p.get("servers.bank")
    root = args.bank_tls_root or (Path(p.get("trust.bank_tls_root") or "") if p.get("trust.bank_tls_root") else None)
    account = args.account or p.get("payment.account")
    missing = [what for what, v in (("--bank URL (or prefs servers.bank)", url),
                                    ("--bank-tls-root FILE (or prefs trust.bank_tls_root)", root),
                                    ("--account ACCOUNT (or prefs payment.account)", account)) if not v]
    if missing:
        raise UsageError("talking to the bank needs " + ", ".join(missing))
    assert url and root and account
    if not Path(root).is_file():
        raise UsageError(f"no such file: {root} (the bank's TLS root)")
    return url, Path(root), account


@contextmanager
def bank_party(args: argparse.Namespace) -> Iterator[Any]:
    """A :class:`~client.payment.module.PartyContext` for the card in ``--reader``/``--image`` at the bank."""
    from semper.hardware import cards
    from semper.hardware.iso7816 import AID
    from semper.hardware.piv import PivSession, PivSigner
    from semper.hardware.purse import PurseSession

    from ..commerce.pin import GatedSigner, tinguin_pin
    from ..payment.bank_client import BankClient
    from ..payment.module import PartyContext
    url, root, account = bank_settings(args)
    with cards.connection(AID.PURSE, args.reader, args.image) as conn:
        purse = PurseSession(conn)
        currency = purse.info().currency
        piv = PivSession(conn, select=False)
        ui = PromptPin(args.pin_stdin)
        lock = threading.RLock()
        signer = GatedSigner(PivSigner(piv, label="your card"), ui, select=piv.select, lock=lock)
        enter = tinguin_pin(ui)
        bank = BankClient(url, root, signer, enter_pin=enter)
        try:
            yield PartyContext(bank=bank, signer=signer, enter_pin=enter, purse=purse, account=account,
                               currency=currency, select_signer=piv.select, extras={"piv": piv})
        finally:
            bank.http.close()
