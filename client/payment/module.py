"""The internal interface between the payment manager and its modules (paper 3.6, figure 5).

A module implements one payment system for one party: its payer side (instruments, a payer flow)
and its payee side (what it accepts, a payee flow, refund where the system allows, status).

Why flows and not calls: payment systems need different numbers of rounds between payer and payee
(a purse purchase needs four messages because the seller's PSAM must challenge the card; a cheque
needs one). A *flow* is a small state machine that takes the other side's last message and
returns the next one, without doing I/O itself, so the same module runs in process, over the
payee link (``link.py``) or inside the transfer layer's packages. Messages are JSON objects.

A module reaches cards only through ``hardware`` sessions and banks only through
``bank_client``; it gets both from the :class:`PartyContext` its manager gives it.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, get_args, runtime_checkable

import msgspec

from ..support.shapes import Shape
from .errors import NotRevocable, PaymentError, ProtocolError
from .model import Acceptance, ExchangeProperties, Instrument, Model, Record, Status, Terms
from .wire import read

if TYPE_CHECKING:
    from cryptography import x509

    from semper.hardware.psam import PsamSession
    from semper.hardware.purse import PurseSession
    from semper.hardware.signer import Signer

    from .bank_client import BankClient
    from .psam_desk import Desk, PsamPool
    from .wallet import Wallet


PinEntry = Callable[[str, Any], None]
"""``enter_pin(purpose, session)``: have the PIN verified on ``session`` (a card session or signer
with ``verify_pin``) for ``purpose`` — a sentence saying what it is for. The TINGUIN's
implementation (``client.commerce.pin.tinguin_pin``) asks the user and hands the digits straight to
``session.verify_pin`` (or lets the reader's PIN pad take them): no module, manager or client ever
holds the PIN. It raises :class:`~client.payment.errors.InstrumentError` when the user cancels or
the PIN is blocked."""


@dataclass
class PartyContext:
    """What one party's modules may use. A module that misses what it needs offers nothing.

    ``enter_pin`` is how a module gets the PIN verified on the card right before the card needs it
    (see :data:`PinEntry`); the PIN itself never passes through the payment layer.
    """

    bank: BankClient | None = None
    signer: Signer | None = None
    enter_pin: PinEntry | None = None
    purse: PurseSession | None = None
    psam: PsamPool | Desk | PsamSession | None = None     # the seller's PSAMs (psam_desk.as_pool)
    account: str | None = None
    wallet: Wallet | None = None
    currency: int = 978
    select_signer: Callable[[], object] | None = None     # e.g. SELECT PIV when it shares the card with the purse
    extras: dict[str, Any] = field(default_factory=dict)
    # the card purse scheme's root: a payee checks a card's hello against it before its PSAM is asked
    # (None: not checked; the PSAM checks the card's certificate only at its proof)
    purse_root: x509.Certificate | None = None


@dataclass(frozen=True)
class Step:
    """One move of a flow: the message for the other side (None: nothing more to send)."""

    message: dict[str, Any] | None
    done: bool = False
    status: Status | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Flow(Protocol):
    """One side of one payment. ``step(None)`` starts the payer's side."""

    def step(self, incoming: dict[str, Any] | None) -> Step: ...


@runtime_checkable
class PaymentModule(Protocol):
    """What the manager needs from a payment system (constructed as ``Module(context)``)."""

    name: ClassVar[str]
    model: ClassVar[Model]
    properties: ClassVar[ExchangeProperties]

    def instruments(self) -> list[Instrument]:
        """The payer's instruments of this module (empty when the party has none)."""
        ...

    def acceptance(self) -> Acceptance | None:
        """What the payee accepts with this module (None when the party cannot receive with it)."""
        ...

    def payer_flow(self, terms: Terms, instrument: Instrument, params: dict[str, Any]) -> Flow: ...

    def payee_flow(self, terms: Terms) -> Flow: ...

    def refund(self, record: Record, amount: int) -> Record:
        """Give ``amount`` of a received payment back (payee side); NotRevocable when impossible."""
        ...

    def status(self, record: Record) -> Status:
        """The payment's state, asking the bank when the module can."""
        ...


class BaseModule:
    """Defaults a module may keep: no refund, status as recorded."""

    name: ClassVar[str] = ""
    model: ClassVar[Model] = Model.ACCOUNT_BASED
    properties: ClassVar[ExchangeProperties] = ExchangeProperties(externally_verifiable=False, revocable=False)

    def __init__(self, context: PartyContext) -> None:
        self.ctx = context

    def instruments(self) -> list[Instrument]:
        return []

    def acceptance(self) -> Acceptance | None:
        return None

    def admit(self, payment_id: str, body: dict[str, Any]) -> None:
        """Called by the payee *before* it takes its device lock for a payer's message: a module whose
        device can hold only so many payments in flight raises here (a PaymentError) when there is no
        room, before anything is paid; the caller may wait and ask again. Default: no limit."""

    def refund(self, record: Record, amount: int) -> Record:
        raise NotRevocable(f"{self.name} payments cannot be refunded; pay the amount back with a new payment")

    def status(self, record: Record) -> Status:
        return record.status

    def _signer(self) -> Signer:
        if self.ctx.signer is None:
            raise PaymentError(f"{self.name} needs a card or token key to sign, and this party has none")
        if self.ctx.select_signer is not None:
            self.ctx.select_signer()
        return self.ctx.signer

    def _sign_digest(self, digest: bytes, why: str) -> tuple[bytes, bytes]:
        """(signature, certificate DER): the PIN goes to the device right before, when one is asked for."""
        from semper.hardware import errors as hw
        signer = self._signer()
        try:
            cert = signer.certificate()
            if self.ctx.enter_pin is not None:       # a token logged in before needs none
                self.ctx.enter_pin(why, signer)
            return signer.sign_digest(digest), cert
        except hw.HardwareError as e:
            from .errors import InstrumentError
            raise InstrumentError(f"the card or token could not sign to {why}: {e}") from None

    def _enter_pin(self, why: str, session: Any) -> None:
        """The PIN verified on ``session`` through the party's PIN entry (it never comes back here)."""
        if self.ctx.enter_pin is None:
            raise PaymentError(f"the PIN is needed to {why}, but nothing can ask for it here")
        self.ctx.enter_pin(why, session)


class Message(Shape, frozen=True):
    """A flow's message, declared once by its module as a subclass: ``kind: Literal["hello"]`` first,
    then its fields with their types and limits (``support/shapes.py``); unknown fields are refused."""


M = TypeVar("M", bound=Message)


@functools.cache
def _kind(shape: type[Message]) -> str:
    """The kind a message shape declares (its ``Literal``); cached: msgspec's introspection is slow."""
    return str(get_args(next(f.type for f in msgspec.structs.fields(shape) if f.name == "kind"))[0])


def receive(message: Any, shape: type[M]) -> M:
    """The other side's message as ``shape``, or a ProtocolError naming the kind expected or the field."""
    kind = _kind(shape)
    if not isinstance(message, dict) or message.get("kind") != kind:
        got = message.get("kind") if isinstance(message, dict) else type(message).__name__
        raise ProtocolError(f"expected a {kind!r} message, got {got!r}")
    return read(message, shape, f"the {kind!r} message")
