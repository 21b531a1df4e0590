"""The payment layer's errors: one small hierarchy, each message saying what to do next.

Why a hierarchy of its own: the layers above (exchange, commerce, the CLI) must tell "try another
module" from "the bank said no" from "the outcome is unknown, retry with the same key" without
parsing text. Card status words and HTTP codes never appear in these messages; the lower layers'
exceptions are translated where a module catches them.
"""
from __future__ import annotations

from semper.hardware.errors import SemperError


class PaymentError(SemperError):
    """Base of every payment failure; the message is one line a person can act on. A payee's service
    answers it as a refused payment (422): the message was understood, the payment is not accepted."""

    http_status = 422
    code = "payment_refused"


class NegotiationError(PaymentError):
    """Payer and payee share no module, instrument and currency that fit the terms."""


class ModuleNotFound(PaymentError):
    """A module named in an offer or a record is not installed here."""


class InstrumentError(PaymentError):
    """The chosen instrument cannot pay (no card, wrong currency, not enough funds, blocked PIN)."""


class InsufficientFunds(InstrumentError):
    """The instrument or account holds less than the amount."""


class PaymentRefused(PaymentError):
    """The other party or the bank refused; ``code`` is the stable reason (e.g. double_spend), which a
    payee's service passes on as its own refusal's code."""

    def __init__(self, message: str, code: str = "refused", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status              # the bank's HTTP status when the bank refused; 0 otherwise


class OutcomeUnknown(PaymentError):
    """The request may or may not have taken effect (connection lost); retrying is safe."""

    http_status = 503
    code = "outcome_unknown"


class UntrustedService(PaymentError):
    """The bank's TLS certificate is not vouched for by the pinned CA root: nothing was sent to it, and
    asking again will not help (check the bank URL and --bank-tls-root)."""

    http_status = 502
    code = "untrusted_service"


class NotRevocable(PaymentError):
    """The module's payments cannot be refunded (cash-like: the payee pays back with a new payment)."""


class ProtocolError(PaymentError):
    """A message from the other side is malformed, forged, or out of order."""

    http_status = 400
    code = "bad_payment_message"
