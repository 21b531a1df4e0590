"""The generic payment model shared by the manager and every module (paper 3.6, BRIEF 5).

Why these types: the payment manager offers one interface for all payment systems, so what a
payment *is* must not depend on a system. A payment has terms (amount, currency, payee, the order it
pays for), is made with an instrument of one module, and passes through a small set of states.
Each module says which model it follows (cash-like: value moves with the message, like coins or a
purse debit; account-based: the message is an instruction to a bank) and which exchange-enabling
properties its payments have, because the exchange layer picks a fair-exchange protocol from them.
"""
from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec

from .errors import PaymentError, ProtocolError

MAX_AMOUNT = 2**31 - 1          # minor units; what a purse card can hold, and what the bank accepts


_HEX = frozenset("0123456789abcdef")
_RECORD_JSON = msgspec.json.Encoder(order="sorted")


class Model(enum.Enum):
    CASH_LIKE = "cash-like"
    ACCOUNT_BASED = "account-based"


@dataclass(frozen=True)
class ExchangeProperties:
    """What the exchange layer may rely on for a payment item of this module.

    * externally_verifiable: a third party can check, from the payment message alone (and the
      bank's public keys), that the payment was made for these terms;
    * revocable: the payee (or the bank at its request) can undo the payment (refund);
    * generatable: a third party can produce the payment in the payer's place (cheques: reserved at the
      bank, released by the drawer or the third party);
    * anonymous: the bank cannot tell who paid whom (e-cash);
    * online: the payee needs the bank on line to accept the payment;
    * handshake: the payee answers the payer's first message with a signed payment request the payer
      checks before it pays (the card purse: the PSAM's debit request), so a payment item carries it.
    * starts_early: the payer's first message needs nothing of the payee but the terms a payer can
      foresee from a signed offer (amount, currency, payee, the order's digest and the payment id the
      deal derives from it), moves no value and commits the payer to nothing (the card purse's hello:
      the card's number, counter and certificate). So it may travel with the order, and the payee's
      answer to it with the order's answer: one request fewer (docs/commerce.md, "The card's hello
      with the order"). Modules whose first message needs the payee's parameters (a bank's URL, a
      cheque's reservation) or carries value (coins) leave it off and keep the ordinary flow.
    """

    externally_verifiable: bool
    revocable: bool
    generatable: bool = False
    anonymous: bool = False
    online: bool = True
    handshake: bool = False
    starts_early: bool = False

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


class Status(enum.Enum):
    """Where a payment stands. Every module maps its own states onto these."""

    PENDING = "pending"            # started, not finished (a retry or recover() finishes it)
    # value reached the payee (purse debit cleared or in batch, cheque cleared, coins deposited)
    PAID = "paid"
    AUTHORISED = "authorised"      # account payment authorised, not yet captured
    CAPTURED = "captured"          # account payment captured
    REFUNDED = "refunded"          # fully refunded
    PARTLY_REFUNDED = "partly-refunded"
    RELEASED = "released"          # authorisation released without capture
    BOUNCED = "bounced"            # cheque refused by the bank
    FAILED = "failed"              # refused; nothing moved


@dataclass(frozen=True)
class Terms:
    """What is to be paid: fixed by the payee's offer, confirmed by the payer.

    ``order_hash`` binds the payment to the order (hex SHA-256 of the signed order), so a payment
    proof cannot be reused for another order. ``payee`` names the payee as the modules know it (a
    bank account id); ``payee_name`` is for people.
    """

    payment_id: str
    amount: int
    currency: int
    payee: str
    order_hash: str
    payee_name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.amount, int) or isinstance(self.amount, bool) or not 0 < self.amount <= MAX_AMOUNT:
            raise PaymentError(f"the amount must be 1 to {MAX_AMOUNT} minor units, not {self.amount!r}")
        if not isinstance(self.currency, int) or not 0 < self.currency < 1000:
            raise PaymentError(f"the currency must be an ISO 4217 number (978 = EUR), not {self.currency!r}")
        if len(self.order_hash) != 64 or not _HEX.issuperset(self.order_hash):
            raise PaymentError("the order hash must be 64 lower-case hex digits (SHA-256)")
        if not self.payment_id or len(self.payment_id) > 64:
            raise PaymentError("the payment id must have 1 to 64 characters")

    @staticmethod
    def new(amount: int, currency: int, payee: str, order: bytes | str, payee_name: str = "") -> Terms:
        order_hash = order if isinstance(order, str) else hashlib.sha256(order).hexdigest()
        return Terms(secrets.token_hex(16), amount, currency, payee, order_hash, payee_name)

    def as_dict(self) -> dict[str, Any]:
        return {"payment_id": self.payment_id, "amount": self.amount, "currency": self.currency,
                "payee": self.payee, "order_hash": self.order_hash, "payee_name": self.payee_name}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Terms:
        try:
            return Terms(str(d["payment_id"]), d["amount"], d["currency"], str(d["payee"]), str(d["order_hash"]),
                         str(d.get("payee_name", "")))
        except (KeyError, TypeError) as e:
            raise ProtocolError(f"the payment terms are incomplete ({e})") from None


@dataclass(frozen=True)
class Instrument:
    """Something the payer can pay with: a card purse, an account, an e-cash wallet."""

    module: str
    ref: str                       # the module's handle: card number, account id, wallet name
    currency: int
    label: str
    available: int | None = None   # spendable amount when the module knows it without asking a bank


@dataclass(frozen=True)
class Acceptance:
    """One line of a payee's offer: a module it accepts, in which currencies, with its preference."""

    module: str
    currencies: tuple[int, ...]
    preference: int = 0            # lower is preferred
    params: dict[str, Any] = field(default_factory=dict)   # what the payer needs (e.g. the bank's URL)

    def as_dict(self) -> dict[str, Any]:
        return {"module": self.module, "currencies": list(self.currencies), "preference": self.preference,
                "params": self.params}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Acceptance:
        return Acceptance(str(d["module"]), tuple(int(c) for c in d["currencies"]), int(d.get("preference", 0)),
                          dict(d.get("params", {})))


@dataclass(frozen=True)
class Choice:
    """The outcome of negotiation: which module and instrument pay these terms."""

    module: str
    instrument: Instrument
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    """A payment as one party's manager remembers it (for status, refund and disputes)."""

    payment_id: str
    module: str
    role: str                      # "payer" or "payee"
    terms: Terms
    status: Status
    instrument: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)   # the module's signed proofs, JSON only
    refunded: int = 0

    def as_json(self) -> str:
        """The record as JSON text, keys sorted, compact, UTF-8 as it is (msgspec: about a fifth of the time
        of ``json.dumps``; a seller writes it three times a purchase: docs/performance.md). Records written
        before 2026-12-07 by ``json.dumps`` (``", "`` and ``": "``, non-ASCII escaped) read back alike."""
        return _RECORD_JSON.encode({"payment_id": self.payment_id, "module": self.module, "role": self.role,
                                    "terms": self.terms.as_dict(), "status": self.status.value,
                                    "instrument": self.instrument, "evidence": self.evidence,
                                    "refunded": self.refunded}).decode()

    @staticmethod
    def from_json(text: str | bytes) -> Record:
        d = msgspec.json.decode(text)
        return Record(d["payment_id"], d["module"], d["role"], Terms.from_dict(d["terms"]), Status(d["status"]),
                      d["instrument"], d["evidence"], d["refunded"])
