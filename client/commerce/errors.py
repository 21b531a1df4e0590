"""The commerce layer's errors: a small hierarchy whose messages say what happened and what to do.

Why these classes: a workflow ends in one of a few ways the user (and the CLI's exit status) must
tell apart — the user said no, the seller's data failed a check before anything was given, the
seller misbehaved after the buyer gave something (a dispute, with evidence), or a service was not
reachable. Lower layers' exceptions are translated where a block catches them.

The shop raises the same hierarchy; each class carries the status its service answers with (a
request the shop cannot take 400, a deal it does not know 404, a request that does not fit the
deal's state 409, a payment it does not accept 422, no room for now 503).
"""
from __future__ import annotations

from semper.hardware.errors import SemperError


class CommerceError(SemperError):
    """Base of every commerce failure; one line a person can act on. At the shop: the request is
    not one it can take (400)."""

    http_status = 400
    code = "refused"


class DealDeclined(CommerceError):
    """The user declined in the TINGUIN (offer, confirmation or PIN): nothing was signed or paid."""


class OfferRefused(CommerceError):
    """The seller's offer failed a check (signature, replay, inconsistency): nothing was given."""

    http_status = 422
    code = "offer_refused"


class FormError(CommerceError):
    """An order form field is missing or malformed; ``field`` names it. The user's input: exit 2."""

    exit_status = 2
    code = "bad_form"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"order form, field {field!r}: {message}")
        self.field = field


class SellerRefused(CommerceError):
    """The seller refused a request (its words are in the message); nothing more was given.
    ``seller_code``: the refusal's code as the shop sent it (``conflict``: not in that state yet)."""

    http_status = 422
    code = "seller_refused"

    def __init__(self, message: str, seller_code: str | None = None) -> None:
        super().__init__(message)
        self.seller_code = seller_code


class DealAborted(CommerceError):
    """The buyer's client stopped the deal at a local decision before giving anything more."""


class Dispute(CommerceError):
    """The seller did not deliver what it owes after the buyer gave something; the evidence is archived
    under the deal id and ``semper judge`` rules on its bundle."""

    def __init__(self, message: str, deal_id: str) -> None:
        super().__init__(message)
        self.deal_id = deal_id


class ServiceUnavailable(CommerceError):
    """A service (the shop, the bank, the third party) did not answer, or (at the shop) has no room for
    the request now; what that left is in the message."""

    http_status = 503
    code = "unavailable"


class NoSuchDeal(CommerceError):
    """The shop does not know the deal (it expired, or it never offered it)."""

    http_status = 404
    code = "unknown_deal"


class DealConflict(CommerceError):
    """The request does not fit the deal's state: another order for an ordered deal, a confirmation or
    delivery before the payment, a payment before the order. Nothing changed."""

    http_status = 409
    code = "conflict"


class PaymentNotAccepted(CommerceError):
    """The shop's payment manager refused the buyer's payment message; nothing was taken."""

    http_status = 422
    code = "payment_refused"
