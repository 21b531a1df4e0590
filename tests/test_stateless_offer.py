"""The stateless offer (issue 14, item 4): the shop writes nothing when it signs an offer; the buyer sends
the offer and its tag back with the order, and the shop writes the deal, its offer's archive entry and the
order in the order's one transaction (docs/commerce.md, "The stateless offer").

What must hold: any worker of the shop takes the order (they share the offer key); the order sent again
gets the same answer and another order for the deal a conflict; an offer that is not this shop's as it
signed it (another shop's, altered, a forged tag, another deal's) or that expired is refused with a
clear error and nothing is written; asking for offers costs the shop no storage."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from postgres import Storage, storages
from test_commerce_units import _cert, _root
from test_errors import _Module
from test_tinguin_samples import SoftSigner

from semper.client.commerce import documents as docs
from semper.client.commerce.archive import SharedArchive
from semper.client.commerce.catalogue import Catalogue, demo_catalogue
from semper.client.commerce.errors import DealConflict, NoSuchDeal
from semper.client.exchange.identity import Identity
from semper.client.payment.manager import PaymentManager
from semper.client.payment.module import PartyContext
from semper.client.servers.shop import OfferExpired, OfferNotOurs, Shop
from semper.client.support.cms import sign_statement
from semper.client.support.db import Database
from semper.client.support.trust import TrustStore
from semper.client.support.verify import verify_statement

NONCE = "n" * 32


@pytest.fixture()
def pki() -> dict[str, Any]:
    root_key, root = _root("stateless root", days=3)
    return {"trust": TrustStore([root]), "seller": SoftSigner(*_cert(root_key, root, "seller", "Teapot Shop")),
            "person": SoftSigner(*_cert(root_key, root, "person", "Bob Buyer"))}


@pytest.fixture()
def open_shop(pki: dict[str, Any], tmp_path: Path) -> Iterator[Callable[..., Shop]]:
    """``open_shop(folder)``: a worker of the shop whose database and archive are in ``folder`` (two calls
    with one folder: two workers of one shop; another folder: another shop with the same key and name)."""
    opened: list[Shop] = []

    def make(folder: str = "shop", catalogue: Catalogue | None = None,
             validity: dt.timedelta = dt.timedelta(minutes=30), db: str | None = None) -> Shop:
        (tmp_path / folder).mkdir(exist_ok=True)
        payments = PaymentManager(PartyContext(), modules={"stub": _Module})
        evidence = tmp_path / folder / "evidence.sqlite3"
        database = Database(db or f"sqlite:///{evidence}")      # as a shop's folder has it: one file for both
        s = Shop(name="Teapot Shop", identity=Identity(pki["seller"]), trust=pki["trust"],
                 catalogue=catalogue or demo_catalogue(), payments=payments,
                 account="A1", archive=SharedArchive(evidence, joined=database), db=database,
                 offer_validity=validity)
        opened.append(s)
        return s
    yield make
    for s in opened:
        s.db.close()


def _parsed(shop: Shop, der: bytes) -> docs.ParsedOffer:
    return docs.parse_offer(verify_statement(der, shop.trust), deal_id=None, nonce=NONCE)


def _anonymous_order(offer: docs.ParsedOffer, pickup: str = "Kiosk C") -> bytes:
    body = docs.order_body(offer, payment="stub", payment_label="stub", confirmation_sha256="ab" * 32, scripted=False,
                           action="ORDER_AND_PAY", details=(), form={"pickup": pickup}, attributes=offer.attributes)
    return docs.canonical(body)


def _signed_order(offer: docs.ParsedOffer, pki: dict[str, Any]) -> bytes:
    """A mail order signed by the buyer's person certificate (not anonymous)."""
    body = docs.order_body(offer, payment="stub", payment_label="stub", confirmation_sha256="ab" * 32,
                           scripted=False, action="ORDER_AND_PAY", details=(), attributes=offer.attributes,
                           form={"name": "Bob Buyer", "street": "1 Main St", "postcode": "12345", "city": "Town",
                                 "country": "DE"})
    return sign_statement(pki["person"], body)


def _rows(shop: Shop) -> int:
    row = shop.db.read_one("SELECT COUNT(*) FROM shop_deals")
    assert row is not None
    return int(row[0])


def _kinds(shop: Shop, deal_id: str) -> list[str]:
    return [e.kind for e in shop.archive.entries(deal_id)]


def test_an_offer_writes_nothing_and_any_worker_writes_the_deal_with_its_order(open_shop: Callable[..., Shop],
                                                                              pki: dict[str, Any]) -> None:
    one, two = open_shop(), open_shop()                        # two workers of one shop: one database
    writes = dict(one.db.counts)
    deal_id, der, tag = one.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    assert one.db.counts["write"] == writes["write"] and _rows(one) == 0 and _kinds(one, deal_id) == []
    assert tag == two.store.offer_tag(der)                   # the key is the shop's, not the process's
    offer = _parsed(one, der)
    order = _anonymous_order(offer)

    before = dict(two.db.counts)
    with two.batch():
        answer = two.order(deal_id, order, None, der, tag)     # the other worker takes the order
    assert answer["next"] == "payment" and answer["terms"]["amount"] == offer.total
    assert two.db.counts["write"] - before["write"] == 1      # the deal and its order: one write transaction
    sd = one.find(deal_id, fresh=True)
    assert sd is not None and sd.offer_der == der and sd.order_bytes == order and sd.psam == offer.psam
    assert _rows(one) == 1
    assert _kinds(two, deal_id) == ["statement:offer", "order:unsigned"]     # the offer's evidence, then the order

    # the order sent again, to either worker, with or without the offer: the same answer, nothing written
    for shop, sent in ((one, (der, tag)), (two, (None, ""))):
        assert shop.order(deal_id, order, None, *sent) == answer
    # the offer sent again with another order: the deal has its order
    with pytest.raises(DealConflict, match="another order"):
        one.order(deal_id, _anonymous_order(offer, "Kiosk A"), None, der, tag)
    assert _rows(one) == 1

    # a signed order (not anonymous) too, and with its offer the shop writes nothing before the order
    deal_id2, der2, tag2 = two.new_deal("mail-order", [("teapot", 2)], NONCE, False)
    offer2 = _parsed(two, der2)
    signed = _signed_order(offer2, pki)
    assert one.order(deal_id2, signed, None, der2, tag2)["next"] == "payment"
    assert _kinds(one, deal_id2) == ["statement:offer", "statement:order"] and _rows(one) == 2


@storages()
def test_two_workers_taking_one_new_order_at_once_write_one_deal(open_shop: Callable[..., Shop], storage: Storage,
                                                                tmp_path: Path) -> None:
    url = storage.url("shop", tmp_path)
    workers = [open_shop(db=url) for _ in range(4)]
    for same in (True, False):
        deal_id, der, tag = workers[0].new_deal("mail-order", [("teapot", 1)], NONCE, True)
        offer = _parsed(workers[0], der)
        orders = [_anonymous_order(offer, "Kiosk C" if same or i % 2 else "Station A") for i in range(len(workers))]
        answers: list[Any] = [None] * len(workers)
        go = threading.Barrier(len(workers))

        def take(i: int, deal_id: str = deal_id, der: bytes = der, tag: str = tag, orders: list[bytes] = orders,
                 answers: list[Any] = answers, go: threading.Barrier = go) -> None:
            go.wait(10)
            try:
                answers[i] = workers[i].order(deal_id, orders[i], None, der, tag)
            except DealConflict as e:
                answers[i] = e
        threads = [threading.Thread(target=take, args=(i,)) for i in range(len(workers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        sd = workers[0].find(deal_id, fresh=True)
        assert sd is not None and sd.order_bytes in orders
        won = [i for i, o in enumerate(orders) if o == sd.order_bytes]
        for i, a in enumerate(answers):                  # the written order's senders all get its answer
            if i in won:
                assert isinstance(a, dict) and a["terms"]["payment_id"] == sd.terms.payment_id, a   # type: ignore[union-attr]
            else:
                assert isinstance(a, DealConflict), a
        assert same == (len(won) == len(workers))
    assert _rows(workers[0]) == 2


def test_offers_not_this_shops_as_it_signed_them_are_refused_and_nothing_is_written(
        open_shop: Callable[..., Shop]) -> None:
    shop, other = open_shop(), open_shop("other")    # another shop: its own database, the same key pair and name
    deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    order = _anonymous_order(_parsed(shop, der))
    o_deal, o_der, o_tag = other.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    assert o_tag != other.store.offer_tag(der) and o_tag == other.store.offer_tag(o_der)

    # another shop's offer, with its tag: signed by the same key, and still not this shop's
    with pytest.raises(OfferNotOurs, match="tag does not verify"):
        shop.order(o_deal, _anonymous_order(_parsed(other, o_der)), None, o_der, o_tag)
    # the offer altered (a byte of its signed body), with its genuine tag
    at = der.index(b'"total":')
    altered = der[:at + 8] + (b"1" if der[at + 8:at + 9] != b"1" else b"2") + der[at + 9:]
    assert altered != der and len(altered) == len(der)
    with pytest.raises(OfferNotOurs, match="tag does not verify"):
        shop.order(deal_id, order, None, altered, tag)
    # a forged tag, no tag, a tag of another offer of this shop
    d2, der2, tag2 = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    for forged in ("00" * 32, "", tag2, tag.upper(), None):
        with pytest.raises(OfferNotOurs, match="tag does not verify"):
            shop.order(deal_id, order, None, der, forged)
    # a genuine offer and tag, sent for another deal id
    with pytest.raises(OfferNotOurs, match="another deal"):
        shop.order(d2, order, None, der, tag)
    # no offer at all: an unknown deal, as before
    with pytest.raises(NoSuchDeal):
        shop.order(deal_id, order, None, None, "")
    assert _rows(shop) == 0 and _kinds(shop, deal_id) == [] and _kinds(shop, d2) == []
    # and the genuine one is taken
    assert shop.order(deal_id, order, None, der, tag)["next"] == "payment"


def test_an_expired_offer_or_one_the_shop_no_longer_makes_is_refused(open_shop: Callable[..., Shop]) -> None:
    past = open_shop(validity=dt.timedelta(seconds=-1))     # a worker whose offers expire as they are made
    deal_id, der, tag = past.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    order = _anonymous_order(docs.parse_offer(verify_statement(der, past.trust), deal_id=None, nonce=NONCE,
                                              now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)))
    now_shop = open_shop()                                  # the same shop: its clock says the offer expired
    with pytest.raises(OfferExpired, match="expired at .*ask for a new one"):
        now_shop.order(deal_id, order, None, der, tag)
    assert _rows(now_shop) == 0

    # the shop's prices changed after the offer (a restart with another catalogue): it takes no old offer
    deal_id, der, tag = now_shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    order = _anonymous_order(_parsed(now_shop, der))
    items = dict(demo_catalogue().items)
    items["teapot"] = dataclasses.replace(items["teapot"], unit_price=items["teapot"].unit_price + 100)
    dearer = open_shop(catalogue=Catalogue(items))
    with pytest.raises(OfferNotOurs, match="no longer makes this offer"):
        dearer.order(deal_id, order, None, der, tag)
    assert _rows(dearer) == 0


def test_the_http_order_carries_the_offer_back_and_refusals_say_why(open_shop: Callable[..., Shop]) -> None:
    from semper.client.servers.shop_http import build_app
    from semper.client.support.http_service import ServiceRunner
    shop = open_shop()
    with ServiceRunner(build_app(shop)) as svc, httpx.Client(base_url=svc.url, timeout=20) as http:
        made = http.post("/deals", json={"workflow": "mail-order", "items": [{"sku": "teapot", "quantity": 1}],
                                         "nonce": NONCE, "anonymous": True}).json()
        der = base64.b64decode(made["offer"])
        order = base64.b64encode(_anonymous_order(_parsed(shop, der))).decode()
        sent = {"deal": made["deal"], "order": order, "offer": made["offer"], "offer_tag": made["offer_tag"]}
        assert _rows(shop) == 0

        def refusal(body: dict[str, Any]) -> tuple[int, str]:
            r = http.post("/deals/order", json=body)
            return r.status_code, r.json()["error"]
        assert refusal({**sent, "offer_tag": "ab" * 32}) == (400, "bad_offer")
        assert refusal({k: v for k, v in sent.items() if k not in ("offer", "offer_tag")}) == (404, "unknown_deal")
        first = http.post("/deals/order", json=sent)
        assert first.status_code == 200 and first.json()["next"] == "payment", first.text
        assert http.post("/deals/order", json=sent).json() == first.json()
        assert _rows(shop) == 1 and _kinds(shop, made["deal"]) == ["statement:offer", "order:unsigned"]


def test_an_order_waiting_for_room_at_the_device_is_checked_once(open_shop: Callable[..., Shop], pki: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """While the PSAM is full, the HTTP layer takes an order with the card's hello again every 5 ms for up
    to 10 s (``shop_http._waited``): the order's signature and the offer sent back are checked on the
    first attempt only; the deal is read again at each, and nothing is written until there is room."""
    from semper.client.servers import shop as shop_module
    from semper.client.servers.shop import NoRoom, OrderChecks
    from semper.client.servers.shop_http import Order, _order_settle
    shop = open_shop()
    deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, False)
    offer = _parsed(shop, der)
    signed = _signed_order(offer, pki)
    calls = {"verify": 0, "offered": 0, "room": 0}
    verify, offered = shop_module.verify_statement, shop._offered

    def counted_verify(*a: Any, **kw: Any) -> Any:
        calls["verify"] += 1
        return verify(*a, **kw)

    def counted_offered(*a: Any) -> Any:
        calls["offered"] += 1
        return offered(*a)

    def full(sd: Any, envelope: Any) -> None:
        calls["room"] += 1
        raise NoRoom("the PSAM keeps 16 debits open")
    monkeypatch.setattr(shop_module, "verify_statement", counted_verify)
    monkeypatch.setattr(shop, "_offered", counted_offered)
    monkeypatch.setattr(shop, "_early", lambda sd, envelope: True)      # the stub module as one that starts early
    monkeypatch.setattr(shop, "_room", full)
    request = Order(deal=deal_id, order=signed, offer=der, offer_tag=tag,
                    envelope={"payment_id": "p", "module": "stub", "body": {}})
    checks = OrderChecks()
    for _ in range(3):
        assert _order_settle(shop, request, checks) == (None, "the PSAM keeps 16 debits open")
    assert calls == {"verify": 1, "offered": 1, "room": 3} and _rows(shop) == 0 and _kinds(shop, deal_id) == []
    monkeypatch.setattr(shop, "_early", lambda sd, envelope: False)     # room, and the order goes on without it
    done, _ = _order_settle(shop, request, checks)
    assert done is not None and done["next"] == "payment" and calls["verify"] == 1 and calls["offered"] == 1
    assert _rows(shop) == 1 and _kinds(shop, deal_id) == ["statement:offer", "statement:order"]


def test_an_offer_a_shop_before_stateless_offers_stored_is_ordered_from_its_row(open_shop: Callable[..., Shop]) -> None:
    """A database upgraded with offers not ordered yet in it (as ``POST /deals`` wrote them before): their
    orders, which come without the offer, are taken from the row as before."""
    shop = open_shop()
    deal_id, der, _tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    stored = shop._offered(deal_id, der, shop.store.offer_tag(der))
    assert shop.store.insert(stored) and not shop.store.insert(shop._offered(deal_id, der, _tag))   # one row per id
    order = _anonymous_order(_parsed(shop, der))
    answer = open_shop().order(deal_id, order)              # another worker, no offer sent: the row is the deal
    assert answer["next"] == "payment" and _rows(shop) == 1
    sd = shop.find(deal_id, fresh=True)
    assert sd is not None and sd.order_bytes == order and sd.version == 2


# ---- an adversarial review of the stateless offer (2026-12-07): each test failed on the code before ----------
def test_a_tag_with_characters_outside_ascii_is_refused_as_a_bad_offer(open_shop: Callable[..., Shop]) -> None:
    """hmac.compare_digest raises TypeError for str with non-ASCII characters: the order was a 500 with a
    traceback in the log (one per request, for anyone); it is the 400 of any wrong tag."""
    from semper.client.servers.shop_http import build_app
    from semper.client.support.http_service import ServiceRunner
    shop = open_shop()
    with ServiceRunner(build_app(shop)) as svc, httpx.Client(base_url=svc.url, timeout=20) as http:
        made = http.post("/deals", json={"workflow": "mail-order", "items": [{"sku": "teapot", "quantity": 1}],
                                         "nonce": NONCE, "anonymous": True}).json()
        order = base64.b64encode(_anonymous_order(_parsed(shop, base64.b64decode(made["offer"])))).decode()
        r = http.post("/deals/order", json={"deal": made["deal"], "order": order, "offer": made["offer"],
                                            "offer_tag": "\u00e9" * 64})
        assert (r.status_code, r.json()["error"]) == (400, "bad_offer"), r.text
        assert _rows(shop) == 0


def _forged(shop: Shop, pki: dict[str, Any], signer: Any, **changes: Any) -> tuple[str, bytes, str]:
    """An offer made and tagged by whoever read the shop's offer key from a copy of its database: a body
    of the shop's offer with ``changes``, signed by ``signer``, under the key's tag."""
    import hashlib
    import hmac

    from semper.client.servers.shop_store import OFFER_TAG_LABEL
    row = shop.db.read_one("SELECT secret FROM shop_keys WHERE name = 'offer-tag'")
    assert row is not None
    _deal, der, _tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    deal_id = "ab" * 16
    body = {**verify_statement(der, shop.trust).body, "deal": deal_id, **changes}
    forged = sign_statement(signer, body)
    return deal_id, forged, hmac.new(bytes(row[0]), OFFER_TAG_LABEL + forged, hashlib.sha256).hexdigest()


def _order_for(shop: Shop, deal_id: str, forged: bytes) -> bytes:
    """An order for ``forged`` (made from a genuine offer of the shop: a buyer's client would refuse to parse
    some of the forged ones, and the shop must refuse them before it reads the order)."""
    genuine = _parsed(shop, shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)[1])
    return _anonymous_order(dataclasses.replace(genuine, der=forged, deal_id=deal_id, digest=docs.sha256_hex(forged)))


@pytest.mark.parametrize("case", ["another signer", "valid for ever", "other attributes", "another psam"])
def test_the_offer_key_from_a_copy_of_the_database_makes_no_offer_the_shop_would_not(
        open_shop: Callable[..., Shop], pki: dict[str, Any], case: str) -> None:
    """The tag proves the bytes were tagged with the shop's key, not that the shop made them: with the key,
    someone could have the shop write and archive as its own an offer another signed, valid until 2099,
    with attributes or a PSAM of their choosing. Whatever the tag says, an offer must be one this shop
    would make: its certificate as the signer, its validity, its attributes, one of its PSAMs."""
    shop = open_shop()
    signer = pki["person"] if case == "another signer" else pki["seller"]
    changes = {"another signer": {},
               "valid for ever": {"valid_until": "2099-01-01T00:00:00Z"},
               "other attributes": {"attributes": {"anonymous": True, "non_repudiation": False, "fair": True}},
               "another psam": {"psam": "PSAM-NOT-OURS"}}[case]
    deal_id, forged, tag = _forged(shop, pki, signer, **changes)
    with pytest.raises(OfferNotOurs):
        shop.order(deal_id, _order_for(shop, deal_id, forged), None, forged, tag)
    assert _rows(shop) == 0 and _kinds(shop, deal_id) == []


def test_an_offer_that_expires_while_its_order_waits_for_room_is_refused(open_shop: Callable[..., Shop],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks kept across the waiting order's attempts (OrderChecks) kept the offer's expiry too: an
    offer could be taken up to the wait's 10 s after it expired."""
    from semper.client.servers.shop import OrderChecks
    shop = open_shop()
    deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    order = _anonymous_order(_parsed(shop, der))
    checks = OrderChecks()
    checks.offered = shop._offered(deal_id, der, tag)           # the first attempt checked it
    checks.offered.offer = {**checks.offered.offer, "valid_until": "2020-01-01T00:00:00Z"}   # ... and time passed
    with pytest.raises(OfferExpired):
        shop.order(deal_id, order, None, der, tag, checks)
    assert _rows(shop) == 0


@storages()
def test_orders_never_paid_stop_counting_once_their_offer_is_long_expired(
        open_shop: Callable[..., Shop], storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threat model, "anyone who can reach a shop": anonymous orders (unsigned canonical JSON) nobody pays
    used to count against the open-deal limit for good, so that many of them stopped the shop taking any
    deal. Once an offer has been expired for one offer validity and its deal is not paid, the deal is marked
    abandoned (kept, with its evidence) and no longer counts, whether its payment started or not (a payment
    that started and stalled counted for good before); a late *first* payment message is refused, nothing
    asked of the payment, while a payment that had started still completes, and the deal counts as paid."""
    from semper.client.commerce.errors import ServiceUnavailable
    from semper.client.payment.manager import Handled
    from semper.client.payment.model import Record, Status, Terms
    from semper.client.payment.sessions import DatabaseSessions
    from semper.client.servers import shop as shop_module
    from semper.client.servers.shop import DealAbandoned
    monkeypatch.setattr(shop_module, "MAX_OPEN_DEALS", 3)
    monkeypatch.setattr(shop_module, "UNSIGNED_UNPAID_SHARE", 1.0)      # the anonymous orders may fill it here
    validity = dt.timedelta(seconds=2)
    url = storage.url("shop", tmp_path)
    one, two = open_shop(db=url, validity=validity), open_shop(db=url, validity=validity)   # two workers
    for worker in (one, two):      # the payee's sessions in the shop's database, as `semper serve shop` keeps them
        worker.payments = PaymentManager(PartyContext(), modules={"stub": _Module},
                                         sessions=DatabaseSessions(worker.db))

    ordered: list[tuple[str, Terms]] = []
    latest = dt.datetime.now(dt.UTC)
    for _ in range(3):
        deal_id, der, tag = one.new_deal("mail-order", [("teapot", 1)], NONCE, True)
        offer = _parsed(one, der)
        latest = max(latest, offer.valid_until)
        answer = one.order(deal_id, _anonymous_order(offer), None, der, tag)
        ordered.append((deal_id, Terms.from_dict(answer["terms"])))
    (unpaid, unpaid_terms), _, (paying, paying_terms) = ordered
    st = one.payments.sessions.get(paying_terms.payment_id)       # the payer's first message taken: a step
    assert st is not None
    st.module, st.rounds, st.last_in = "stub", 1, "{}"
    assert one.payments.sessions.save(st, None)
    with pytest.raises(ServiceUnavailable, match="too many open deals"):
        two.new_deal("mail-order", [("teapot", 1)], NONCE, True)

    time.sleep(max(0.0, (latest + validity - dt.datetime.now(dt.UTC)).total_seconds()) + 1.1)
    deal_id, der, tag = two.new_deal("mail-order", [("teapot", 1)], NONCE, True)    # room again
    assert two.store.open_count() == 0                 # the two unpaid ones and the stalled payment: none counts
    assert two.order(deal_id, _anonymous_order(_parsed(two, der)), None, der, tag)["next"] == "payment"
    assert two.store.open_count() == 1
    assert _rows(one) == 4 and _kinds(one, unpaid) == ["statement:offer", "order:unsigned"]   # nothing deleted

    stepped: list[str] = []

    def step(envelope: dict[str, Any], *, settle: Any = None) -> Handled:
        stepped.append(envelope["payment_id"])
        terms = paying_terms if envelope["payment_id"] == paying_terms.payment_id else unpaid_terms
        return Handled({"payment_id": terms.payment_id, "module": "stub", "body": {}},
                       Record(terms.payment_id, "stub", "payee", terms, Status.PAID), False)
    for worker in (one, two):
        monkeypatch.setattr(worker.payments, "handle_step", step)
    # `one` remembers the unpaid deal as it ordered it; it asks the database before taking a payment for it
    with pytest.raises(DealAbandoned, match="never started"):
        one.pay_and_deliver(unpaid, {"payment_id": unpaid_terms.payment_id, "module": "stub", "body": {}})
    assert stepped == [] and two.store.open_count() == 1
    sd = one.find(unpaid, fresh=True)
    assert sd is not None and sd.abandoned and not sd.paid and sd.order_bytes is not None

    done = one.pay_and_deliver(paying, {"payment_id": paying_terms.payment_id, "module": "stub", "body": {}})
    assert stepped == [paying_terms.payment_id] and done["confirmation"] and done["delivery"]
    sd = two.find(paying, fresh=True)
    assert sd is not None and sd.paid and sd.finished and not sd.abandoned   # the stalled payment went on
    assert two.store.open_count() == 1


# ---- the offers a process remembers having signed (Shop._made_again, issue 14 item 4) ---------------------------
def _typed(value: Any) -> Any:
    """``value`` with the type of every part kept (1 == 1.0 == True, and a tuple equals no list)."""
    if isinstance(value, dict):
        return ("dict", sorted((k, _typed(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_typed(v) for v in value])
    return (type(value).__name__, value)


def test_a_remembered_offer_makes_the_same_deal_as_its_bytes_read_again(open_shop: Callable[..., Shop]) -> None:
    """The deal the signing process makes from what it remembers is the one any other worker makes from the
    offer's bytes: the same body (every value of the same JSON type), lines, PSAM, bytes and digest."""
    one, two = open_shop(), open_shop()                 # two workers of one shop; only ``one`` signed the offer
    for workflow, items, anonymous in (("mail-order", [("teapot", 2)], True), ("mail-order", [("teapot", 1)], False),
                                       ("information", [("market-report", 1)], False),
                                       ("registration", [("tea-club", 1)], False),
                                       ("contract", [("supply-contract", 1)], False)):
        deal_id, der, tag = one.new_deal(workflow, items, NONCE, anonymous)
        assert deal_id in one._made and deal_id not in two._made
        remembered, read = one._offered(deal_id, der, tag), two._offered(deal_id, der, tag)
        assert deal_id not in one._made                 # taken once
        assert _typed(remembered.offer) == _typed(read.offer) == _typed(verify_statement(der, one.trust).body)
        assert (remembered.lines, remembered.psam, remembered.offer_der, remembered.offer_digest, remembered.version) \
            == (read.lines, read.psam, read.offer_der, read.offer_digest, read.version)
        assert (remembered.deal.deal_id, remembered.deal.workflow, remembered.deal.attributes) \
            == (read.deal.deal_id, read.deal.workflow, read.deal.attributes)


def test_a_remembered_offer_is_refused_as_any_once_the_shop_no_longer_makes_it(open_shop: Callable[..., Shop]) -> None:
    """What the process remembers of an offer it signed is no shortcut past what changed since: its catalogue
    changed in place (a price), its account, its PSAMs, the clock. Each is refused as an offer read from its
    bytes would be, and nothing is written; an offer it still makes is taken."""
    shop = open_shop()
    teapot = shop.catalogue.items["teapot"]

    def ordered(change: Callable[[], None], undo: Callable[[], None]) -> None:
        deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
        order = _anonymous_order(_parsed(shop, der))
        change()
        try:
            with pytest.raises(OfferNotOurs, match="no longer makes this offer"):
                shop.order(deal_id, order, None, der, tag)
        finally:
            undo()
    ordered(lambda: shop.catalogue.items.__setitem__("teapot", dataclasses.replace(teapot, unit_price=1)),
            lambda: shop.catalogue.items.__setitem__("teapot", teapot))
    ordered(lambda: setattr(shop, "account", "A2"), lambda: setattr(shop, "account", "A1"))
    ordered(lambda: setattr(shop, "psam_ids", frozenset({"PSAM-OTHER"})),
            lambda: setattr(shop, "psam_ids", frozenset({None})))
    ordered(lambda: shop.catalogue.items.pop("teapot"), lambda: shop.catalogue.items.__setitem__("teapot", teapot))
    assert _rows(shop) == 0

    past = open_shop(validity=dt.timedelta(seconds=-1))     # its offers expire as they are made
    deal_id, der, tag = past.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    assert deal_id in past._made
    with pytest.raises(OfferExpired, match="expired at .*ask for a new one"):
        past.order(deal_id, b"{}", None, der, tag)
    shorter = open_shop()                                   # the shop's offers are shorter-lived now
    deal_id, der, tag = shorter.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    shorter.offer_validity = dt.timedelta(minutes=1)
    with pytest.raises(OfferNotOurs, match="valid for longer"):
        shorter.order(deal_id, b"{}", None, der, tag)
    assert _rows(past) == 0 and _rows(shorter) == 0

    deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    assert shop.order(deal_id, _anonymous_order(_parsed(shop, der)), None, der, tag)["next"] == "payment"


def test_a_remembered_offer_is_no_way_in_for_other_bytes(open_shop: Callable[..., Shop], pki: dict[str, Any]) -> None:
    """Only the exact bytes the process signed, for their own deal and under their tag, are taken as
    remembered: another offer sent for a remembered deal id (a genuine one of another deal, one forged
    with the offer key from a copy of the database) is read and refused as before, a wrong tag too, and
    the remembered offer is still taken afterwards."""
    shop = open_shop()
    deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    order = _anonymous_order(_parsed(shop, der))
    d2, der2, tag2 = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    with pytest.raises(OfferNotOurs, match="another deal"):
        shop.order(deal_id, order, None, der2, tag2)
    with pytest.raises(OfferNotOurs, match="tag does not verify"):
        shop.order(deal_id, order, None, der, tag2)
    _forged_id, forged, forged_tag = _forged(shop, pki, pki["seller"], deal=deal_id, total=1)
    with pytest.raises(OfferNotOurs):
        shop.order(deal_id, order, None, forged, forged_tag)
    assert deal_id in shop._made and _rows(shop) == 0
    assert shop.order(deal_id, order, None, der, tag)["next"] == "payment"
    assert deal_id not in shop._made and d2 in shop._made


def test_the_offers_a_process_remembers_are_bounded(open_shop: Callable[..., Shop],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Offers nobody orders cost no storage, and no memory past a bound: the oldest are forgotten, and their
    orders are taken from the bytes read again."""
    from semper.client.servers import shop as shop_module
    monkeypatch.setattr(shop_module, "MADE_OFFERS", 3)
    shop = open_shop()
    made = [shop.new_deal("mail-order", [("teapot", 1)], NONCE, True) for _ in range(5)]
    assert list(shop._made) == [m[0] for m in made[2:]]
    deal_id, der, tag = made[0]
    assert shop.order(deal_id, _anonymous_order(_parsed(shop, der)), None, der, tag)["next"] == "payment"


def test_large_offers_are_not_remembered(open_shop: Callable[..., Shop]) -> None:
    """Review of 2026-12-07: an entry holds the offer's DER and body, which copy the catalogue's texts, and offers
    cost no authentication; with a long text in the catalogue 2048 entries were half a GiB per worker. An offer
    over MADE_OFFER_BYTES is not remembered, and its order is taken from its bytes read again."""
    from semper.client.servers import shop as shop_module
    shop = open_shop()
    teapot = shop.catalogue.items["teapot"]
    shop.catalogue.items["teapot"] = dataclasses.replace(teapot, description="A teapot. " * 1000)   # ~10 KB
    deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    assert len(der) > shop_module.MADE_OFFER_BYTES and deal_id not in shop._made
    assert shop.order(deal_id, _anonymous_order(_parsed(shop, der)), None, der, tag)["next"] == "payment"
    shop.catalogue.items["teapot"] = teapot
    small_id, _der, _tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, True)
    assert small_id in shop._made
