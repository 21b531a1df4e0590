"""What the TINGUIN shows: small typed records, filled only from what the client verified itself.

Why separate types (and not the seller's JSON): the TINGUIN must never believe a seller's claim.
A seller's offer is a signed statement; once :func:`client.support.trust.verify_statement` has
checked it, the commerce layer builds a :class:`VerifiedOffer` with :meth:`VerifiedOffer.from_statement`,
which takes the seller's identity from the *verified certificate* (never from the body), records
what the verification relied on, and recomputes the total from the items. Text that still comes
from the seller (item descriptions, ids) is kept as-is here and made harmless only when shown
(:func:`client.tinguin.literal.literal`), so the confirmation text (and its digest) covers exactly
what the screen shows.
"""
from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from semper.hardware.errors import SemperError

if TYPE_CHECKING:
    from semper.client.support.verify import VerifiedStatement

MAX_AMOUNT = 2**31 - 1          # minor units, as the purse and the bank count


class OfferError(SemperError, ValueError):
    """An offer cannot be shown as verified (inconsistent, or not built from a verified statement)."""

    http_status = 422
    code = "offer_refused"


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _name_attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = [str(a.value) for a in name.get_attributes_for_oid(oid)]
    return ", ".join(values) if values else None


@dataclass(frozen=True)
class Party:
    """A party as its verified certificate names it: the only identity the TINGUIN shows."""

    name: str                       # the subject's commonName (the whole subject when it has none)
    organisation: str | None
    country: str | None
    subject: str                    # RFC 4514
    issuer: str                     # RFC 4514
    serial: str                     # hex, upper case
    fingerprint: str                # SHA-256 of the certificate DER, hex
    valid_until: dt.datetime

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> Party:
        """The party a certificate names (made once per certificate: Party is immutable)."""
        return _party_of(cert)

    @classmethod
    def _from_certificate(cls, cert: x509.Certificate) -> Party:
        subject = cert.subject.rfc4514_string()
        return cls(name=_name_attr(cert.subject, NameOID.COMMON_NAME) or subject,
                   organisation=_name_attr(cert.subject, NameOID.ORGANIZATION_NAME),
                   country=_name_attr(cert.subject, NameOID.COUNTRY_NAME),
                   subject=subject, issuer=cert.issuer.rfc4514_string(), serial=f"{cert.serial_number:X}",
                   fingerprint=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
                   valid_until=cert.not_valid_after_utc)


@dataclass(frozen=True)
class Verification:
    """What the client checked before calling a statement verified, in the words the TINGUIN shows."""

    signer: Party
    root: str                       # the trust anchor the chain ended in (subject, RFC 4514)
    chain_length: int
    signing_time: dt.datetime       # proven by a time-stamp when ``time_source`` says so
    time_source: str                # "time-stamp by <TSA>" or "the signer's own clock, no time-stamp"
    revocation_checked: bool
    statement_digest: str           # SHA-256 of the signed statement's DER, hex
    notes: tuple[str, ...] = ()

    @classmethod
    def from_statement(cls, vs: VerifiedStatement) -> Verification:
        stamp = vs.timestamp
        return cls(signer=Party.from_certificate(vs.signer),
                   root=vs.chain[-1].subject.rfc4514_string() if vs.chain else "(none)",
                   chain_length=len(vs.chain),
                   signing_time=_utc(stamp.gen_time if stamp is not None else vs.signing_time),
                   time_source=(f"time-stamp by {stamp.tsa_name}" if stamp is not None
                                else "the signer's own clock, no time-stamp"),
                   revocation_checked=vs.revocation.checked,
                   statement_digest=hashlib.sha256(vs.statement.der).hexdigest(),
                   notes=tuple(vs.notes))


@dataclass(frozen=True)
class LineItem:
    """One line of an offer. ``description`` is the seller's text: shown literally, never interpreted."""

    description: str
    quantity: int
    unit_price: int                 # minor units of the offer's currency

    def __post_init__(self) -> None:
        if not isinstance(self.quantity, int) or not 1 <= self.quantity <= 1_000_000:
            raise OfferError(f"an item's quantity must be a whole number from 1 to 1000000, not {self.quantity!r}")
        if not isinstance(self.unit_price, int) or not 0 <= self.unit_price <= MAX_AMOUNT:
            raise OfferError(f"an item's price must be 0 to {MAX_AMOUNT} minor units, not {self.unit_price!r}")

    @property
    def total(self) -> int:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class PaymentOption:
    """A payment module this client has and the offer accepts; ``label`` is the local module's, not the seller's."""

    module: str
    label: str


@dataclass(frozen=True)
class VerifiedOffer:
    """A seller's offer whose signature, certificate chain and sums the client checked itself."""

    offer_id: str                   # the seller's id for the offer (shown literally)
    verification: Verification
    items: tuple[LineItem, ...]
    currency: int                   # ISO 4217 numeric
    total: int                      # recomputed from the items: equal to what the seller stated
    payment_options: tuple[PaymentOption, ...]
    valid_until: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not self.items:
            raise OfferError("the offer has no items: there is nothing to confirm")
        if not 0 < self.currency < 1000:
            raise OfferError(f"the offer's currency {self.currency!r} is not an ISO 4217 number")
        computed = sum(i.total for i in self.items)
        if computed != self.total:
            raise OfferError(f"the offer states a total of {self.total} but its items add up to {computed} "
                             "(minor units): the seller's offer is inconsistent; do not buy")
        if self.total > MAX_AMOUNT:
            raise OfferError("the offer's total is larger than any payment can be")

    @property
    def seller(self) -> Party:
        """The seller is whoever signed the offer, as the verified certificate names it."""
        return self.verification.signer

    @classmethod
    def from_statement(cls, vs: VerifiedStatement, *, offer_id: str, items: Iterable[LineItem], currency: int,
                       stated_total: int, payment_options: Sequence[PaymentOption],
                       valid_until: dt.datetime | None = None) -> VerifiedOffer:
        """Build the offer the TINGUIN may show from a statement that passed ``verify_statement``.

        The commerce layer parses items, currency and total from ``vs.body`` (its schema is the
        commerce layer's); the seller and every verification fact come from ``vs`` itself, so a
        seller cannot name itself in the body. ``stated_total`` is checked against the items.
        """
        from semper.client.support.verify import VerifiedStatement
        if not isinstance(vs, VerifiedStatement):
            raise OfferError("an offer is shown as verified only when built from a VerifiedStatement "
                             "(run client.support.trust.verify_statement on the signed offer first)")
        return cls(offer_id=offer_id, verification=Verification.from_statement(vs), items=tuple(items),
                   currency=currency, total=stated_total, payment_options=tuple(payment_options),
                   valid_until=_utc(valid_until) if valid_until is not None else None)


class Action(enum.Enum):
    """What accepting a confirmation does; the sentence is the TINGUIN's, never the seller's."""

    ORDER_AND_PAY = "sign this order with your key and pay"
    PAY = "pay"
    SIGN_CONTRACT = "sign this contract with your key"
    ORDER = "sign this order with your key"
    EXCHANGE = "give what is listed under 'You give' for what is listed under 'You expect'"


@dataclass(frozen=True)
class ConfirmationRequest:
    """What the commerce layer asks the user to confirm; rendered by :func:`client.tinguin.confirmation.render`."""

    offer: VerifiedOffer
    payment: PaymentOption
    deal_id: str
    action: Action = Action.ORDER_AND_PAY
    signer: Party | None = None             # the user's own certificate that will sign (None: anonymous deal)
    attributes: tuple[str, ...] = ()        # the deal's security attributes, e.g. ("non-repudiation",)
    details: tuple[tuple[str, str], ...] = ()   # the order form as (label, value), e.g. where to deliver

    def __post_init__(self) -> None:
        if self.payment not in self.offer.payment_options:
            raise OfferError(f"payment by {self.payment.module!r} is not among the offer's verified payment options")


@dataclass(frozen=True)
class ExchangeRequest:
    """A transfer or fair exchange between two persons (the paper's Figure 2), as the TINGUIN confirms it.

    ``give`` and ``expect`` are (label, value) lines the commerce layer wrote from the items it will
    make and check itself (amounts, digests, statement fields), never from the peer's claims; ``peer``
    comes from a certificate checked against the CA roots (None: whoever asks, for a standing offer).
    """

    cell: str                               # the Figure 2 cell, in the TINGUIN's words
    deal_id: str
    peer: Party | None
    peer_address: str                       # the peer's exchange service, or "(any peer that asks)"
    give: tuple[tuple[str, str], ...]
    expect: tuple[tuple[str, str], ...]
    fairness: str                           # the TINGUIN's sentence on what protects the user here
    third_party: Party | None = None
    signer: Party | None = None             # the user's certificate that signs in the exchange
    action: Action = Action.EXCHANGE


@dataclass(frozen=True)
class Confirmation:
    """The user's answer and exactly what they saw: sign ``digest`` (SHA-256 of ``shown_text``, UTF-8)."""

    accepted: bool
    shown_text: str
    digest: bytes
    scripted: bool = False                  # True when a scripted user, not a person, answered


class PinStatus(enum.Enum):
    VERIFIED = "verified"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"
    FAILED = "failed"


@dataclass(frozen=True)
class PinOutcome:
    """How a PIN request ended; the PIN itself is never part of it."""

    status: PinStatus
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status is PinStatus.VERIFIED


class StepState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class ProgressStep:
    """One step of a deal (``key`` identifies it across updates; a new key adds a line)."""

    key: str
    title: str
    state: StepState
    detail: str = ""


class OutcomeStatus(enum.Enum):
    SATISFIED = "satisfied"
    DISPUTE = "dispute"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class EvidenceItem:
    """One piece of evidence the deal left in the archive."""

    kind: str
    description: str
    digest: str                             # hex SHA-256 of the evidence bytes
    archive_index: int | None = None


@dataclass(frozen=True)
class DealOutcome:
    deal_id: str
    status: OutcomeStatus
    summary: str
    evidence: tuple[EvidenceItem, ...] = ()
    balance_after: int | None = None
    currency: int | None = None


# ---- the user's own card, readers and archive ----------------------------------------------------
@dataclass(frozen=True)
class ReaderView:
    name: str
    card_present: bool
    applets: tuple[str, ...] = ()
    pin_pad: bool = False
    atr: str = ""
    problem: str = ""


@dataclass(frozen=True)
class LogLine:
    kind: str                               # "load" or "debit"
    counter: int
    amount: int
    balance_after: int


@dataclass(frozen=True)
class PurseView:
    card_id: str
    currency: int
    balance: int
    max_balance: int
    load_counter: int
    debit_counter: int
    pin_tries: int
    puk_tries: int
    load_pending: bool
    log: tuple[LogLine, ...] = ()


@dataclass(frozen=True)
class ArchiveView:
    path: str
    archive_id: str
    entries: int
    deals: tuple[tuple[str, int], ...]
    last_checkpoint: int | None
    chain_ok: bool | None = None
    problems: tuple[str, ...] = field(default=())


@functools.lru_cache(maxsize=256)
def _party_of(cert: x509.Certificate) -> Party:
    return Party._from_certificate(cert)
