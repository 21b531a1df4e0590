"""A TrustedUI that answers by a fixed policy: for measurements and tests, never for a person's deals.

Why it exists: the benchmark measures the purchase, not a person reading a screen, and the tests
run dozens of deals. It implements the same :class:`client.tinguin.api.TrustedUI` protocol as the
TINGUIN: it renders the *exact* confirmation text with the TINGUIN's own renderer and returns its
digest, it hands the PIN to the card session's ``verify_pin`` (so the card counts tries as always),
and every :class:`~client.tinguin.model.Confirmation` it returns says ``scripted=True``. It holds the
test PIN it was given, which is exactly why no user-facing command uses it (``semper buy`` and
``semper demo`` use the TINGUIN, interactive or through its scripted user on the real screens).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from semper.client.tinguin.confirmation import digest, render
from semper.client.tinguin.model import (
    Confirmation,
    ConfirmationRequest,
    DealOutcome,
    PaymentOption,
    PinOutcome,
    PinStatus,
    ProgressStep,
    VerifiedOffer,
)
from semper.hardware import errors as hw


@dataclass
class PolicyUI:
    pin: bytes | None = None                  # None: every PIN request is cancelled
    payment: str | None = None                # the module to choose (None: the first option)
    accept_offer: bool = True
    accept: bool = True
    offers: list[VerifiedOffer] = field(default_factory=list)
    confirmations: list[str] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)           # the purposes asked for
    steps: list[ProgressStep] = field(default_factory=list)
    outcomes: list[DealOutcome] = field(default_factory=list)
    allow_service: bool = True
    services: list[Any] = field(default_factory=list)        # the downloaded services shown (ServiceView)

    def review_offer(self, offer: VerifiedOffer) -> PaymentOption | None:
        self.offers.append(offer)
        if not self.accept_offer or not offer.payment_options:
            return None
        if self.payment is None:
            return offer.payment_options[0]
        return next((o for o in offer.payment_options if o.module == self.payment), None)

    def confirm(self, request: ConfirmationRequest) -> Confirmation:
        text = render(request)
        self.confirmations.append(text)
        return Confirmation(self.accept, text, digest(text), scripted=True)

    def ask_pin(self, purpose: str, deliver: Callable[[bytes], None], *,
                pad: Callable[[], None] | None = None) -> PinOutcome:
        self.pins.append(purpose)
        try:
            if pad is not None:
                pad()
            elif self.pin is None:
                return PinOutcome(PinStatus.CANCELLED, "cancelled by the policy")
            else:
                deliver(self.pin)
        except hw.WrongPinError as e:
            return PinOutcome(PinStatus.BLOCKED if e.tries_left == 0 else PinStatus.FAILED, str(e))
        except hw.PinBlockedError as e:
            return PinOutcome(PinStatus.BLOCKED, str(e))
        except hw.HardwareError as e:
            return PinOutcome(PinStatus.FAILED, str(e))
        return PinOutcome(PinStatus.VERIFIED)

    def progress(self, step: ProgressStep) -> None:
        self.steps.append(step)

    def result(self, outcome: DealOutcome) -> None:
        self.outcomes.append(outcome)

    def review_service(self, view: Any) -> bool:
        self.services.append(view)
        return self.allow_service
