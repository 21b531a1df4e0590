"""The commerce layer's errors: a small hierarchy whose messages say what happened and what to do.

Why these classes: a workflow ends in one of a few ways the user (and the CLI's exit status) must
tell apart — the user said no, the seller's data failed a check before anything was given, the
seller misbehaved after the buyer gave something (a dispute, with evidence), or a service was not
reachable. Lower layers' exceptions are translated where a block catches them.
"""
from __future__ import annotations


class CommerceError(Exception):
    """Base of every commerce failure; one line a person can act on."""

    user_facing = True


class DealDeclined(CommerceError):
    """The user declined in the TINGUIN (offer, confirmation or PIN): nothing was signed or paid."""


class OfferRefused(CommerceError):
    """The seller's offer failed a check (signature, replay, inconsistency): nothing was given."""


class FormError(CommerceError):
    """An order form field is missing or malformed; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"order form, field {field!r}: {message}")
        self.field = field


class SellerRefused(CommerceError):
    """The seller refused a request (its words are in the message); nothing more was given."""


class DealAborted(CommerceError):
    """The buyer's client stopped the deal at a local decision before giving anything more."""


class Dispute(CommerceError):
    """The seller did not deliver what it owes after the buyer gave something; the evidence is archived
    under the deal id and ``semper judge`` rules on its bundle."""

    def __init__(self, message: str, deal_id: str) -> None:
        super().__init__(message)
        self.deal_id = deal_id


class ServiceUnavailable(CommerceError):
    """A service (the shop, the bank, the third party) did not answer; what that left is in the message."""
