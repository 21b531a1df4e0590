"""The service document: a commerce service described as data, its shape and its rules.

Why a document and not code: a downloaded service must be evaluated, certified and confined
(paper 3.5). A document can be read completely by a certifier, compared byte for byte with what
was certified (its canonical JSON has one form and one SHA-256), and run only by the interpreter,
which uses the commerce layer's own blocks and nothing the document brings.

Why msgspec shapes (``support/shapes.py``) and not JSON Schema: every other message semper reads
from outside is a msgspec ``Shape`` already (strict types, limits, unknown fields refused, one
error with a stable code and the field's path); a second schema language would be a second idea
of a missing or mistyped field. msgspec is well kept, fast and already a dependency.

A document::

    {"format": "semper-service/1", "name": "tea-news", "version": 1,
     "title": "...", "description": "...",           # the seller's words (shown marked in the TINGUIN)
     "protocol": "mail-order",                        # the shop-side protocol the steps speak
     "items": [{"sku": "tea-news", "quantity": 1}],   # fixed items (optional: else the buyer's)
     "payment": {"modules": ["card-purse"], "max_amount": 500, "currency": 978},   # or null: no payment
     "card_signature": true, "anonymity": false,
     "steps": [{"block": "offer", "title": "...", "evidence": ["offer"]}, ...],
     "repeat": {"periods": 3, "every_seconds": 2}}    # optional: the steps again, once per period

The steps follow one grammar (:data:`GRAMMAR`): the offer, then the TINGUIN's confirmation (no
document can leave it out), then the order and the rest of the protocol. Each step names the
evidence it keeps (:data:`EVIDENCE`: only kinds its block really writes); a document cannot turn
evidence off, there is no field for it.
"""
from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

import msgspec

from ...support.canonical import canonical
from ...support.shapes import Shape, ShapeError, convert, decode
from ..errors import CommerceError

FORMAT = "semper-service/1"
PROTOCOLS = ("mail-order", "information", "registration", "contract")
BLOCKS = ("offer", "confirm", "order", "payment", "confirmation", "delivery", "exchange-information",
          "exchange-contract", "shop-parts")
#: the evidence each block writes to the deal's archive (a step may name these and no others)
EVIDENCE: dict[str, frozenset[str]] = {
    "offer": frozenset({"offer"}),
    "confirm": frozenset({"confirmation-text"}),
    "order": frozenset({"order", "order:unsigned"}),
    "payment": frozenset({"payment"}),
    # the delivery note (registration) itself when it states the payment: one statement for both
    "confirmation": frozenset({"order-confirmation", "delivery", "registration"}),
    "delivery": frozenset({"delivery", "registration", "delivered-content"}),
    "exchange-information": frozenset({"exchange", "payment", "receipt", "delivered-content"}),
    "exchange-contract": frozenset({"order:unsigned", "exchange", "contract-signature"}),
    "shop-parts": frozenset({"mall-part", "delivery"}),
}
#: the sequences of blocks each protocol allows; the confirmation in the TINGUIN always follows the offer
GRAMMAR: dict[str, tuple[tuple[str, ...], ...]] = {
    "mail-order": (("offer", "confirm", "order", "payment", "confirmation", "delivery"),
                   ("offer", "confirm", "order", "delivery"),
                   # a mall: each shop's part checked after the mall's own delivery note
                   ("offer", "confirm", "order", "payment", "confirmation", "delivery", "shop-parts")),
    "registration": (("offer", "confirm", "order", "payment", "confirmation", "delivery"),),
    "information": (("offer", "confirm", "order", "exchange-information"),),
    "contract": (("offer", "confirm", "exchange-contract"),),
}
MAX_AMOUNT = 10_000_000                      # minor units: what any one payment of a service may ask at most

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{0,39}$")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
Module = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{0,39}$")]


class ItemRef(Shape, frozen=True):
    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1


class PaymentNeeds(Shape, frozen=True):
    """What the service will ask to be paid: with which modules, at most how much per payment."""

    modules: Annotated[list[Module], msgspec.Meta(min_length=1, max_length=8)]
    max_amount: Annotated[int, msgspec.Meta(ge=1, le=MAX_AMOUNT)]
    currency: Annotated[int, msgspec.Meta(ge=1, le=999)] = 978


class Step(Shape, frozen=True):
    block: Literal["offer", "confirm", "order", "payment", "confirmation", "delivery", "exchange-information",
                   "exchange-contract", "shop-parts"]
    title: Title
    evidence: Annotated[list[str], msgspec.Meta(max_length=8)] = []


class Repeat(Shape, frozen=True):
    """The steps run again once per period: one deal, one payment per period."""

    periods: Annotated[int, msgspec.Meta(ge=1, le=24)]
    every_seconds: Annotated[int, msgspec.Meta(ge=0, le=31 * 86400)] = 0


class ServiceDocument(Shape, frozen=True):
    format: Literal["semper-service/1"]
    name: Name
    version: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    title: Title
    description: Text
    protocol: Literal["mail-order", "information", "registration", "contract"]
    steps: Annotated[list[Step], msgspec.Meta(min_length=2, max_length=12)]
    card_signature: bool
    anonymity: bool = False
    payment: PaymentNeeds | None = None
    items: Annotated[list[ItemRef], msgspec.Meta(min_length=1, max_length=20)] | None = None
    repeat: Repeat | None = None

    codes = {"steps": "bad_steps"}

    # ---- what the document is ------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    def canonical(self) -> bytes:
        """The one byte form: what the certifier signs the digest of, what the client compares."""
        return canonical(self.as_dict(), "service document", CommerceError)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    @property
    def blocks(self) -> tuple[str, ...]:
        return tuple(s.block for s in self.steps)

    @property
    def periods(self) -> int:
        return self.repeat.periods if self.repeat is not None else 1


class ServiceError(CommerceError):
    """A service document that is malformed or breaks the rules of services; nothing was run."""

    exit_status = 2
    http_status = 400
    code = "bad_service"


def check(doc: ServiceDocument) -> ServiceDocument:
    """The rules a shape cannot say: the grammar of the steps, their evidence, what the steps need."""
    blocks = doc.blocks
    if blocks not in GRAMMAR[doc.protocol]:
        allowed = " or ".join(" -> ".join(g) for g in GRAMMAR[doc.protocol])
        why = " (the confirmation in the TINGUIN always follows the offer)" if "confirm" not in blocks[1:2] else ""
        raise ServiceError(f"service {doc.name!r}: a {doc.protocol} service's steps are {allowed}, not "
                           f"{' -> '.join(blocks)}{why}")
    for s in doc.steps:
        extra = sorted(set(s.evidence) - EVIDENCE[s.block])
        if extra:
            raise ServiceError(f"service {doc.name!r}: the {s.block} step cannot keep {', '.join(extra)} (it keeps "
                               f"{', '.join(sorted(EVIDENCE[s.block]))})")
    pays = "payment" in blocks or "exchange-information" in blocks
    if pays and doc.payment is None:
        raise ServiceError(f"service {doc.name!r} pays in its steps but says nothing about payment (add 'payment')")
    if "exchange-information" in blocks or "exchange-contract" in blocks:
        if not doc.card_signature:
            raise ServiceError(f"service {doc.name!r}: a fair exchange signs with your card; set card_signature")
    if "order" in blocks and not doc.card_signature and not doc.anonymity:
        raise ServiceError(f"service {doc.name!r}: an order is signed with your card unless the deal is anonymous; "
                           "set card_signature or anonymity")
    if doc.repeat is not None and doc.repeat.periods > 1 and doc.items is None:
        raise ServiceError(f"service {doc.name!r} repeats, so it must name its items (what each period delivers)")
    return doc


def read(data: bytes | dict[str, Any], what: str = "the service document") -> ServiceDocument:
    """A document from JSON bytes or a parsed object, strictly: its shape, then its rules."""
    try:
        doc = decode(data, ServiceDocument, what) if isinstance(data, bytes) else convert(data, ServiceDocument, what)
    except ShapeError as e:
        raise ServiceError(f"{what} is not a service document: {e}") from None
    return check(doc)


_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))
