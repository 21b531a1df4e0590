"""The buyer's business application as a function: what ``semper buy`` and ``semper demo`` call.

It may only *ask*: it names the shop, the workflow, the items, the form values and a preferred
payment module. Every decision is taken in the TINGUIN (:func:`client.tinguin.api.run_deal`:
interactive in a terminal, otherwise a scripted user that says so), every PIN goes from the
TINGUIN to the card, and the result comes back as a :class:`~.workflows.DealResult`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..tinguin.api import Script, TrustedUI, run_deal
from .deal import deal_attributes
from .setup import BuyerConfig, open_buyer
from .workflows import DealResult, buy_information, mail_order, register, sign_contract


@dataclass(frozen=True)
class Purchase:
    """What the business application asks for."""

    workflow: str = "mail-order"
    items: Sequence[tuple[str, int]] = ()
    form: Mapping[str, str] = field(default_factory=dict)
    prefer: str | None = None
    anonymous: bool = False
    service: str | None = None          # a commerce service downloaded from the shop (then ``workflow`` is unused)


def run_workflow(ui: TrustedUI, cfg: BuyerConfig, card: Any, purchase: Purchase) -> DealResult:
    """One deal in an open TINGUIN: the buyer's client is built over ``ui`` and closed afterwards."""
    session = open_buyer(cfg, ui, card)
    try:
        b = session.buyer
        if purchase.service is not None:
            from .services.download import Decisions, load_certifiers, run_downloaded
            from .services.interpreter import Request
            return run_downloaded(b, purchase.service, Request(list(purchase.items), purchase.form, purchase.prefer),
                                  anonymous=purchase.anonymous, root_pem=cfg.ca_root_pem,
                                  certifiers=load_certifiers(cfg.certifiers), decisions=Decisions(cfg.prefs_path))
        if purchase.workflow == "mail-order":
            return mail_order(b, list(purchase.items), form=purchase.form, prefer=purchase.prefer,
                              attributes=deal_attributes("mail-order", purchase.anonymous))
        sku = purchase.items[0][0] if purchase.items else ""
        if purchase.workflow == "information":
            return buy_information(b, sku, prefer=purchase.prefer, form=purchase.form)
        if purchase.workflow == "registration":
            return register(b, sku, purchase.form, prefer=purchase.prefer)
        return sign_contract(b, sku, purchase.form)
    finally:
        session.close()


def workflow_for(cfg: BuyerConfig, card_opener: Callable[[], Any], purchase: Purchase
                 ) -> Callable[[TrustedUI], DealResult]:
    """The deal as the TINGUIN's worker thread runs it: the card opened in that thread, closed after."""
    def workflow(ui: TrustedUI) -> DealResult:
        card = card_opener()
        try:
            return run_workflow(ui, cfg, card, purchase)
        finally:
            close = getattr(card, "close", None)
            if close is not None:
                close()
    return workflow


def buy(cfg: BuyerConfig, card_opener: Callable[[], Any], purchase: Purchase, *, interactive: bool | None = None,
        script: Script | None = None, say: Callable[[str], None] | None = None) -> DealResult:
    """Run one deal through the TINGUIN (``card_opener`` is called inside the TINGUIN's worker thread)."""
    return run_deal(workflow_for(cfg, card_opener, purchase), interactive=interactive, script=script or Script(),
                    say=say)
