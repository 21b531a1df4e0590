"""Where the TINGUIN's own-card screens get their data: the user's card, the readers, the archive.

Why a protocol: the screens must not block the interface on card I/O, and tests and snapshots need
fixed data; so screens read through a :class:`CardSource` in a worker thread, and the real source
opens the card afresh for each read (a card pulled between two reads is reported, not cached).
Everything here is the user's own data (their card, their archive), still shown through
``literal()`` because names such as deal ids can come from counterparties.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from semper.hardware import errors as hw_errors
from semper.hardware.purse import PurseSession

from .model import ArchiveView, LogLine, PurseView, ReaderView

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from semper.hardware.purse import PurseSession


class CardSource(Protocol):
    """The user's card as the own-card screens need it; every method may raise a HardwareError."""

    def readers(self) -> list[ReaderView]: ...

    def purse(self) -> PurseView: ...

    def has_pin_pad(self) -> bool: ...

    def verify_pin(self, pin: bytes) -> None:
        """Hand the PIN to the card (VERIFY); WrongPinError / PinBlockedError when it refuses."""
        ...

    def verify_pin_on_pad(self) -> None: ...


def purse_view(session: PurseSession) -> PurseView:
    """Read balance, counters and the on-card log (newest first) from an open purse session."""
    info = session.info()
    log = tuple(LogLine(e.kind, e.counter, e.amount, e.balance_after) for e in session.log())
    return PurseView(card_id=info.card_id, currency=info.currency, balance=info.balance,
                     max_balance=info.max_balance, load_counter=info.load_counter, debit_counter=info.debit_counter,
                     pin_tries=info.pin_tries, puk_tries=info.puk_tries, load_pending=info.load_pending, log=log)


class CardAccess:
    """The real card: a PC/SC reader (``reader``, or the first holding a purse) or a simulated image."""

    def __init__(self, reader: str | None = None, image: Path | None = None) -> None:
        self.reader = reader
        self.image = image

    def _purse(self) -> AbstractContextManager[PurseSession]:
        from semper.hardware import cards
        return cards.purse(self.reader, self.image)

    def readers(self) -> list[ReaderView]:
        if self.image is not None:
            return [ReaderView(f"simulated card image {self.image}", self.image.exists(), ("purse", "piv"))]
        from semper.hardware import readers
        return [ReaderView(r.name, r.card_present, tuple(a.name.lower() for a in r.applets), r.pin_pad,
                           r.atr.hex().upper(), r.problem) for r in readers.survey()]

    def purse(self) -> PurseView:
        with self._purse() as session:
            return purse_view(session)

    def has_pin_pad(self) -> bool:
        with self._purse() as session:
            return session.has_pin_pad()

    def verify_pin(self, pin: bytes) -> None:
        with self._purse() as session:
            session.verify_pin(pin)

    def verify_pin_on_pad(self) -> None:
        with self._purse() as session:
            session.verify_pin_on_pad()


@dataclass
class StaticCardSource:
    """Fixed data (tests, snapshots, a demo without a card); ``pin`` is what verify_pin accepts."""

    reader_views: Sequence[ReaderView] = ()
    purse_data: PurseView | None = None
    pin: bytes | None = None
    pad: Callable[[], None] | None = None
    tries: int = 3
    received: list[int] = field(default_factory=list)       # lengths of PINs handed over, never the PINs

    def readers(self) -> list[ReaderView]:
        return list(self.reader_views)

    def purse(self) -> PurseView:
        if self.purse_data is None:
            raise hw_errors.ReaderError("no card in the reader")
        return self.purse_data

    def has_pin_pad(self) -> bool:
        return self.pad is not None

    def verify_pin(self, pin: bytes) -> None:
        self.received.append(len(pin))
        if self.tries == 0:
            raise hw_errors.PinBlockedError()
        if self.pin is None or bytes(pin) != self.pin:
            self.tries -= 1
            raise hw_errors.WrongPinError(self.tries)
        self.tries = 3

    def verify_pin_on_pad(self) -> None:
        if self.pad is None:
            raise hw_errors.ReaderError("this reader has no PIN pad")
        self.pad()


def archive_view(path: Path) -> ArchiveView:
    """The archive's deals and the state of its hash chain (``Archive.verify`` without a trust store)."""
    from semper.client.support.archive import Archive
    with Archive.open(path) as archive:
        report = archive.verify()
        cp = archive.last_checkpoint()
        return ArchiveView(path=str(path), archive_id=archive.archive_id, entries=report.entries,
                           deals=tuple(archive.deals()), last_checkpoint=cp.index if cp else None,
                           chain_ok=report.ok, problems=tuple(str(p) for p in report.problems))
