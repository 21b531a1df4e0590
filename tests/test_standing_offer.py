"""Standing offers (issue 14, item 4): a mail-order offer that names no deal and answers no nonce, signed once
per kind of purchase and kept by each shop process (``Shop.standing_offer``), kept by the buyer's client while
it is valid; the order names a deal id of the buyer's (docs/commerce.md, "Standing offers").

What must hold (docs/threat-model.md, "Standing offers"): an order on an expired standing offer, on an offer
the shop did not sign or tag, or for other items or another price is refused and nothing is written; two
different orders with one deal id: the second is refused (no second debit, the first deal untouched), the same
order sent again gets the same answer; a deal id not in the shop's format is refused; the cap of unpaid orders
per buyer and the shop's room for deals hold at the order, there being no offer request per deal."""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from test_stateless_offer import _anonymous_order, _kinds, _rows, _signed_order, open_shop, pki

from semper.client.commerce import documents as docs
from semper.client.commerce.catalogue import CatalogueItem
from semper.client.commerce.deal import new_deal_id
from semper.client.commerce.errors import CommerceError, DealConflict, OfferRefused, ServiceUnavailable
from semper.client.servers import shop as shop_mod
from semper.client.servers.shop import OfferExpired, OfferNotOurs, Shop
from semper.client.servers.shop_store import TooManyUnpaidOrders
from semper.client.support.cms import sign_statement
from semper.client.support.verify import verify_statement


def _standing(shop: Shop, der: bytes, deal_id: str | None = None) -> docs.ParsedOffer:
    """The buyer's reading of a standing offer, for a deal of its own."""
    return docs.parse_offer(verify_statement(der, shop.trust), deal_id=deal_id or new_deal_id(), nonce=None)


def test_a_standing_offer_is_signed_once_and_taken_by_many_orders_of_any_worker(
        open_shop: Callable[..., Shop], pki: dict[str, Any]) -> None:
    one, two = open_shop(), open_shop()                  # two workers of one shop
    der, tag = one.standing_offer("mail-order", [("teapot", 1)], False)
    body = verify_statement(der, one.trust).body
    assert docs.is_standing(body) and "deal" not in body and "nonce" not in body
    assert one.counters["standing_signed"] == 1
    assert one.standing_offer("mail-order", [("teapot", 1)], False) == (der, tag)   # kept: nothing signed again
    assert one.counters["standing_signed"] == 1 and one.counters["signatures"] == 1
    other, _ = one.standing_offer("mail-order", [("teapot", 2)], False)             # other quantities: another
    assert other != der and one.counters["standing_signed"] == 2
    assert _rows(one) == 0                               # nothing written

    deals = []
    for worker in (one, two, two):                       # three deals on one offer, taken by either worker
        offer = _standing(one, der)
        order = _signed_order(offer, pki)
        answer = worker.order(offer.deal_id, order, None, der, tag)
        assert answer["next"] == "payment" and answer["terms"]["amount"] == offer.total
        deals.append((offer.deal_id, order, answer))
        assert _kinds(worker, offer.deal_id) == ["statement:offer", "statement:order"]
    assert _rows(one) == 3 and one.counters["orders_on_standing"] == 1 and two.counters["orders_on_standing"] == 2
    # a retransmission of an order: the same answer, nothing written, no second payment
    for deal_id, order, answer in deals:
        assert one.order(deal_id, order, None, der, tag) == answer
    assert _rows(one) == 3


def test_two_orders_with_one_deal_id_the_second_is_refused_and_the_first_deal_untouched(
        open_shop: Callable[..., Shop], pki: dict[str, Any]) -> None:
    shop = open_shop()
    der, tag = shop.standing_offer("mail-order", [("teapot", 1)], False)
    deal_id = new_deal_id()
    first = _signed_order(_standing(shop, der, deal_id), pki)
    answer = shop.order(deal_id, first, None, der, tag)
    before = shop.find(deal_id, fresh=True)
    assert before is not None
    # another order (another form: other bytes) for the same deal id, on the same offer or on another one
    second = _anonymous_order(_standing(shop, der, deal_id))
    der2, tag2 = shop.standing_offer("mail-order", [("teapot", 2)], False)
    third = _signed_order(_standing(shop, der2, deal_id), pki)
    for order, (d, t) in ((second, (der, tag)), (third, (der2, tag2))):
        with pytest.raises(DealConflict, match="another order"):
            shop.order(deal_id, order, None, d, t)
    after = shop.find(deal_id, fresh=True)
    assert after is not None and after.order_bytes == first and after.version == before.version
    assert after.terms is not None and before.terms is not None and after.terms.payment_id == before.terms.payment_id
    assert shop.order(deal_id, first, None, der, tag) == answer          # the first, sent again: its answer
    assert _rows(shop) == 1


def test_an_order_naming_a_deal_id_not_in_the_shops_format_is_refused(open_shop: Callable[..., Shop],
                                                                        pki: dict[str, Any]) -> None:
    shop = open_shop()
    der, tag = shop.standing_offer("mail-order", [("teapot", 1)], False)
    for bad in ("AB" * 16, "ab" * 15, "ab" * 17, "zz" * 16, "", "../" + "a" * 29):
        with pytest.raises(CommerceError, match="32 lower-case hex"):
            shop.order(bad, b"{}", None, der, tag)
    # and the buyer's client never makes one: a standing offer is read only with a deal id in the format
    with pytest.raises(OfferRefused, match="32 hex"):
        docs.parse_offer(verify_statement(der, shop.trust), deal_id="AB" * 16, nonce=None)
    assert _rows(shop) == 0


def test_an_order_on_an_expired_standing_offer_is_refused(open_shop: Callable[..., Shop], pki: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    shop = open_shop()
    der, tag = shop.standing_offer("mail-order", [("teapot", 1)], False)
    offer = _standing(shop, der)
    order = _signed_order(offer, pki)
    later = dt.datetime.now(dt.UTC) + shop.standing_validity + dt.timedelta(seconds=2)

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return later
    monkeypatch.setattr(shop_mod.dt, "datetime", Later)
    for s in (shop, open_shop()):                        # the process that signed it, and one that did not
        with pytest.raises(OfferExpired, match="expired"):
            s.order(offer.deal_id, order, None, der, tag)
    assert _rows(shop) == 0


def test_a_standing_offer_is_signed_afresh_when_half_its_validity_is_gone_or_its_terms_changed(
        open_shop: Callable[..., Shop], monkeypatch: pytest.MonkeyPatch) -> None:
    shop = open_shop()
    der, tag = shop.standing_offer("mail-order", [("teapot", 1)], False)
    half = dt.datetime.now(dt.UTC) + shop.standing_validity * shop_mod.STANDING_RENEW + dt.timedelta(seconds=2)

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return half
    monkeypatch.setattr(shop_mod.dt, "datetime", Later)
    der2, _ = shop.standing_offer("mail-order", [("teapot", 1)], False)
    assert der2 != der and shop.counters["standing_signed"] == 2
    monkeypatch.undo()
    # a new price: the kept offer is not given out again, and an order on it is refused
    item = shop.catalogue.items["teapot"]
    shop.catalogue.items["teapot"] = CatalogueItem(**{**item.__dict__, "unit_price": item.unit_price + 100})
    der3, _ = shop.standing_offer("mail-order", [("teapot", 1)], False)
    assert der3 not in (der, der2) and _standing(shop, der3).total == item.unit_price + 100


def test_orders_on_offers_not_the_shops_or_for_other_items_or_prices_are_refused(
        open_shop: Callable[..., Shop], pki: dict[str, Any]) -> None:
    shop, other = open_shop(), open_shop("other")        # another shop: the same key pair, its own offer key
    der, tag = shop.standing_offer("mail-order", [("teapot", 1)], False)
    o_der, o_tag = other.standing_offer("mail-order", [("teapot", 1)], False)
    offer = _standing(shop, der)
    order = _signed_order(offer, pki)
    with pytest.raises(OfferNotOurs, match="tag does not verify"):   # another shop's offer, with its own tag
        shop.order(offer.deal_id, _signed_order(_standing(other, o_der, offer.deal_id), pki), None, o_der, o_tag)
    for forged in ("00" * 32, "", o_tag, None):                       # not tagged by this shop
        with pytest.raises(OfferNotOurs, match="tag does not verify"):
            shop.order(offer.deal_id, order, None, der, forged)
    at = der.index(b'"total":')                                      # another price, the genuine tag
    altered = der[:at + 8] + (b"1" if der[at + 8:at + 9] != b"1" else b"2") + der[at + 9:]
    with pytest.raises(OfferNotOurs, match="tag does not verify"):
        shop.order(offer.deal_id, order, None, altered, tag)
    # an order for other items or another total than the genuine offer it names
    two = docs.order_body(offer, payment="stub", payment_label="stub", confirmation_sha256="ab" * 32, scripted=False,
                          action="ORDER_AND_PAY", details=(), attributes=offer.attributes, form={})
    for change in ({"items": [{"sku": "teapot", "quantity": 2}]}, {"total": offer.total - 1}):
        body = {**two, **change, "form": {"name": "Bob Buyer", "street": "1 Main St", "postcode": "12345",
                                          "city": "Town", "country": "DE"}}
        with pytest.raises(CommerceError, match="items, total or currency"):
            shop.order(offer.deal_id, sign_statement(pki["person"], body), None, der, tag)
    # a standing offer made for a workflow whose offers answer a nonce: not made, and not taken
    with pytest.raises(CommerceError, match="POST /deals"):
        shop.standing_offer("information", [("guide", 1)], False)
    # the shop's prices changed since it signed the offer: the kept offer is refused (ask again)
    item = shop.catalogue.items["teapot"]
    shop.catalogue.items["teapot"] = CatalogueItem(**{**item.__dict__, "unit_price": item.unit_price + 1})
    for s in (shop, open_shop("shop", catalogue=shop.catalogue)):   # (another worker reads the same catalogue)
        with pytest.raises(OfferNotOurs, match="no longer makes this offer"):
            s.order(offer.deal_id, order, None, der, tag)
    assert _rows(shop) == 0 and _rows(other) == 0


def test_the_unpaid_cap_and_the_room_for_deals_hold_at_the_order(open_shop: Callable[..., Shop],
                                                                 pki: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    shop = open_shop()
    der, tag = shop.standing_offer("mail-order", [("teapot", 1)], False)
    monkeypatch.setattr(shop_mod, "MAX_UNPAID_PER_BUYER", 3)
    for _ in range(3):
        offer = _standing(shop, der)
        shop.order(offer.deal_id, _signed_order(offer, pki), None, der, tag)
    offer = _standing(shop, der)
    with pytest.raises(TooManyUnpaidOrders):            # one buyer at its cap: no fourth unpaid order
        shop.order(offer.deal_id, _signed_order(offer, pki), None, der, tag)
    assert _rows(shop) == 3
    monkeypatch.setattr(shop_mod, "MAX_OPEN_DEALS", 3)    # the shop full: no new deal, whoever orders
    offer = _standing(shop, der)
    with pytest.raises(ServiceUnavailable, match="too many open deals"):
        shop.order(offer.deal_id, _anonymous_order(offer), None, der, tag)
    assert _rows(shop) == 3
    # and a standing offer is still given (it writes nothing): the order is where the room is asked
    assert shop.standing_offer("mail-order", [("teapot", 1)], False) == (der, tag)



def _a_race_lost(open_shop: Callable[..., Shop], pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch
                 ) -> tuple[Shop, Shop, str, bytes, str, bytes]:
    """Worker ``one`` has written a new deal id with an order for 5 teapots; worker ``two`` read no row for
    it (the winner had not committed when it looked) and takes an order for 1 on another standing offer.
    (one, two, the deal id, the loser's offer and tag, the loser's order.)"""
    one, two = open_shop(), open_shop()
    der1, tag1 = one.standing_offer("mail-order", [("teapot", 1)], False)
    der5, tag5 = one.standing_offer("mail-order", [("teapot", 5)], False)
    deal_id = new_deal_id()
    one.order(deal_id, _signed_order(_standing(one, der5, deal_id), pki), None, der5, tag5)
    real_get, missed = two.store.get, []

    def get(d: str, *, fresh: bool = False) -> Any:
        if d == deal_id and not missed:
            missed.append(d)
            return None
        return real_get(d, fresh=fresh)
    monkeypatch.setattr(two.store, "get", get)
    return one, two, deal_id, der1, tag1, _signed_order(_standing(two, der1, deal_id), pki)


def _only_the_winners_entries(one: Shop, deal_id: str, loser_offer: bytes, loser_order: bytes) -> None:
    assert _kinds(one, deal_id) == ["statement:offer", "statement:order"]        # the winner's, once
    contents = [e.content for e in one.archive.entries(deal_id)]
    assert loser_offer not in contents and loser_order not in contents


def test_an_order_that_loses_the_race_for_a_new_deal_id_leaves_nothing_in_the_archive(
        open_shop: Callable[..., Shop], pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers take two orders for one new deal id at once, on standing offers for other quantities: the
    one whose insert loses is refused, and its offer and order are not archived under the winner's deal id
    (review of 2026-12-07: they were, and the judge read the loser's offer and order first)."""
    one, two, deal_id, der1, tag1, loser = _a_race_lost(open_shop, pki, monkeypatch)
    with pytest.raises(DealConflict, match="another order"):
        with two.batch():                               # as a request handler runs it
            two.order(deal_id, loser, None, der1, tag1)
    _only_the_winners_entries(one, deal_id, der1, loser)

def test_a_buyer_has_ten_minutes_at_least_to_review_a_standing_offer(open_shop: Callable[..., Shop]) -> None:
    """Review of 2026-12-07: valid 15 minutes and used while 3 remained, a kept offer could expire while its
    user read the TINGUIN, and the order was refused after the PIN. Now: valid 30 minutes (a per-deal offer's
    time), given out with half of it left at least, used while 10 minutes remain."""
    from semper.client.commerce import blocks
    shop = open_shop()
    before = dt.datetime.now(dt.UTC)
    der, _ = shop.standing_offer("mail-order", [("teapot", 1)], False)
    took = dt.datetime.now(dt.UTC) - before
    offer = _standing(shop, der)
    # the body's end is fixed before the token signs, and both are to the second: the signing time may fall
    # as much later as the signature took, and a second more (CI saw 29 min 59 s), never later
    second = dt.timedelta(seconds=1)
    assert shop_mod.STANDING_VALIDITY == dt.timedelta(minutes=30)
    validity = offer.valid_until - offer.signed_at
    assert shop_mod.STANDING_VALIDITY - took - second <= validity <= shop_mod.STANDING_VALIDITY
    assert blocks._margin(offer) == min(blocks.STANDING_MARGIN, validity / 3) >= (dt.timedelta(minutes=30) - took
                                                                                  - second) / 3
    assert shop_mod.STANDING_VALIDITY * shop_mod.STANDING_RENEW > blocks._margin(offer)  # a fresh one is usable



def test_an_order_with_the_cards_hello_that_loses_the_race_leaves_nothing_in_the_archive(
        open_shop: Callable[..., Shop], pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race on the card-purse path, where the order's first payment step writes the deal (third
    review of 2026-12-07: only the path without a hello dropped the loser's entries)."""
    one, two, deal_id, der1, tag1, loser = _a_race_lost(open_shop, pki, monkeypatch)
    # the card's hello taken with the order: the first step's transaction writes the deal (save_in), which
    # finds the winner's row
    monkeypatch.setattr(two, "_early", lambda sd, env: env is not None)
    monkeypatch.setattr(two, "_room", lambda sd, env: None)
    monkeypatch.setattr(two.payments, "unadmit", lambda env: None)
    monkeypatch.setattr(two.payments, "handle_first",
                        lambda terms, route, envelope, *, settle: two.db.run(lambda tx: settle(None)(tx)))
    with pytest.raises(DealConflict, match="another order"):
        with two.batch():
            two.order(deal_id, loser, {"hello": 1}, der1, tag1)
    _only_the_winners_entries(one, deal_id, der1, loser)


def test_the_same_order_taken_by_two_workers_at_once_is_archived_once(open_shop: Callable[..., Shop],
                                                                       pki: dict[str, Any],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 2026-12-07: a client's retry that reached a second worker before the first one's deal was
    committed there lost the race to its own first copy, kept its entries, and the offer and order were
    archived twice. With the deals in the archive's file, the first copy's entries committed with its deal:
    the retry's are dropped (its answer is the same)."""
    one, two = open_shop(), open_shop()
    der, tag = one.standing_offer("mail-order", [("teapot", 5)], False)
    deal_id = new_deal_id()
    order = _signed_order(_standing(one, der, deal_id), pki)
    with one.batch():
        first = one.order(deal_id, order, None, der, tag)
    real_get, missed = two.store.get, []

    def get(d: str, *, fresh: bool = False) -> Any:
        if d == deal_id and not missed:
            missed.append(d)                 # the second worker has not seen the first one's commit yet
            return None
        return real_get(d, fresh=fresh)
    monkeypatch.setattr(two.store, "get", get)
    with two.batch():
        again = two.order(deal_id, order, None, der, tag)
    assert again["terms"] == first["terms"]
    assert _kinds(one, deal_id) == ["statement:offer", "statement:order"]
