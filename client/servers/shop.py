"""The seller's side of every workflow: offers signed with its token, orders checked, payments taken
through its payment manager (the PSAM in its second reader for the card purse), delivery, its archive.

Why one class without HTTP: the same seller logic runs behind ``semper serve shop`` (``shop_http``),
in tests and in the benchmark; the HTTP layer only parses requests and maps errors to statuses.

The seller decides locally after each step, like the buyer: an order is accepted only if it is for
the offer this shop signed (digest), with the same items, total and attributes and a valid form; a
delivery is made only after the payment completed; information and contracts are exchanged fairly
through its exchange party (it originates: its item is generatable by the third party, the buyer's
payment or signature is externally verifiable).

What a shop charges, delivers and lists on its delivery note are methods of their own
(:meth:`Shop.payment_amount`, :meth:`Shop.content_of`, :meth:`Shop.delivery_lines`), so a shop
with other rules is a subclass, opened with ``ShopHome.open(shop_class=...)``, and the rest of the
seller stays one code path. ``chaos/cheating_shop.py`` is such a subclass: its rules are the
cheats the buyer's client must catch.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ..commerce import documents as docs
from ..commerce.archive import SharedArchive
from ..commerce.catalogue import Catalogue, CatalogueItem
from ..commerce.deal import Deal, check_deal_id, deal_attributes, new_deal_id
from ..commerce.errors import CommerceError, DealConflict, FormError, NoSuchDeal, PaymentNotAccepted, ServiceUnavailable
from ..commerce.forms import form_for
from ..exchange.identity import Identity
from ..payment.errors import PaymentError
from ..payment.manager import PaymentManager
from ..payment.model import Status, Terms
from ..support.cms import EvidenceError
from ..support.trust import TrustStore
from ..support.verify import verify_statement
from ..transfer.information import InformationOffer
from ..transfer.items import Description
from ..transfer.managers import OfferTree, PackageOffer
from ..transfer.statements import StatementOffer

FAIR_MODULES = ("card-purse",)      # payments the third party can check on its own (see docs/commerce.md)
MAX_OPEN_DEALS = 10_000


@dataclass
class ShopDeal:
    deal: Deal
    offer: dict[str, Any]
    offer_der: bytes
    offer_digest: str
    lines: list[tuple[CatalogueItem, int]]
    order: dict[str, Any] | None = None
    order_bytes: bytes | None = None
    order_digest: str | None = None
    form: dict[str, str] = field(default_factory=dict)
    terms: Terms | None = None
    paid: bool = False
    payment: dict[str, Any] = field(default_factory=dict)
    confirmation: bytes | None = None
    delivery: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Shop:
    def __init__(self, *, name: str, identity: Identity, trust: TrustStore, catalogue: Catalogue,
                 payments: PaymentManager, account: str, archive: SharedArchive, psam_id: str | None = None,
                 offer_validity: dt.timedelta = dt.timedelta(minutes=30), fair_modules: Sequence[str] = FAIR_MODULES
                 ) -> None:
        self.name = name
        self.identity = identity
        self.trust = trust
        self.catalogue = catalogue
        self.payments = payments
        self.account = account
        self.archive = archive
        self.psam_id = psam_id
        self.offer_validity = offer_validity
        self.fair_modules = tuple(fair_modules)
        self.deals: dict[str, ShopDeal] = {}
        self.payment_lock = threading.Lock()          # one card session (the PSAM): one payment step at a time
        self.counters = {"offers": 0, "orders": 0, "payments": 0, "deliveries": 0, "signatures": 0}
        self._acceptances: list[Any] | None = None

    # ---- catalogue and offers -------------------------------------------------------------------------
    def acceptances(self) -> list[Any]:
        """What this shop accepts (asked once: the PSAM's currency does not change while it runs)."""
        if self._acceptances is None:
            self._acceptances = self.payments.offer()
        return self._acceptances

    def modules(self) -> list[str]:
        return [a.module for a in self.acceptances()]

    def view(self) -> dict[str, Any]:
        return {"seller": self.name, "items": [i.public() for i in self.catalogue.items.values()],
                "payment": self.modules(), "fair_payment": [m for m in self.modules() if m in self.fair_modules]}

    def batch(self) -> AbstractContextManager[None]:
        """The archive entries made inside are written together, before the block ends
        (``SharedArchive.batch``): one handler's entries, one transaction."""
        return self.archive.batch()

    def _sign(self, body: Mapping[str, Any]) -> bytes:
        self.counters["signatures"] += 1
        return self.identity.sign(body)

    def new_deal(self, workflow: str, items: Sequence[tuple[str, int]], nonce: str, anonymous: bool
                 ) -> tuple[str, bytes]:
        """A fresh deal and the signed offer for exactly these items, answering the buyer's ``nonce``."""
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64:
            raise CommerceError("the request needs a fresh nonce of 16 to 64 characters")
        if len(self.deals) >= MAX_OPEN_DEALS:
            self._evict()
        if len(self.deals) >= MAX_OPEN_DEALS:
            raise ServiceUnavailable("the shop has too many open deals; try again later")
        if not items or len(items) > docs.MAX_LINES:
            raise CommerceError(f"ask for 1 to {docs.MAX_LINES} items")
        lines = []
        for sku, qty in items:
            item = self.catalogue.get(sku)
            if not isinstance(qty, int) or not 1 <= qty <= item.max_quantity:
                raise CommerceError(f"quantity of {sku} must be 1 to {item.max_quantity}")
            lines.append((item, qty))
        kinds = {i.kind for i, _ in lines}
        expected = {"mail-order": {"physical", "information"}, "information": {"information"},
                    "registration": {"registration"}, "contract": {"contract"}}[workflow] \
            if workflow in ("mail-order", "information", "registration", "contract") else set()
        if not kinds <= expected:
            raise CommerceError(f"a {workflow} deal cannot sell {', '.join(sorted(kinds - expected))} goods")
        if workflow in ("information", "contract") and len(lines) != 1:
            raise CommerceError(f"a {workflow} deal is for exactly one item")
        attributes = deal_attributes(workflow, anonymous)
        if anonymous and workflow in ("information", "contract", "registration"):
            raise CommerceError(f"a {workflow} deal cannot be anonymous here: it names both parties (buy "
                                "information anonymously by mail order)")
        modules = self.modules()
        if workflow == "information":
            modules = [m for m in modules if m in self.fair_modules]
        if anonymous:
            modules = [m for m in modules if self.payments.module(m).properties.anonymous]
        forms = {form_for(i.kind, anonymous).name: form_for(i.kind, anonymous) for i, _ in lines}
        form = next((f for n, f in forms.items() if n != "none"), form_for("none", anonymous))
        deal_id = new_deal_id()
        body = docs.offer_body(deal_id=deal_id, nonce=nonce, workflow=workflow, lines=lines, payment=modules,
                               seller_account=self.account, psam=self.psam_id, attributes=attributes, form=form,
                               valid_until=dt.datetime.now(dt.UTC) + self.offer_validity)
        der = self._sign(body)
        deal = Deal(deal_id, workflow, attributes, self.archive)
        deal.keep_statement(der, body["type"])
        self.deals[deal_id] = ShopDeal(deal, body, der, docs.sha256_hex(der), lines)
        self.counters["offers"] += 1
        return deal_id, der

    def _evict(self) -> None:
        """Forget finished deals and offers nobody ordered in time (their evidence stays in the archive)."""
        now = dt.datetime.now(dt.UTC)
        for deal_id, sd in list(self.deals.items()):
            unordered = sd.order is None and docs.parse_time(sd.offer["valid_until"], "validity") < now
            finished = sd.delivery is not None or any(d.step == "exchange" for d in sd.deal.decisions)
            if unordered or finished:
                del self.deals[deal_id]

    def _deal(self, deal_id: Any) -> ShopDeal:
        try:
            return self.deals[check_deal_id(deal_id)]
        except KeyError:
            raise NoSuchDeal("no such deal here (it expired, or this shop never offered it)") from None

    # ---- orders -------------------------------------------------------------------------------------
    def order(self, deal_id: str, order_bytes: bytes) -> dict[str, Any]:
        """Check the order against this shop's offer; answer with what comes next (payment terms or exchange)."""
        sd = self._deal(deal_id)
        with sd.lock:
            if sd.order is not None:
                if order_bytes == sd.order_bytes:
                    return self._next_step(sd)
                raise DealConflict("this deal already has another order")
            if sd.deal.attributes.anonymous:
                try:
                    body = json.loads(order_bytes)
                except ValueError:
                    raise CommerceError("an anonymous order is the canonical JSON of the order") from None
                if not isinstance(body, dict) or docs.canonical(body) != order_bytes:
                    raise CommerceError("an anonymous order must be canonical JSON (sorted keys, no spaces)")
            elif sd.deal.workflow == "contract":
                try:
                    body = json.loads(order_bytes)
                except ValueError:
                    body = None
                if not isinstance(body, dict) or docs.canonical(body) != order_bytes:
                    raise CommerceError("a contract request is canonical JSON; the signature comes in the exchange")
            else:
                try:
                    vs = verify_statement(order_bytes, self.trust)
                except EvidenceError as e:
                    raise CommerceError(f"the order's signature does not verify: {e}") from None
                if not docs.has_role(vs.signer, "person"):
                    raise CommerceError("the order is not signed with a person's certificate")
                body = vs.body
            try:
                sd.form = docs.check_order(body, sd.offer, sd.offer_digest)
            except FormError as e:
                raise CommerceError(str(e)) from None
            sd.order, sd.order_bytes, sd.order_digest = body, order_bytes, docs.sha256_hex(order_bytes)
            if body.get("deal") != deal_id:
                raise CommerceError("the order is for another deal")
            if sd.deal.attributes.anonymous or sd.deal.workflow == "contract":
                sd.deal.keep("order:unsigned", order_bytes)
            else:
                sd.deal.keep_statement(order_bytes, vs.type)
            sd.deal.decide("order", "satisfied", "the order is for the offer this shop signed")
            self.counters["orders"] += 1
            return self._next_step(sd)

    def _next_step(self, sd: ShopDeal) -> dict[str, Any]:
        assert sd.order is not None and sd.order_digest is not None
        total = int(sd.offer["total"])
        if sd.deal.workflow in ("information", "contract"):
            return {"next": "exchange"}
        if total == 0:
            sd.paid = True
            return {"next": "delivery"}
        if sd.terms is None:
            amount = self.payment_amount(sd)
            sd.terms = Terms(secrets.token_hex(16), amount, int(sd.offer["currency"]), self.account, sd.order_digest,
                             self.name)
            self.payments.expect(sd.terms)
        accept = [a.as_dict() for a in self.acceptances() if a.module == sd.order["payment"]]
        return {"next": "payment", "terms": sd.terms.as_dict(), "accept": accept}

    def payment_amount(self, sd: ShopDeal) -> int:
        """What this shop asks the buyer to pay for an ordered deal: the total of the offer it signed
        (the buyer's client refuses terms for any other amount)."""
        return int(sd.offer["total"])

    # ---- payment ------------------------------------------------------------------------------------
    def pay(self, deal_id: str, envelope: dict[str, Any]) -> dict[str, Any] | None:
        sd = self._deal(deal_id)
        if sd.terms is None:
            raise DealConflict("this deal has no payment to make (order first)")
        if not isinstance(envelope, dict) or envelope.get("payment_id") != sd.terms.payment_id:
            raise CommerceError("the payment message is for another payment than this deal's")
        try:
            self.payments.admit(envelope)             # room at the device first, outside its lock (the
        except PaymentError as e:                     # HTTP handler waits for it without holding a thread)
            raise PaymentNotAccepted(f"the payment was refused: {e}") from None
        with self.payment_lock:
            try:
                reply = self.payments.handle(envelope)
            except PaymentError as e:
                sd.deal.decide("payment", "refused", str(e))
                raise PaymentNotAccepted(f"the payment was refused: {e}") from None
            record = self.payments.record(sd.terms.payment_id, "payee")
        if record.status in (Status.PAID, Status.CAPTURED, Status.AUTHORISED) and not sd.paid:
            with sd.lock:
                if not sd.paid:
                    sd.paid = True
                    sd.payment = {"module": record.module, "payment_id": record.payment_id,
                                  "amount": record.terms.amount, "currency": record.terms.currency,
                                  "status": record.status.value}
                    sd.deal.keep("payment", record.as_json().encode())
                    sd.deal.decide("payment", "satisfied", f"{record.module}: {record.status.value}")
                    self.counters["payments"] += 1
        return reply

    # ---- confirmation and delivery ------------------------------------------------------------------
    def confirm(self, deal_id: str) -> bytes:
        sd = self._deal(deal_id)
        with sd.lock:
            if not sd.paid or sd.order_digest is None:
                raise DealConflict("the order is not paid yet: nothing to confirm")
            if sd.confirmation is None:
                body = docs.confirmation_body(sd.deal.deal_id, sd.order_digest, sd.payment)
                sd.confirmation = self._sign(body)
                sd.deal.keep_statement(sd.confirmation, body["type"])
            return sd.confirmation

    def deliver(self, deal_id: str) -> tuple[bytes | None, bytes | None]:
        """(signed delivery note or registration, information content or None); (None, None): not shipped."""
        sd = self._deal(deal_id)
        with sd.lock:
            if not sd.paid or sd.order_digest is None:
                raise DealConflict("the order is not paid yet: nothing is delivered")
            content = None
            info = [i for i, _ in sd.lines if i.kind == "information"]
            if info:
                content = self.content_of(info[0])
            if sd.delivery is None:
                if sd.deal.workflow == "registration":
                    member_id = "M-" + secrets.token_hex(4).upper()
                    body = docs.registration_body(sd.deal.deal_id, sd.order_digest, sd.lines[0][0].sku, sd.form,
                                                  member_id, dt.datetime.now(dt.UTC) + dt.timedelta(days=365))
                else:
                    body = docs.delivery_body(sd.deal.deal_id, sd.order_digest, self.delivery_lines(sd), sd.form,
                                              "TRK-" + secrets.token_hex(5).upper())
                sd.delivery = self._sign(body)
                sd.deal.keep_statement(sd.delivery, body["type"])
                sd.deal.decide("delivery", "satisfied", "delivered")
                sd.deal.close()                   # order, payment and note on disk before the note goes out
                self.counters["deliveries"] += 1
            return sd.delivery, content

    def content_of(self, item: CatalogueItem) -> bytes | None:
        """The bytes this shop delivers for an information item: the catalogue's, whose digest its
        signed offer names (the buyer checks what it gets against that digest)."""
        return item.content

    def delivery_lines(self, sd: ShopDeal) -> list[dict[str, Any]]:
        """What the signed delivery note lists as shipped: every ordered line, with the digest of
        information goods."""
        return [{"sku": i.sku, "quantity": q, **({"sha256": i.sha256} if i.content else {})} for i, q in sd.lines]

    # ---- fair exchanges (information, contract) ---------------------------------------------------------
    def exchange_plan(self, deal_id: str) -> tuple[OfferTree, Description, ShopDeal]:
        """What this shop gives and wants in the deal's fair exchange (it originates)."""
        sd = self._deal(deal_id)
        if sd.order is None or sd.order_digest is None:
            raise DealConflict("order first")
        item, _qty = sd.lines[0]
        if sd.deal.workflow == "information":
            content = self.content_of(item)
            assert content is not None
            receipt = docs.receipt_body(sd.deal.deal_id, sd.order_digest, item.public(), int(sd.offer["total"]),
                                        int(sd.offer["currency"]))
            offer = PackageOffer((InformationOffer(content, item.name or item.sku),
                                  StatementOffer(self._sign, receipt)), "information with receipt")
            want = Description("payment", {"module": sd.order["payment"], "amount": int(sd.offer["total"]),
                                           "currency": int(sd.offer["currency"]), "order_hash": sd.order_digest})
            return offer, want, sd
        if sd.deal.workflow == "contract":
            digest = item.sha256 or ""
            mine = StatementOffer(self._sign, docs.contract_body(sd.deal.deal_id, digest, "seller"))
            conf = str(sd.order.get("confirmation", {}).get("sha256", ""))
            want = Description("statement", {"statement_type": "contract-signature",
                                             "fields": {"deal": sd.deal.deal_id, "contract_sha256": digest,
                                                        "role": "buyer", "confirmation_sha256": conf}})
            return mine, want, sd
        raise CommerceError(f"a {sd.deal.workflow} deal has no fair exchange")

    def exchanged(self, sd: ShopDeal, status: str, reason: str, xid: str | None) -> None:
        """The seller's local decision after its exchange ended."""
        sd.deal.keep("exchange", json.dumps({"xid": xid, "status": status, "reason": reason}).encode())
        ok = status in ("completed", "resolved")
        sd.paid = sd.paid or (ok and sd.deal.workflow == "information")
        sd.deal.decide("exchange", "satisfied" if ok else "dispute" if status in ("pending", "refused") else "refused",
                       f"{status}: {reason}")
        sd.deal.close()


def order_digest(order_bytes: bytes) -> str:
    return hashlib.sha256(order_bytes).hexdigest()
