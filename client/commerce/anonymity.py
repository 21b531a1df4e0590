"""Anonymous deals end to end: e-cash withdrawn through the TINGUIN, and deals on fresh connections.

What holds against whom (docs/threat-model.md, "Anonymity"): the *seller* sees no certificate, no
signature, no account, no card number and no name (the order is unsigned canonical JSON, the form a
pick-up point, the payment blind-signed coins); the *bank* sees who withdraws and which coins are
deposited, but the coins it signed blind share nothing it recorded at the withdrawal; the *network*
gets no client certificate, no cookie back and one User-Agent for all clients (``support/channels.py``),
and each anonymous deal runs on connections of its own: :func:`on_fresh_connections` closes the shop's
kept-alive connections before and after, so two deals never share a TLS connection or session. What
it does not hide: the buyer's IP address (use an anonymising network), timing, and what the buyer
chooses to type into a form.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from semper.hardware.errors import SemperError

from ..support.money import format_amount
from ..tinguin.model import DealOutcome, OutcomeStatus, ProgressStep, StepState
from .buyer import Buyer

T = TypeVar("T")


def on_fresh_connections(b: Buyer, deal: Callable[[], T]) -> T:
    """Run ``deal`` on connections of its own: nothing of an earlier deal's connection carries over,
    and nothing of this one's is left for a later deal."""
    b.shop.close()
    try:
        return deal()
    finally:
        b.shop.close()


@dataclass(frozen=True)
class Withdrawn:
    amount: int
    currency: int
    wallet_balance: int
    status: OutcomeStatus
    summary: str


def withdraw(b: Buyer, amount: int, currency: int) -> Withdrawn:
    """Withdraw e-cash for anonymous deals through the TINGUIN: the progress and the result are shown
    there, and the card PIN for the signed withdrawal request is asked there (the payment manager's PIN
    path is the TINGUIN's). The bank sees the account and the amount, never the coins' serials."""
    from ..payment.modules.ecash import EcashModule
    module = b.payments.module_as("ecash", EcashModule)
    b.ui.progress(ProgressStep("withdraw", f"withdraw {format_amount(amount, currency)} as e-cash", StepState.RUNNING))
    balance: int | None = None
    try:
        held = module.withdraw(amount, currency)
    except SemperError as e:                                    # a refusal of the bank, the card or the wallet
        status, summary = OutcomeStatus.FAILED, f"the withdrawal failed: {e}"
    else:
        status, balance = OutcomeStatus.SATISFIED, held
        summary = (f"withdrew {format_amount(amount, currency)} as blind-signed coins; the wallet holds "
                   f"{format_amount(held, currency)}")
    b.ui.progress(ProgressStep("withdraw", "withdraw e-cash",
                               StepState.DONE if status is OutcomeStatus.SATISFIED else StepState.FAILED))
    b.ui.result(DealOutcome("withdrawal", status, summary))
    return Withdrawn(amount, currency, balance if balance is not None else -1, status, summary)


__all__ = ["Withdrawn", "on_fresh_connections", "withdraw"]
