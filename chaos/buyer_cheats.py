"""A cheating buyer: what a buyer's own program could try against an honest shop and judge.

Why these three: each is something a dishonest buyer can do with nothing but its own client and
evidence, and each has a party that must not lose by it:

* ``replayed_order``: for a new offer, send an order the buyer signed for an earlier deal (hoping
  the shop ships against an old order and payment). The shop must refuse it and deliver nothing.
* ``unpaid_delivery``: order properly (signed on the card, after the TINGUIN), then skip the
  payment and ask for the confirmation and the delivery. The shop must refuse both.
* ``hidden_delivery``: after a deal the shop fulfilled, claim non-delivery by giving the judge a
  bundle without the delivery note. The judge must not rule for the buyer on it (the bundle's hash
  chain shows an entry missing).
"""
from __future__ import annotations

import json
import secrets
import zipfile
from pathlib import Path
from typing import Any

BUYER_CHEATS = ("replayed_order", "unpaid_delivery", "hidden_delivery")
ADDRESS = {"name": "Bob Buyer", "street": "1 Main Street", "postcode": "12345", "city": "Teatown", "country": "DE"}


def attempt(market: Any, kind: str, deals: list[str], bundles: Path) -> tuple[str, list[str]]:
    """Try the cheat; (what was done, violations: what the cheat won)."""
    if kind == "replayed_order":
        return _replayed_order(market)
    if kind == "unpaid_delivery":
        return _unpaid_delivery(market)
    if kind == "hidden_delivery":
        return _hidden_delivery(market, deals, bundles)
    raise ValueError(f"unknown buyer cheat {kind!r}")


def _refused(call: Any) -> tuple[bool, Any]:
    from semper.client.commerce.errors import SellerRefused
    try:
        return False, call()
    except SellerRefused as e:
        return True, e


def _replayed_order(market: Any) -> tuple[str, list[str]]:
    from semper.client.commerce.shop_client import b64
    b = market.buyer
    old = [e for e in b.archive.entries() if e.kind == "statement:order"]
    if not old:
        return "no earlier signed order to replay", []
    answer = b.shop.post("/deals", {"workflow": "mail-order", "nonce": secrets.token_hex(16), "anonymous": False,
                                    "items": [{"sku": "teapot", "quantity": 1}]})
    deal = str(answer["deal"])
    out = []
    # with the new deal's genuine offer and tag: the shop writes the deal only for an order of that offer
    refused, got = _refused(lambda: b.shop.post("/deals/order", {"deal": deal, "order": b64(old[-1].content),
                                                                 "offer": answer["offer"],
                                                                 "offer_tag": answer.get("offer_tag", "")}))
    if not refused:
        out.append(f"the shop accepted an order signed for another deal ({got})")
    refused, got = _refused(lambda: b.shop.post("/deals/delivery", {"deal": deal}))
    if not refused and got.get("shipped"):
        out.append("the shop delivered against a replayed order")
    # a standing offer (mail order) names no deal: the old order under a new deal id of the buyer's making,
    # with the shop's genuine standing offer and tag; the order names its own deal, and is refused for this one
    from semper.client.commerce.deal import new_deal_id
    standing = b.shop.post("/offer", {"workflow": "mail-order", "anonymous": False,
                                      "items": [{"sku": "teapot", "quantity": 1}]})
    fresh = new_deal_id()
    refused, got = _refused(lambda: b.shop.post("/deals/order", {"deal": fresh, "order": b64(old[-1].content),
                                                                 "offer": standing["offer"],
                                                                 "offer_tag": standing.get("offer_tag", "")}))
    if not refused:
        out.append(f"the shop accepted, on its standing offer, an order signed for another deal ({got})")
    return f"replayed the order of deal {old[-1].deal_id[:8]} for new deals {deal[:8]} and {fresh[:8]}", out


def _unpaid_delivery(market: Any) -> tuple[str, list[str]]:
    from semper.client.commerce import blocks
    from semper.client.commerce.deal import deal_attributes
    from semper.client.tinguin.model import Action
    b = market.buyer
    saved = market.ui.payment
    market.ui.payment = "card-purse"
    try:
        deal, offer, vs = blocks.get_offer(b, "mail-order", [("teapot", 1)], deal_attributes("mail-order"))
        c = blocks.review_and_confirm(b, deal, offer, vs, ADDRESS, Action.ORDER_AND_PAY)
        order = blocks.make_order(b, deal, offer, c)
        blocks.send_order(b, deal, offer, order)
        deal.close()
    finally:
        market.ui.payment = saved
    out = []
    refused, got = _refused(lambda: b.shop.post("/deals/confirm", {"deal": deal.deal_id}))
    if not refused:
        out.append("the shop confirmed an order that was never paid")
    refused, got = _refused(lambda: b.shop.post("/deals/delivery", {"deal": deal.deal_id}))
    if not refused and got.get("shipped"):
        out.append("the shop delivered an order that was never paid")
    return f"signed order for deal {deal.deal_id[:8]}, no payment, then asked for confirmation and delivery", out


def _hidden_delivery(market: Any, deals: list[str], bundles: Path) -> tuple[str, list[str]]:
    from semper.client.commerce.judge import judge_deal
    from semper.client.support.trust import TrustStore
    b, w = market.buyer, market.world
    fulfilled = [d for d in deals if any(e.kind in ("statement:delivery", "statement:registration")
                                         for e in b.archive.entries(d))]
    if not fulfilled:
        return "no fulfilled deal in this run to deny", []
    deal = fulfilled[-1]
    bundles.mkdir(parents=True, exist_ok=True)
    honest = b.archive.export(deal, bundles / f"{deal}-honest.zip")
    forged = strip_entries(honest, bundles / f"{deal}-hidden.zip", ("statement:delivery", "statement:registration"))
    ruling = judge_deal(forged, TrustStore([w.ca_root]), w.scheme.root_cert)
    out = []
    if ruling.bundle_ok and ruling.seller_owes:
        out.append(f"a bundle without the delivery note makes the judge rule for the buyer: {ruling.ruling}")
    said = ruling.ruling if ruling.bundle_ok else f"the bundle does not verify ({'; '.join(ruling.problems)[:80]})"
    return f"claimed non-delivery of deal {deal[:8]} with a bundle lacking the delivery note; the judge: {said}", out


def strip_entries(src: Path, dst: Path, kinds: tuple[str, ...]) -> Path:
    """A copy of a bundle with the entries of these kinds left out (manifest and files)."""
    with zipfile.ZipFile(src) as z:
        manifest = json.loads(z.read("manifest.json"))
        drop = {e["file"] for e in manifest["entries"] if e["kind"] in kinds}
        manifest["entries"] = [e for e in manifest["entries"] if e["file"] not in drop]
        with zipfile.ZipFile(dst, "w") as out:
            for name in z.namelist():
                if name == "manifest.json" or name in drop:
                    continue
                out.writestr(name, z.read(name))
            out.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return dst
