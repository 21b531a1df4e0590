"""The transfer layer's errors: one base class, a few precise kinds, messages a person can act on."""
from __future__ import annotations

from semper.hardware.errors import SemperError


class TransferError(SemperError):
    """Base of every transfer-layer failure (an item that does not do what it should: 422)."""

    http_status = 422
    code = "bad_item"


class MalformedItem(TransferError):
    """An item, package or description does not have the form of its type (bad JSON, wrong fields)."""

    http_status = 400
    code = "malformed_item"


class UnknownItemType(TransferError):
    """No manager is registered for an item type."""


class ItemMismatch(TransferError):
    """A received item is well formed but is not what its description promised (or is forged)."""


class UnsupportedAttribute(TransferError):
    """A security attribute was asked for that this item type cannot provide (e.g. anonymity with a signature)."""


class NotGeneratable(TransferError):
    """The third party cannot produce this item: the description or commitment lacks what it needs."""


class CommitmentFalse(TransferError):
    """The originator's signed commitment does not yield the promised item (e.g. an escrowed key that
    does not decrypt the data to the committed digest). Found by the third party, it is evidence
    against the originator."""


class PaymentFailed(TransferError):
    """The payment module could not pay (no funds, card refused, reader gone); nothing was debited
    unless the message says otherwise."""
