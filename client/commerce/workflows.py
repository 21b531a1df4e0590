"""The buyer's workflows: business scenarios as sequences of blocks with a local decision after each.

=================  ==========================================================================================
workflow           steps (each ends in a local decision; a failure after the buyer gave something is a dispute)
=================  ==========================================================================================
mail order         offer -> TINGUIN (offer, confirmation) -> order signed on the card -> payment (any module
                   the deal allows) -> the seller's signed confirmation -> its signed delivery note
information        offer -> TINGUIN -> order -> the payment fairly exchanged for the information and a
                   receipt (gen-ver: the third party restores fairness if the seller stops or cheats)
registration       offer -> TINGUIN (with the registration form) -> order -> fee -> confirmation -> the
                   seller's signed registration (membership) statement
contract signing   offer (with the contract text) -> TINGUIN -> the buyer's and the seller's signatures
                   fairly exchanged (gen-ver on statements)
=================  ==========================================================================================

Every workflow returns a :class:`DealResult` and shows its outcome, with the evidence, in the TINGUIN.
The business application only chooses the workflow, the items and the form values; the user's
decisions are taken in the TINGUIN, and the deal's attributes are honoured by every block.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from semper.hardware import errors as hw

from ..payment.model import Record
from ..support.money import format_amount
from ..tinguin.model import Action, DealOutcome, EvidenceItem, OutcomeStatus, StepState
from . import blocks
from . import documents as docs
from .buyer import Buyer
from .deal import Deal, DealAttributes, deal_attributes
from .errors import CommerceError, DealAborted, DealDeclined, Dispute, OfferRefused

STEPS = {
    "mail-order": [("offer", "get and verify the seller's signed offer"), ("confirm", "confirm in the TINGUIN"),
                   ("order", "sign and send the order"), ("payment", "pay"),
                   ("confirmation", "check the seller's signed confirmation"),
                   ("delivery", "check the signed delivery note")],
    "information": [("offer", "get and verify the seller's signed offer"), ("confirm", "confirm in the TINGUIN"),
                    ("order", "sign and send the order"),
                    ("exchange", "exchange the payment fairly for the information and a receipt")],
    "registration": [("offer", "get and verify the service's signed offer"), ("confirm", "confirm in the TINGUIN"),
                     ("order", "sign and send the registration"), ("payment", "pay the fee"),
                     ("confirmation", "check the signed confirmation"),
                     ("delivery", "check the signed registration")],
    "contract": [("offer", "get and verify the signed contract offer"), ("confirm", "confirm in the TINGUIN"),
                 ("exchange", "exchange the signatures fairly")],
}


@dataclass
class DealResult:
    deal_id: str | None
    workflow: str
    status: OutcomeStatus
    summary: str
    evidence: tuple[EvidenceItem, ...] = ()
    payment: Record | None = None
    content: bytes | None = None
    documents: dict[str, bytes] = field(default_factory=dict)   # kind -> signed statement DER

    @property
    def ok(self) -> bool:
        return self.status is OutcomeStatus.SATISFIED


class _Run:
    """One workflow run: progress lines in the TINGUIN and the mapping of endings to outcomes."""

    def __init__(self, b: Buyer, workflow: str) -> None:
        self.b, self.workflow = b, workflow
        self.steps = STEPS[workflow]
        self.current = 0
        self.deal: Deal | None = None
        for key, title in self.steps:
            blocks.step(b, key, title, StepState.PENDING)

    def next(self, key: str, detail: str = "") -> None:
        for i, (k, title) in enumerate(self.steps):
            if i < self.current:
                continue
            if k == key:
                if i > 0:
                    pk, pt = self.steps[i - 1]
                    blocks.step(self.b, pk, pt, StepState.DONE)
                blocks.step(self.b, k, title, StepState.RUNNING, detail)
                self.current = i
                return

    def finish(self, result: DealResult) -> DealResult:
        if self.deal is not None:
            self.deal.close()
        key, title = self.steps[self.current]
        state = StepState.DONE if result.ok else StepState.FAILED
        blocks.step(self.b, key, title, state, "" if result.ok else result.summary[:200])
        for k, t in self.steps[self.current + 1:]:
            blocks.step(self.b, k, t, StepState.SKIPPED)
        result.evidence = evidence_of(self.b, result.deal_id)
        balance = self.b.balance()
        self.b.ui.result(DealOutcome(result.deal_id or "-", result.status, result.summary, result.evidence,
                                     balance_after=balance[0] if balance else None,
                                     currency=balance[1] if balance else None))
        return result

    def run(self, body: Callable[[_Run], DealResult]) -> DealResult:
        try:
            result = body(self)
        except DealDeclined as e:
            result = DealResult(self.deal_id, self.workflow, OutcomeStatus.CANCELLED, str(e))
        except (OfferRefused, DealAborted) as e:
            result = DealResult(self.deal_id, self.workflow, OutcomeStatus.FAILED, f"refused: {e}")
        except Dispute as e:
            result = DealResult(e.deal_id, self.workflow, OutcomeStatus.DISPUTE,
                                f"dispute: {e} (semper archive export {e.deal_id} ...; semper judge BUNDLE)")
        except CommerceError as e:
            result = DealResult(self.deal_id, self.workflow, OutcomeStatus.FAILED, str(e))
        except hw.HardwareError as e:        # the card went away outside a payment (which maps its own errors)
            result = DealResult(self.deal_id, self.workflow, OutcomeStatus.FAILED,
                                f"your card did not answer ({e}); insert it and try again (your archive shows what "
                                "was done)")
        return self.finish(result)

    @property
    def deal_id(self) -> str | None:
        return self.deal.deal_id if self.deal is not None else None


def evidence_of(b: Buyer, deal_id: str | None) -> tuple[EvidenceItem, ...]:
    if deal_id is None:
        return ()
    out = []
    for e in b.archive.entries(deal_id):
        if e.kind in ("decision", "decisions"):
            continue
        what = e.kind.removeprefix("statement:")
        out.append(EvidenceItem(e.kind, _describe(what), hashlib.sha256(e.content).hexdigest(), e.index))
    return tuple(out)


def _describe(kind: str) -> str:
    return {"offer": "the seller's signed offer", "order": "your signed order",
            "order:unsigned": "your order (anonymous: unsigned)", "confirmation-text": "the text you confirmed",
            "payment": "the payment record and its proofs", "order-confirmation": "the seller's signed confirmation",
            "delivery": "the seller's signed delivery note", "registration": "the signed registration",
            "receipt": "the seller's signed receipt", "exchange": "the fair exchange's outcome",
            "decision": "the third party's signed decision", "delivered-content": "the information received",
            "contract-signature": "a signature on the contract", "replacement": "the third party's replacement",
            "payment-request": "the seller's changed payment request"}.get(kind, kind)


def _amount(offer: docs.ParsedOffer) -> str:
    return format_amount(offer.total, offer.currency)


# ---- the workflows -----------------------------------------------------------------------------------
def mail_order(b: Buyer, items: Sequence[tuple[str, int]], *, form: Mapping[str, Any] | None = None,
               attributes: DealAttributes | None = None, prefer: str | None = None,
               workflow: str = "mail-order") -> DealResult:
    """Mail-order retailing (also registration, whose delivery is the signed registration)."""
    attrs = attributes or deal_attributes(workflow)

    def body(r: _Run) -> DealResult:
        r.next("offer")
        deal, offer, vs = blocks.get_offer(b, workflow, items, attrs)
        r.deal = deal
        r.next("confirm")
        c = blocks.review_and_confirm(b, deal, offer, vs, form or {}, Action.ORDER_AND_PAY if offer.total
                                      else Action.ORDER, prefer)
        r.next("order")
        order = blocks.make_order(b, deal, offer, c)
        answer = blocks.send_order(b, deal, order)
        order_digest = docs.sha256_hex(order)
        record = None
        if answer.get("next") == "payment":
            r.next("payment", f"{_amount(offer)} with {c.payment.label}")
            record = blocks.pay(b, deal, offer, order_digest, c, answer)
            r.next("confirmation")
            conf = blocks.fetch_confirmation(b, deal, offer, order_digest, record)
        else:
            conf = b""
        r.next("delivery")
        note, content, _ = blocks.await_delivery(b, deal, offer, order_digest)
        what = "registered" if workflow == "registration" else "delivered"
        paid = f"paid {_amount(offer)} with {c.payment.label}; " if record else ""
        return DealResult(deal.deal_id, workflow, OutcomeStatus.SATISFIED, f"{paid}{what}: the seller's signed "
                          f"documents check", payment=record, content=content,
                          documents={"offer": offer.der, "order": order, "confirmation": conf, "delivery": note})
    return _Run(b, workflow).run(body)


def register(b: Buyer, sku: str, form: Mapping[str, Any], prefer: str | None = None) -> DealResult:
    """Registration with a service provider: a signed registration (membership) for the form and the fee."""
    return mail_order(b, [(sku, 1)], form=form, prefer=prefer, workflow="registration")


def buy_information(b: Buyer, sku: str, *, prefer: str | None = None, attributes: DealAttributes | None = None,
                    form: Mapping[str, Any] | None = None) -> DealResult:
    """On-line purchase of information: the payment fairly exchanged for the information and a receipt.
    ``form``: values a business application sent; the signed offer's form (none) must allow them."""
    attrs = attributes or deal_attributes("information")

    def body(r: _Run) -> DealResult:
        r.next("offer")
        deal, offer, vs = blocks.get_offer(b, "information", [(sku, 1)], attrs)
        r.deal = deal
        r.next("confirm")
        c = blocks.review_and_confirm(b, deal, offer, vs, form or {}, Action.ORDER_AND_PAY, prefer)
        r.next("order")
        order = blocks.make_order(b, deal, offer, c)
        r.next("exchange")
        data, receipt, status = blocks.exchange_information(b, deal, offer, order, c)
        how = "in one fair exchange" if status == "completed" else \
            "through the third party (the seller stopped; the exchange stayed fair)"
        return DealResult(deal.deal_id, "information", OutcomeStatus.SATISFIED,
                          f"paid {_amount(offer)} with {c.payment.label} and received the information "
                          f"({len(data)} bytes, SHA-256 as offered) with a signed receipt, {how}",
                          content=data, documents={"offer": offer.der, "order": order, "receipt": receipt})
    return _Run(b, "information").run(body)


def sign_contract(b: Buyer, sku: str, form: Mapping[str, Any] | None = None) -> DealResult:
    """Contract signing: both signatures on the contract, fairly exchanged (``form`` as for information)."""
    attrs = deal_attributes("contract")

    def body(r: _Run) -> DealResult:
        r.next("offer")
        deal, offer, vs = blocks.get_offer(b, "contract", [(sku, 1)], attrs)
        r.deal = deal
        r.next("confirm")
        c = blocks.review_and_confirm(b, deal, offer, vs, form or {}, Action.SIGN_CONTRACT)
        request = docs.canonical(docs.order_body(offer, payment="none", payment_label=c.payment.label,
                                                 confirmation_sha256=c.digest, scripted=c.scripted,
                                                 action=c.action.name, details=c.details, form=c.form,
                                                 attributes=deal.attributes))
        deal.keep("order:unsigned", request)
        r.next("exchange")
        seller_sig = blocks.exchange_contract(b, deal, offer, request, c)
        return DealResult(deal.deal_id, "contract", OutcomeStatus.SATISFIED,
                          "the contract is signed by both sides: you hold the seller's signature, it holds yours",
                          documents={"offer": offer.der, "seller-signature": seller_sig})
    return _Run(b, "contract").run(body)


WORKFLOW_FUNCTIONS: dict[str, Callable[..., DealResult]] = {
    "mail-order": mail_order, "information": buy_information, "registration": register, "contract": sign_contract}
