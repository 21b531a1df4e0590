"""The ``shop-parts`` block: after a mall's delivery, each shop's part checked and kept as evidence.

A mall (``client/servers/mall.py``) takes one order and one payment and buys each shop's part for
the buyer. What the buyer can hold each shop to: the mall's signed ``mall-part`` statement (this
deal, this order, the shop, the items, the amount, the digest of the shop's delivery note) and the
shop's own signed delivery note, shipped to the buyer's address. The block checks both signatures,
that the mall's statements are signed by the key that signed the offer, that every ordered item is
in exactly one part, and that the parts add up to what the buyer paid; a failure after the payment
is a dispute, with the evidence kept.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from ...support.cms import EvidenceError
from ...support.verify import verify_statement
from ...transfer.statements import same_key
from .. import documents as docs
from ..buyer import Buyer
from ..errors import Dispute, SellerRefused
from ..shop_client import unb64

SEP = "--"


def check_parts(b: Buyer, deal: Any, offer: docs.ParsedOffer, order_digest: str, form: dict[str, str]) -> int:
    """Check every shop's part of a mall deal; returns how many shops took part."""
    def dispute(why: str) -> Dispute:
        deal.decide("shop-parts", "dispute", why)
        return Dispute(f"the mall's account of the shops' parts does not hold: {why}", deal.deal_id)
    try:
        answer = b.shop.get(f"/mall/parts/{deal.deal_id}")
    except SellerRefused as e:
        raise dispute(f"the mall shows no parts ({e})") from None
    parts = answer.get("parts")
    if not isinstance(parts, list) or not parts:
        raise dispute("no parts")
    total, items = 0, Counter[tuple[str, int]]()
    for p in parts:
        if not isinstance(p, dict):
            raise dispute("a part is not an object")
        statement_der = unb64(p.get("statement"), "mall part")
        note_der = unb64(p.get("delivery"), "shop delivery note")
        try:
            mine = verify_statement(statement_der, b.trust)
            note = verify_statement(note_der, b.trust)
        except EvidenceError as e:
            raise dispute(f"a part does not verify ({e})") from None
        body = mine.body
        if not same_key(mine.signer, offer.seller) or body.get("type") != "mall-part":
            raise dispute("a part statement is not the mall's")
        if (body.get("deal"), body.get("order_sha256")) != (deal.deal_id, order_digest):
            raise dispute("a part is for another deal or order")
        if body.get("shop_delivery_sha256") != docs.sha256_hex(note_der):
            raise dispute(f"the delivery note of {body.get('shop')} is not the one the mall's statement names")
        if not docs.has_role(note.signer, "seller") or note.body.get("ship_to") != form:
            raise dispute(f"{body.get('shop')}'s delivery note is not a seller's, or ships elsewhere")
        amount = body.get("amount")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise dispute("a part's amount is not a number")
        total += amount
        for line in body.get("items") or []:
            items[(str(line[0]), int(line[1]))] += 1
        deal.keep_statement(statement_der, "mall-part")
        deal.keep_statement(note_der, "delivery")
    if total != offer.total:
        raise dispute(f"the shops were paid {total} in all, you paid {offer.total}")
    ordered = Counter((x.sku.split(SEP, 1)[-1], x.quantity) for x in offer.lines)
    if items != ordered:
        raise dispute("the shops' parts do not cover exactly the items you ordered")
    deal.decide("shop-parts", "satisfied", f"{len(parts)} shop(s): each part signed by its shop, "
                                           f"{total} paid to them in all")
    return len(parts)
