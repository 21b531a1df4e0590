"""One deal's run: its result, its progress lines in the TINGUIN and how its endings become outcomes.

Moved here from ``workflows.py`` when the workflows became service documents (issue 16): the
interpreter runs every deal through :class:`Run`, built-in or downloaded alike.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from semper.hardware import errors as hw

from ...payment.model import Record
from ...tinguin.model import DealOutcome, EvidenceItem, OutcomeStatus, StepState
from .. import blocks
from ..buyer import Buyer
from ..deal import Deal
from ..errors import CommerceError, DealAborted, DealDeclined, Dispute, OfferRefused


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
    periods: tuple[DealResult, ...] = ()                         # a repeating service: each period's deal

    @property
    def ok(self) -> bool:
        return self.status is OutcomeStatus.SATISFIED


class Run:
    """One deal of a service: progress lines in the TINGUIN and the mapping of endings to outcomes.

    ``steps``: (key, title) of the progress lines, from the service document."""

    def __init__(self, b: Buyer, workflow: str, steps: Sequence[tuple[str, str]]) -> None:
        self.b, self.workflow = b, workflow
        self.steps = list(steps)
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

    def run(self, body: Callable[[Run], DealResult]) -> DealResult:
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
