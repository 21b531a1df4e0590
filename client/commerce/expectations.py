"""What each side of an information purchase expects of the fair exchange: the offered data, described
by its digest and length, for a receipt that names it. The buyer's blocks and the shop build the same
descriptions from the same offer line, so the exchange layer can compare them."""
from __future__ import annotations

from typing import Any

from ..transfer.information import describe
from ..transfer.items import Description, PackageDescription
from . import documents as docs
from .catalogue import CatalogueItem


def information_description(item: CatalogueItem | docs.OfferLine) -> Description:
    if isinstance(item, CatalogueItem):
        assert item.content is not None
        return describe(item.content, item.name or item.sku)
    terms: dict[str, Any] = {"sha256": item.sha256, "length": item.length}
    if item.name:
        terms["name"] = item.name
    return Description("information", terms)


def information_expectation(line: docs.OfferLine, deal_id: str, order_digest: str, amount: int, currency: int
                            ) -> PackageDescription:
    """What the buyer expects in the information exchange: exactly the offered data and a receipt for it."""
    receipt = docs.receipt_body(deal_id, order_digest, line, amount, currency)
    fields = {k: v for k, v in receipt.items() if k != "type"}
    return PackageDescription((information_description(line),
                               Description("statement", {"statement_type": "receipt", "fields": fields})))
