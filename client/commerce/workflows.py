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

Each workflow is a service document (``services/documents/*.json``) run by the interpreter
(:mod:`.services.interpreter`) with the same blocks as before; these functions are its entry points.
Every workflow returns a :class:`DealResult` and shows its outcome, with the evidence, in the TINGUIN.
The business application only chooses the workflow, the items and the form values; the user's
decisions are taken in the TINGUIN, and the deal's attributes are honoured by every block.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .buyer import Buyer
from .deal import DealAttributes, deal_attributes
from .services import builtin, interpreter
from .services.interpreter import Request
from .services.run import DealResult, Run, evidence_of

__all__ = ["STEPS", "WORKFLOW_FUNCTIONS", "DealResult", "Run", "buy_information", "evidence_of", "mail_order",
           "register", "sign_contract"]

#: the progress lines of each built-in workflow, as its document names them
STEPS = {name: [(interpreter.progress_key(s.block), s.title) for s in builtin.document(name).steps]
         for name in builtin.NAMES}


def mail_order(b: Buyer, items: Sequence[tuple[str, int]], *, form: Mapping[str, Any] | None = None,
               attributes: DealAttributes | None = None, prefer: str | None = None,
               workflow: str = "mail-order", on_deal: Callable[[str], None] | None = None) -> DealResult:
    """Mail-order retailing (also registration, whose delivery is the signed registration). ``on_deal``:
    see :class:`~.services.interpreter.Request`."""
    return interpreter.run(b, builtin.document(workflow), Request(list(items), form or {}, prefer,
                                                                  attributes or deal_attributes(workflow), on_deal))


def register(b: Buyer, sku: str, form: Mapping[str, Any], prefer: str | None = None) -> DealResult:
    """Registration with a service provider: a signed registration (membership) for the form and the fee."""
    return mail_order(b, [(sku, 1)], form=form, prefer=prefer, workflow="registration")


def buy_information(b: Buyer, sku: str, *, prefer: str | None = None, attributes: DealAttributes | None = None,
                    form: Mapping[str, Any] | None = None) -> DealResult:
    """On-line purchase of information: the payment fairly exchanged for the information and a receipt.
    ``form``: values a business application sent; the signed offer's form (none) must allow them."""
    return interpreter.run(b, builtin.document("information"),
                           Request([(sku, 1)], form or {}, prefer, attributes or deal_attributes("information")))


def sign_contract(b: Buyer, sku: str, form: Mapping[str, Any] | None = None) -> DealResult:
    """Contract signing: both signatures on the contract, fairly exchanged (``form`` as for information)."""
    return interpreter.run(b, builtin.document("contract"), Request([(sku, 1)], form or {}, None,
                                                                    deal_attributes("contract")))


WORKFLOW_FUNCTIONS: dict[str, Callable[..., DealResult]] = {
    "mail-order": mail_order, "information": buy_information, "registration": register, "contract": sign_contract}
