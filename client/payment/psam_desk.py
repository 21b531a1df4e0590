"""The seller's PSAMs as the payee uses them: one owner per PSAM, room for open debits, idempotent steps.

Why an owner object between the purse module and the PSAM session: a PSAM is a device. It keeps at
most :data:`PSAM_PENDING` debit requests open and evicts the oldest to begin another; a card that
then sends its proof for an evicted request has *paid* and the PSAM refuses the proof as unknown.
So every payment that uses a PSAM must go through the one place that counts what is open on it —
in one process (``semper serve shop``) that is a :class:`PsamDesk` in memory; with several worker
processes it is the same desk in the PSAM's own process (``client/servers/psam_device.py``), which
the workers call over a local socket with exactly these methods. Either way:

* **room**: a payment gets room (:meth:`PsamDesk.admit`) before the card is asked for anything, and
  keeps it from its hello to its proof; with no room it is refused (:class:`TerminalBusy`) and the
  caller may wait and ask again. A payment whose buyer vanished gives its room up after
  :data:`STALE_AFTER` seconds;
* **the same request again**: a payment that asks to begin its debit again with the same card,
  counter and amount (its payee restarted before it committed the challenge, or a retransmission)
  gets the request the PSAM signed the first time, so the answer is the same bytes and the PSAM
  does not open a second request for one payment;
* **the card's state is the truth**: a desk that starts (its process restarted) counts every request
  the PSAM holds open as taken room until it goes stale, since it cannot tell whose they are;
* **a cap per card**: at most :data:`CARD_OPEN_CAP` debits open for one card number. A card's
  certificate is public (every hello carries it), so without a cap whoever saw one could fill the
  PSAM's room with hellos naming that card. A hello beyond the cap is refused (:class:`CardBusy`)
  before the PSAM is asked; no request of the card's is ever evicted for it, since the card may
  have paid against it already.

:class:`PsamPool` holds the desks of a shop with several PSAMs (several readers); a deal is given one
PSAM when the shop signs its offer (the offer names it, and the judge checks the proof against it).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from semper.hardware import errors as hw
from semper.hardware.psam import BatchEntry, PsamInfo, PsamSession
from semper.hardware.purse_records import BatchHeader, Signed

from .errors import InstrumentError, PaymentError

PSAM_PENDING = 16          # debits a PSAM keeps open at once (docs/card.md: a 17th evicts the oldest)
STALE_AFTER = 60.0         # seconds after which a payment that never sent its proof gives up its room
CARD_OPEN_CAP = 2
"""Debits one card number may hold open at one PSAM (its :class:`PsamDesk`) at once.

Why 2: an honest buyer pays one order at a time with a card, so one open debit is its need; the
second is for the buyer who gave a payment up half-way (closed the page, lost the link) and orders
again before the first goes stale (:data:`STALE_AFTER`), who would otherwise wait a minute. More
serves no buyer and only lets one card's public certificate hold more of the PSAM's
:data:`PSAM_PENDING` slots: with 2, whoever holds one victim's certificate blocks that card at this
PSAM for a minute at a time, and needs PSAM_PENDING / 2 = 8 genuine cards' certificates to fill it."""


class TerminalBusy(PaymentError):
    """Every debit the PSAM can keep open is in flight; nothing was paid; try again shortly."""

    http_status = 503
    code = "busy"


class CardBusy(PaymentError):
    """This card holds :data:`CARD_OPEN_CAP` debits open at this PSAM already; nothing was paid, and the
    payment's room is given back. Not a :class:`TerminalBusy` (wait and ask again): the PSAM has room for
    other cards, and this hello is refused as any other refused hello is. 409: it conflicts with the card's
    open payments, and resolves when they finish or go stale."""

    http_status = 409
    code = "card_busy"


@dataclass
class _Open:
    """Room held by one payment: since when, and the request begun for it (if any)."""

    since: float
    key: tuple[bytes, int, int, int] | None = None       # card, counter, amount, currency of the begun request
    request: Signed | None = None


@dataclass(frozen=True)
class _Orphan:
    """A request the PSAM holds open that no payment's room accounts for any more: since when, and its card
    (None: unknown, a request found open when the desk started)."""

    since: float
    card: bytes | None = None


class Desk(Protocol):
    """What the purse module needs of a PSAM owner (a :class:`PsamDesk`, or a client of one in
    another process with the same methods)."""

    def admit(self, payment_id: str) -> None: ...

    def release(self, payment_id: str) -> None: ...

    def unadmit(self, payment_id: str) -> None: ...

    def held(self) -> int: ...

    def psam_id(self) -> str: ...

    def certificate(self) -> bytes: ...

    def info(self) -> PsamInfo: ...

    def begin_debit(self, payment_id: str, card_number: bytes, counter: int, amount: int, currency: int
                    ) -> Signed: ...

    def complete_debit(self, payment_id: str | None, card_certificate: bytes, proof: Signed
                       ) -> tuple[int, int, int]: ...

    def find_proof(self, proof_record: bytes) -> tuple[int, int] | None: ...

    def close_batch(self) -> tuple[BatchHeader, Signed]: ...

    def batch_header(self, number: int) -> tuple[BatchHeader, Signed]: ...

    def batch_entries(self, number: int) -> list[BatchEntry]: ...


class PsamDesk:
    """The owner of one PSAM session: every step under one lock, room counted, begins idempotent."""

    def __init__(self, session: PsamSession, *, size: int = PSAM_PENDING, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.session = session
        self.size = size
        self.lock = threading.RLock()
        self._clock = clock
        self._open: dict[str, _Open] = {}
        self._unknown: list[_Orphan] = []      # requests open on the PSAM no payment holds (found at start, replaced)
        self._cert: bytes | None = None
        self._id: str | None = None
        with self.lock:
            try:
                self.session.ensure_selected()
                pending = self.session.info().pending
            except hw.HardwareError:
                pending = 0                    # the card is away now: it is asked again on its first use
            now = self._clock()
            self._unknown = [_Orphan(now)] * min(pending, size)

    # ---- room ---------------------------------------------------------------------------------------
    def _expire(self) -> None:
        now = self._clock()
        for pid, held in list(self._open.items()):
            if now - held.since > STALE_AFTER:
                del self._open[pid]
        self._unknown = [o for o in self._unknown if now - o.since <= STALE_AFTER]

    def admit(self, payment_id: str) -> None:
        """Room for this payment (again: no-op), or :class:`TerminalBusy` before anything is asked of a card."""
        with self.lock:
            if payment_id in self._open:
                return
            self._expire()
            if len(self._open) + len(self._unknown) >= self.size:
                raise TerminalBusy(f"the seller's terminal has {self.size} card payments in flight; nothing was "
                                   "paid; try again in a moment")
            self._open[payment_id] = _Open(self._clock())

    def release(self, payment_id: str) -> None:
        with self.lock:
            self._open.pop(payment_id, None)

    def unadmit(self, payment_id: str) -> None:
        """Give back the room :meth:`admit` took for this payment if no debit was begun for it: its message
        was refused before the purse's step ran (by the payment manager, or by the shop). A payment with a
        request open on the PSAM keeps its room: the card may answer that request."""
        with self.lock:
            held = self._open.get(payment_id)
            if held is not None and held.request is None:
                del self._open[payment_id]

    def held(self) -> int:
        with self.lock:
            self._expire()
            return len(self._open) + len(self._unknown)

    # ---- the PSAM's answers -------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        with self.lock:
            self.session.ensure_selected()
            return fn()

    def psam_id(self) -> str:
        if self._id is None:
            self._id = self.info().psam_id.hex().upper()
        return self._id

    def certificate(self) -> bytes:
        if self._cert is None:
            self._cert = self._call(self.session.certificate)
        return self._cert

    def info(self) -> PsamInfo:
        return self._call(self.session.info)

    def open_for(self, card_number: bytes) -> int:
        """The debits the PSAM holds open for this card: the payments' begun requests and those no payment
        holds any more (a payment's earlier request, replaced by another), until they go stale."""
        with self.lock:
            self._expire()
            return self._count_for(bytes(card_number))

    def _count_for(self, card: bytes) -> int:
        return (sum(1 for h in self._open.values() if h.request is not None and h.key is not None and h.key[0] == card)
                + sum(1 for o in self._unknown if o.card == card))

    def begin_debit(self, payment_id: str, card_number: bytes, counter: int, amount: int, currency: int) -> Signed:
        """The PSAM-signed request (DRQ1) for this payment; the same one again for the same card, counter
        and amount (not counted again). Takes room first if the payment has none (raises :class:`TerminalBusy`
        without it); raises :class:`CardBusy` before the PSAM is asked when the card holds
        :data:`CARD_OPEN_CAP` debits open here already (its older requests are never evicted for a new one)."""
        key = (bytes(card_number), counter, amount, currency)
        with self.lock:
            self._expire()                     # first: nothing expires under ``held`` below
            self.admit(payment_id)
            held = self._open[payment_id]
            if held.key == key and held.request is not None:
                return held.request
            if self._count_for(key[0]) >= CARD_OPEN_CAP:
                # the payment's room is given back here; its own earlier request, if any (counted above when it
                # named this card), stays open on the PSAM, so it is kept as a request no payment holds
                if held.request is not None and held.key is not None:
                    self._unknown.append(_Orphan(self._clock(), held.key[0]))
                del self._open[payment_id]
                raise CardBusy(f"this card already has a payment open at this shop ({CARD_OPEN_CAP} at most); "
                               f"nothing was paid: finish that payment, or try again in a minute")
            if held.request is not None:
                # another request for the same payment (a new hello): the one begun before stays open on
                # the PSAM until it is evicted, so it keeps room of its own, and counts for its card, until
                # it goes stale
                if len(self._open) + len(self._unknown) >= self.size:
                    raise TerminalBusy(f"the seller's terminal has {self.size} card payments in flight; nothing "
                                       "was paid; try again in a moment")
                assert held.key is not None
                self._unknown.append(_Orphan(self._clock(), held.key[0]))
                held.key, held.request = None, None
            _, signed = self._call(lambda: self.session.begin_debit(card_number, counter, amount, currency))
            held.key, held.request = key, signed
            return signed

    def complete_debit(self, payment_id: str | None, card_certificate: bytes, proof: Signed) -> tuple[int, int, int]:
        """Take the card's proof into the open batch; the payment's room is given back when the PSAM took it."""
        with self.lock:
            result: tuple[int, int, int] = self._call(lambda: self.session.complete_debit(card_certificate, proof))
            if payment_id is not None:
                self._open.pop(payment_id, None)
            return result

    def find_proof(self, proof_record: bytes) -> tuple[int, int] | None:
        return self._call(lambda: self.session.find_proof(proof_record))

    def close_batch(self) -> tuple[BatchHeader, Signed]:
        return self._call(self.session.close_batch)

    def batch_header(self, number: int) -> tuple[BatchHeader, Signed]:
        return self._call(lambda: self.session.batch_header(number))

    def batch_entries(self, number: int) -> list[BatchEntry]:
        return self._call(lambda: self.session.batch_entries(number))


class PsamPool:
    """The shop's PSAMs by id (hex, upper case, as its offers name them); one of them serves a payment."""

    def __init__(self, desks: Iterable[Desk]) -> None:
        self.desks: dict[str, Desk] = {}
        for d in desks:
            self.desks[d.psam_id()] = d
        if not self.desks:
            raise InstrumentError("a PSAM pool needs at least one PSAM")
        self._turn = 0
        self._lock = threading.Lock()

    @property
    def ids(self) -> list[str]:
        return list(self.desks)

    def desk(self, psam_id: str | None = None) -> Desk:
        if psam_id is None:
            return next(iter(self.desks.values()))
        try:
            return self.desks[psam_id]
        except KeyError:
            raise InstrumentError(f"this seller has no PSAM {psam_id}") from None

    def assign(self) -> str:
        """A PSAM for a new deal: the one with the most room, ties in turn (the deal keeps it to the end)."""
        with self._lock:
            ids = self.ids
            self._turn = (self._turn + 1) % len(ids)
            order = ids[self._turn:] + ids[:self._turn]
        if len(order) == 1:
            return order[0]
        rooms = {}
        for i in order:
            try:
                rooms[i] = self.desks[i].held()
            except (PaymentError, hw.HardwareError, OSError):
                rooms[i] = PSAM_PENDING + 1           # a PSAM that does not answer now is the last choice
        return min(order, key=lambda i: rooms[i])


def as_pool(psam: Any) -> PsamPool | None:
    """The pool for a party context's ``psam``: a pool as it is, a desk (or a client of one) in a pool of
    one, a bare :class:`PsamSession` under a desk of this process (tests, ``semper card``)."""
    if psam is None:
        return None
    if isinstance(psam, PsamPool):
        return psam
    if isinstance(psam, PsamSession):
        return PsamPool([PsamDesk(psam)])
    return PsamPool([psam])


__all__ = ["CARD_OPEN_CAP", "PSAM_PENDING", "STALE_AFTER", "CardBusy", "Desk", "PsamDesk", "PsamPool", "TerminalBusy",
           "as_pool"]
