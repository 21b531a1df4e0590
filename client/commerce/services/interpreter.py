"""The interpreter: runs a service document with the commerce layer's own blocks, under its permit.

Why an interpreter and not downloaded code: a document can only put today's blocks
(:mod:`client.commerce.blocks`) in one of the orders :data:`.document.GRAMMAR` allows; the blocks
keep their checks, their local decisions and their evidence whatever the document says, the
TINGUIN's confirmation always follows the offer, and every PIN goes from the TINGUIN to the card.
What the document may vary (items, titles, the attributes it honours, how often it repeats) is
checked against its certificate's :class:`~.permits.Permit` before each step that would use it,
with what the seller actually sent: a payment the permit does not cover is refused before the
TINGUIN shows it, an amount above the permit before anything is signed.

The built-in workflows (mail order, information, registration, contract) are documents run here
with ``permit=None``: they are part of semper, as the blocks are.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...support.money import format_amount
from ...support.verify import VerifiedStatement
from ...tinguin.model import Action, OutcomeStatus
from .. import blocks
from .. import documents as docs
from ..anonymity import on_fresh_connections
from ..buyer import Buyer
from ..deal import DealAttributes, deal_attributes
from .document import ServiceDocument
from .mall_parts import check_parts
from .permits import Enforcer, Permit, ServiceRefused
from .run import DealResult, Run

MAX_WAIT = 31 * 86400.0


@dataclass(frozen=True)
class Request:
    """What the business application asks of a service: items (unless the document fixes them), the
    order form's values, a preferred payment module, anonymity. ``on_deal``: told the seller's deal id as soon
    as its offer verifies, before anything is ordered or paid, so a caller that may stop mid-deal (the mall
    buying from its shops) can find that deal again instead of buying twice."""

    items: Sequence[tuple[str, int]] = ()
    form: Mapping[str, Any] = field(default_factory=dict)
    prefer: str | None = None
    attributes: DealAttributes | None = None
    on_deal: Callable[[str], None] | None = None


@dataclass
class _State:
    """What the steps of one deal hand each other."""

    b: Buyer
    doc: ServiceDocument
    request: Request
    enforcer: Enforcer
    attributes: DealAttributes
    run: Run
    deal: Any = None
    offer: docs.ParsedOffer | None = None
    vs: Any = None
    confirmed: blocks.Confirmed | None = None
    order: bytes | None = None
    answer: dict[str, Any] = field(default_factory=dict)
    early: blocks.EarlyPayment | None = None        # the payment begun with the order
    paid: blocks.Paid | None = None                 # the payment, with the seller's answers that came with it
    conf: bytes = b""
    conf_vs: VerifiedStatement | None = None        # the confirmation verified (the note, when it states the payment)
    note: bytes = b""
    content: bytes | None = None
    receipt: bytes = b""
    exchanged: str = ""
    seller_signature: bytes = b""
    shops: int = 0

    def refuse(self, e: ServiceRefused) -> ServiceRefused:
        if self.deal is not None:
            self.deal.decide("service", "refused", str(e))
        return e


# ---- the blocks, as steps --------------------------------------------------------------------------------
def _offer(s: _State) -> None:
    s.run.next("offer")
    deal, offer, vs = blocks.get_offer(s.b, s.doc.protocol, s.request.items, s.attributes)
    s.deal = s.run.deal = deal
    try:
        s.enforcer.amount(offer.total, offer.currency)
    except ServiceRefused as e:
        raise s.refuse(e) from None
    allowed = s.enforcer.modules(offer.payment)
    if allowed != offer.payment:                 # the TINGUIN offers only what the certificate permits
        offer = dataclasses.replace(offer, payment=allowed)
    s.offer, s.vs = offer, vs
    if s.request.on_deal is not None:
        s.request.on_deal(deal.deal_id)


def _confirm(s: _State) -> None:
    assert s.offer is not None
    s.run.next("confirm")
    if s.doc.protocol == "contract":
        action = Action.SIGN_CONTRACT
    elif s.doc.protocol == "information":
        action = Action.ORDER_AND_PAY
    else:
        action = Action.ORDER_AND_PAY if s.offer.total else Action.ORDER
    prefer = None if s.doc.protocol == "contract" else s.request.prefer
    s.confirmed = blocks.review_and_confirm(s.b, s.deal, s.offer, s.vs, s.request.form or {}, action, prefer)
    try:
        s.enforcer.module(s.confirmed.payment.module)
    except ServiceRefused as e:
        raise s.refuse(e) from None


def _signature(s: _State) -> None:
    if s.attributes.anonymous:            # nothing is signed (run_once checked the permit allows anonymity)
        return
    try:
        s.enforcer.card_signature()
    except ServiceRefused as e:
        raise s.refuse(e) from None


def _order(s: _State) -> None:
    assert s.offer is not None and s.confirmed is not None
    s.run.next("order")
    _signature(s)
    s.order = blocks.make_order(s.b, s.deal, s.offer, s.confirmed)
    if s.doc.protocol in ("mail-order", "registration"):
        if _may_pay(s):         # the card's hello with the order (one request fewer), when the module may
            s.early = blocks.start_early(s.b, s.deal, s.offer, s.order, s.confirmed)
        s.answer = blocks.send_order(s.b, s.deal, s.offer, s.order, early=s.early)


def _permit_payment(s: _State) -> None:
    """ServiceRefused unless the service's permit allows this payment (its module and amount): one check
    for the order step, which starts the payment early only when it may, and the payment step, which refuses."""
    assert s.offer is not None and s.confirmed is not None
    s.enforcer.module(s.confirmed.payment.module)
    s.enforcer.amount(s.offer.total, s.offer.currency)


def _may_pay(s: _State) -> bool:
    """Whether the service's permit allows this payment (checked again, and refused, at the payment step)."""
    try:
        _permit_payment(s)
    except ServiceRefused:
        return False
    return True


def _payment(s: _State) -> None:
    assert s.offer is not None and s.confirmed is not None and s.order is not None
    if s.answer.get("next") != "payment":
        return
    s.run.next("payment", f"{_amount(s.offer)} with {s.confirmed.payment.label}")
    try:
        _permit_payment(s)
    except ServiceRefused as e:
        raise s.refuse(e) from None
    s.paid = blocks.pay(s.b, s.deal, s.offer, docs.sha256_hex(s.order), s.confirmed, s.answer, s.early)


def _confirmation(s: _State) -> None:
    assert s.offer is not None and s.order is not None
    if s.paid is None:
        return
    s.run.next("confirmation")
    s.conf_vs = blocks.fetch_confirmation(s.b, s.deal, s.offer, docs.sha256_hex(s.order), s.paid)
    s.conf = s.conf_vs.statement.der


def _delivery(s: _State) -> None:
    assert s.offer is not None and s.order is not None
    s.run.next("delivery")
    s.note, s.content, _ = blocks.await_delivery(s.b, s.deal, s.offer, docs.sha256_hex(s.order),
                                                 sent=s.paid.delivery if s.paid is not None else None,
                                                 confirmed=s.conf_vs)


def _exchange_information(s: _State) -> None:
    assert s.offer is not None and s.confirmed is not None and s.order is not None
    s.run.next("exchange")
    try:
        s.enforcer.card_signature()
        s.enforcer.module(s.confirmed.payment.module)
    except ServiceRefused as e:
        raise s.refuse(e) from None
    s.content, s.receipt, s.exchanged = blocks.exchange_information(s.b, s.deal, s.offer, s.order, s.confirmed)


def _exchange_contract(s: _State) -> None:
    assert s.offer is not None and s.confirmed is not None
    c = s.confirmed
    try:
        s.enforcer.card_signature()
    except ServiceRefused as e:
        raise s.refuse(e) from None
    request = docs.canonical(docs.order_body(s.offer, payment="none", payment_label=c.payment.label,
                                             confirmation_sha256=c.digest, scripted=c.scripted,
                                             action=c.action.name, details=c.details, form=c.form,
                                             attributes=s.deal.attributes))
    s.deal.keep("order:unsigned", request)
    s.run.next("exchange")
    s.seller_signature = blocks.exchange_contract(s.b, s.deal, s.offer, request, c)


def _shop_parts(s: _State) -> None:
    assert s.offer is not None and s.order is not None and s.confirmed is not None
    s.run.next("shop-parts")
    s.shops = check_parts(s.b, s.deal, s.offer, docs.sha256_hex(s.order), s.confirmed.form)


STEP_FUNCTIONS = {"offer": _offer, "confirm": _confirm, "order": _order, "payment": _payment,
                  "confirmation": _confirmation, "delivery": _delivery, "exchange-information": _exchange_information,
                  "exchange-contract": _exchange_contract, "shop-parts": _shop_parts}


def progress_key(block: str) -> str:
    return "exchange" if block.startswith("exchange-") else block


# ---- outcomes --------------------------------------------------------------------------------------------
def _amount(offer: docs.ParsedOffer) -> str:
    return format_amount(offer.total, offer.currency)


def _result(s: _State) -> DealResult:
    offer, c, deal = s.offer, s.confirmed, s.deal
    assert offer is not None and c is not None
    proto = s.doc.protocol
    if proto == "information":
        how = "in one fair exchange" if s.exchanged == "completed" else \
            "through the third party (the seller stopped; the exchange stayed fair)"
        return DealResult(deal.deal_id, proto, OutcomeStatus.SATISFIED,
                          f"paid {_amount(offer)} with {c.payment.label} and received the information "
                          f"({len(s.content or b'')} bytes, SHA-256 as offered) with a signed receipt, {how}",
                          content=s.content, documents={"offer": offer.der, "order": s.order or b"",
                                                        "receipt": s.receipt})
    if proto == "contract":
        return DealResult(deal.deal_id, proto, OutcomeStatus.SATISFIED,
                          "the contract is signed by both sides: you hold the seller's signature, it holds yours",
                          documents={"offer": offer.der, "seller-signature": s.seller_signature})
    what = "registered" if proto == "registration" else "delivered"
    if s.shops:
        what += f" by {s.shops} shops, each part signed by its shop"
    paid = f"paid {_amount(offer)} with {c.payment.label}; " if s.paid else ""
    return DealResult(deal.deal_id, proto, OutcomeStatus.SATISFIED, f"{paid}{what}: the seller's signed "
                      f"documents check", payment=s.paid.record if s.paid else None, content=s.content,
                      documents={"offer": offer.der, "order": s.order or b"", "confirmation": s.conf,
                                 "delivery": s.note})


# ---- running a document ------------------------------------------------------------------------------------
def run_once(b: Buyer, doc: ServiceDocument, request: Request, enforcer: Enforcer) -> DealResult:
    """One deal of the service (one period of a repeating one)."""
    attributes = request.attributes or deal_attributes(doc.protocol)
    steps = [(progress_key(st.block), st.title) for st in doc.steps]
    run = Run(b, doc.protocol, steps)

    def body(r: Run) -> DealResult:
        s = _State(b, doc, request, enforcer, attributes, r)
        if attributes.anonymous:
            try:
                enforcer.anonymous()
            except ServiceRefused:
                r.next("offer")
                raise
        for st in doc.steps:
            STEP_FUNCTIONS[st.block](s)
        return _result(s)
    if attributes.anonymous:          # connections of its own: nothing links it to another deal (anonymity.py)
        return on_fresh_connections(b, lambda: run.run(body))
    return run.run(body)


def _items(doc: ServiceDocument, request: Request) -> list[tuple[str, int]]:
    if doc.items is not None:
        return [(i.sku, i.quantity) for i in doc.items]
    return list(request.items)


def run(b: Buyer, doc: ServiceDocument, request: Request, permit: Permit | None = None, *,
        sleep: Any = time.sleep) -> DealResult:
    """Run ``doc`` for ``request``: once, or once per period of its ``repeat`` (one payment each, the
    next period only after the last one was satisfied). ``permit`` None: a built-in workflow."""
    enforcer = Enforcer(permit, doc.name)
    request = dataclasses.replace(request, items=_items(doc, request))
    if doc.periods == 1:
        return run_once(b, doc, request, enforcer)
    try:
        enforcer.periods(doc.periods)
    except ServiceRefused as e:
        return DealResult(None, doc.protocol, OutcomeStatus.FAILED, f"refused: {e}")
    done: list[DealResult] = []
    every = min(float(doc.repeat.every_seconds if doc.repeat else 0), MAX_WAIT)
    for n in range(doc.periods):
        if n:
            sleep(every)
        r = run_once(b, doc, request, enforcer)
        done.append(r)
        if not r.ok:
            break
    last = done[-1]
    paid = sum(r.payment.terms.amount for r in done if r.ok and r.payment is not None)
    currency = next((r.payment.terms.currency for r in done if r.payment is not None), 978)
    ok = sum(1 for r in done if r.ok)
    summary = (f"{doc.title}: {ok} of {doc.periods} periods delivered, one payment each "
               f"({format_amount(paid, currency)} in all)")
    if not last.ok:
        summary += f"; period {len(done)} ended: {last.summary}"
    return dataclasses.replace(last, summary=summary, periods=tuple(done),
                               evidence=tuple(e for r in done for e in r.evidence))
