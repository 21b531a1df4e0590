"""The cap per buyer on orders not paid (threat model, "anyone who can reach a shop"): an order costs its
sender nothing (an anonymous one is unsigned canonical JSON), and a deal ordered and never paid counts
against the shop's open-deal limit until it is abandoned, about an hour after its offer. So one client
sending orders it never pays kept the shop at its limit and every other buyer out (503).

What must hold now: the orders without a certificate together, and each buyer's certificate, hold at most
their cap of deals ordered and not started paying (``Shop.unpaid_cap``); over it an order is refused with
429 ``too_many_unpaid_orders`` and nothing of it is written; a deal paid, whose payment started, or
abandoned stops counting for its buyer; an order that comes with its payment's first step never counts;
and workers taking one buyer's orders at once cannot pass the cap together. On both back ends.

These tests fail on the code before the cap (the flood fills the shop, the identified buyer is refused
503, one buyer takes as many deals as it likes). The last three are the holes an adversarial review found
in it on 2026-12-07, each failing on the code before its fix: a refused payment message took a deal off its
buyer's cap; any refused payment message made an abandoned deal count again, and each one grew the deal's
row and the archive; one certificate written out a second way was a second buyer."""
from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres import Storage, storages
from test_commerce_units import _cert, _root
from test_errors import _Module
from test_stateless_offer import NONCE, _anonymous_order, _kinds, _parsed, _rows
from test_tinguin_samples import SoftSigner

from semper.client.commerce import documents as docs
from semper.client.commerce.archive import SharedArchive
from semper.client.commerce.catalogue import demo_catalogue
from semper.client.commerce.errors import CommerceError
from semper.client.exchange.identity import Identity
from semper.client.payment.errors import ProtocolError
from semper.client.payment.manager import MAX_ROUNDS, Handled, PaymentManager
from semper.client.payment.model import Record, Status, Terms
from semper.client.payment.module import PartyContext, Step
from semper.client.payment.modules.purse import PurseModule
from semper.client.payment.sessions import DatabaseSessions
from semper.client.servers import shop as shop_module
from semper.client.servers.shop import KEPT_REFUSALS, DealAbandoned, Shop
from semper.client.support.cms import sign_statement
from semper.client.support.db import Database
from semper.client.support.trust import TrustStore

MAX_OPEN = 20               # the shop's open-deal limit in these tests: the unsigned orders' share is 2
CAP = 3                     # deals one certificate may have ordered and not started paying


class _PayeeFlow:
    """The payee's side of a two-message payment, as the card purse's is: a ``hello`` is answered with a
    challenge (the payment has started), a ``proof`` completes it; anything else is refused as the purse
    refuses a message it does not expect (``ProtocolError``, 422 at the shop)."""

    def step(self, incoming: Any) -> Step:
        kind = incoming.get("kind") if isinstance(incoming, dict) else None
        if kind == "hello":
            return Step({"kind": "challenge"})
        if kind == "proof":
            return Step({"kind": "receipt"}, done=True, status=Status.PAID)
        raise ProtocolError(f"expected a 'hello' or a 'proof' message, not {kind!r}")


class _Paying(_Module):
    """The stub module (it offers itself), with a payee flow the payment manager runs for real."""

    def payee_flow(self, terms: Terms) -> _PayeeFlow:
        return _PayeeFlow()


@pytest.fixture()
def pki() -> dict[str, Any]:
    root_key, root = _root("caps root", days=3)
    return {"trust": TrustStore([root]), "seller": SoftSigner(*_cert(root_key, root, "seller", "Teapot Shop")),
            "bob": SoftSigner(*_cert(root_key, root, "person", "Bob Buyer")),
            "alice": SoftSigner(*_cert(root_key, root, "person", "Alice Buyer"))}


@pytest.fixture()
def workers(pki: dict[str, Any], storage: Storage, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Shop]]:
    """``workers(validity=...)``: a worker process of one shop (every call: another worker, one database),
    its payee's sessions in the shop's database as ``semper serve shop`` keeps them; the shop's limit
    :data:`MAX_OPEN` and a certificate's cap :data:`CAP`."""
    monkeypatch.setattr(shop_module, "MAX_OPEN_DEALS", MAX_OPEN)
    monkeypatch.setattr(shop_module, "MAX_UNPAID_PER_BUYER", CAP, raising=False)
    url = storage.url("shop", tmp_path)
    opened: list[Shop] = []

    def make(validity: dt.timedelta = dt.timedelta(minutes=30)) -> Shop:
        db = Database(url)
        s = Shop(name="Teapot Shop", identity=Identity(pki["seller"]), trust=pki["trust"],
                 catalogue=demo_catalogue(), account="A1", archive=SharedArchive(tmp_path / "evidence.sqlite3"),
                 payments=PaymentManager(PartyContext(), modules={"stub": _Paying}, sessions=DatabaseSessions(db)),
                 db=db, offer_validity=validity)
        opened.append(s)
        return s
    yield make
    for s in opened:
        s.db.close()


def _purse_shop(pki: dict[str, Any], db: Database, folder: Path, scheme: Any, psam: Any, **kw: Any
                ) -> tuple[Shop, PaymentManager]:
    """A shop taking the card purse at a simulated PSAM (in process), its payment sessions in ``db``."""
    payments = PaymentManager(PartyContext(psam=psam, currency=978, purse_root=scheme.root_cert),
                              modules={"card-purse": PurseModule}, sessions=DatabaseSessions(db))
    shop = Shop(name="Teapot Shop", identity=Identity(pki["seller"]), trust=pki["trust"], catalogue=demo_catalogue(),
                account="A1", archive=SharedArchive(folder / "evidence.sqlite3"), payments=payments, db=db,
                psam_id=payments.module("card-purse").desk().psam_id(), **kw)
    return shop, payments


def _signed_order(offer: docs.ParsedOffer, signer: SoftSigner, payment: str = "stub") -> bytes:
    body = docs.order_body(offer, payment=payment, payment_label=payment, confirmation_sha256="ab" * 32,
                           scripted=False, action="ORDER_AND_PAY", details=(), attributes=offer.attributes,
                           form={"name": "A Buyer", "street": "1 Main St", "postcode": "12345", "city": "Town",
                                 "country": "DE"})
    return sign_statement(signer, body)


def _order(shop: Shop, who: SoftSigner | None) -> tuple[str, dict[str, Any] | CommerceError]:
    """A new offer and its order, by ``who`` (None: anonymous); the deal id and the answer or the refusal."""
    try:
        deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, who is None)
    except CommerceError as e:
        return "", e
    offer = _parsed(shop, der)
    try:
        return deal_id, shop.order(deal_id, _anonymous_order(offer) if who is None else _signed_order(offer, who),
                                   None, der, tag)
    except CommerceError as e:
        return deal_id, e


def _refused_as_too_many(answer: Any) -> bool:
    return isinstance(answer, CommerceError) and answer.code == "too_many_unpaid_orders" \
        and answer.http_status == 429


def _unpaid(shop: Shop, who: SoftSigner | None) -> int:
    """The buyer's deals that count, as the database has them (not through the code under test)."""
    from semper.client.support.verify import verify_statement
    if who is None:
        row = shop.db.read_one("SELECT COUNT(*) FROM shop_deals WHERE buyer = 'unsigned' AND paid = 0 AND "
                               "started = 0 AND abandoned = 0 AND finished = 0")
    else:
        signer = verify_statement(sign_statement(who, {"type": "probe"}), shop.trust).signer
        row = shop.db.read_one("SELECT COUNT(*) FROM shop_deals WHERE buyer = ? AND paid = 0 AND started = 0 AND "
                               "abandoned = 0 AND finished = 0",
                               (hashlib.sha256(signer.tbs_certificate_bytes).hexdigest(),))
    assert row is not None
    return int(row[0])


@storages()
def test_one_anonymous_client_cannot_keep_buyers_who_sign_out(workers: Callable[..., Shop],
                                                              pki: dict[str, Any]) -> None:
    """The attack: one client orders anonymously, as often as the shop takes it, and never pays. Before the
    cap it filled the shop (MAX_OPEN_DEALS) and the next buyer, anonymous or not, was refused 503."""
    one, two = workers(), workers()
    answers = [_order(one if i % 2 else two, None) for i in range(MAX_OPEN + 1)]
    bob_deal, bob = _order(two, pki["bob"])
    assert isinstance(bob, dict) and bob["next"] == "payment", bob       # before the cap: 503 too many open deals

    taken = [d for d, a in answers if isinstance(a, dict)]
    refused = [(d, a) for d, a in answers if not isinstance(a, dict)]
    assert len(taken) == MAX_OPEN // 10 == 2                              # the unsigned orders' share
    assert all(_refused_as_too_many(a) for _, a in refused), refused
    message = str(refused[0][1])
    assert "2 orders without a buyer's certificate" in message and "pay one" in message \
        and "30 minutes after its offer ends" in message and "signed with your certificate" in message
    # refused before anything was written: no row, no evidence in the archive
    assert _rows(one) == 3 and all(_kinds(one, d) == [] for d, _ in refused)
    assert _kinds(one, taken[0]) == ["statement:offer", "order:unsigned"] and _unpaid(one, None) == 2
    assert one.store.open_count() == 3 and _unpaid(one, pki["bob"]) == 1


@storages()
def test_one_buyer_who_signs_cannot_take_more_than_its_cap(workers: Callable[..., Shop], pki: dict[str, Any]) -> None:
    """A registered buyer (its orders are signed, so it is known) ordering without paying: CAP deals, then
    refused, at every worker; another buyer is not held up by it."""
    one, two = workers(), workers()
    answers = [_order(one if i % 2 else two, pki["bob"]) for i in range(CAP + 3)]
    taken = [d for d, a in answers if isinstance(a, dict)]
    assert len(taken) == CAP, [a for _, a in answers]                      # before the cap: every one taken
    assert all(_refused_as_too_many(a) and f"this buyer has {CAP} orders" in str(a)
               for _, a in answers[CAP:]), answers
    assert _rows(one) == CAP and _unpaid(one, pki["bob"]) == CAP
    _, alice = _order(two, pki["alice"])
    assert isinstance(alice, dict) and alice["next"] == "payment", alice
    _, anonymous = _order(one, None)
    assert isinstance(anonymous, dict), anonymous


@storages()
def test_a_deal_paid_started_or_abandoned_stops_counting_for_its_buyer(
        workers: Callable[..., Shop], pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Bob at his cap pays one deal (room for one more order), starts paying another through ``/deals/pay``
    (the shop learns it when he is at the cap again: room again), and lets the others' offers expire one
    offer validity (abandoned at his next order: room again)."""
    monkeypatch.setattr(shop_module, "SWEEP_EVERY_S", 0.0, raising=False)
    validity = dt.timedelta(seconds=2)
    one, two = workers(validity), workers(validity)
    bob = pki["bob"]
    ordered: list[tuple[str, Terms]] = []
    for shop in (one, two, one):
        deal_id, answer = _order(shop, bob)
        assert isinstance(answer, dict), answer
        ordered.append((deal_id, Terms.from_dict(answer["terms"])))
    assert _refused_as_too_many(_order(two, bob)[1])

    # paid: the payment's last step writes the deal paid (the stub module pays at once)
    (paid, paid_terms), (paying, paying_terms), (idle, _) = ordered

    def step(envelope: dict[str, Any], *, settle: Any = None) -> Handled:
        return Handled({"payment_id": paid_terms.payment_id, "module": "stub", "body": {}},
                       Record(paid_terms.payment_id, "stub", "payee", paid_terms, Status.PAID), False)
    monkeypatch.setattr(one.payments, "handle_step", step)
    done = one.pay_and_deliver(paid, {"payment_id": paid_terms.payment_id, "module": "stub", "body": {}})
    assert done["delivery"] and _unpaid(one, bob) == CAP - 1
    latest, answer = _order(two, bob)
    assert isinstance(answer, dict), answer
    assert _refused_as_too_many(_order(one, bob)[1])

    # started: the payer's first message taken through /deals/pay (its session has a step; the deal's row
    # is not written until the payment completes): found when Bob is at the cap, and no longer counted
    st = one.payments.sessions.get(paying_terms.payment_id)
    assert st is not None
    st.module, st.rounds, st.last_in = "stub", 1, "{}"
    assert one.payments.sessions.save(st, None)
    assert _unpaid(one, bob) == CAP
    last, answer = _order(one, bob)
    assert isinstance(answer, dict), answer
    sd = two.find(paying, fresh=True)
    assert sd is not None and sd.started and not sd.paid and not sd.abandoned
    assert _refused_as_too_many(_order(two, bob)[1])

    # abandoned: every offer Bob did not pay expired one validity ago; his next order finds them so
    newest = max(_parsed(one, s.offer_der).valid_until for s in (one.find(d, fresh=True) for d in (idle, latest, last))
                 if s is not None)
    time.sleep(max(0.0, (newest + validity - dt.datetime.now(dt.UTC)).total_seconds()) + 1.1)
    deal_id, answer = _order(two, bob)
    assert isinstance(answer, dict), answer
    for gone in (idle, latest, last):
        sd = one.find(gone, fresh=True)
        assert sd is not None and sd.abandoned and sd.order_bytes is not None      # kept, not counted
    assert _unpaid(one, bob) == 1 and _rows(one) == 6


@storages()
def test_an_order_that_comes_with_its_first_payment_step_never_counts(
        workers: Callable[..., Shop], pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """With a card, the payer's first message (the hello) comes with the order and is taken in the order's
    transaction: the payment has started, so the deal does not count and the order is not refused, even
    for a buyer at its cap."""
    shop = workers()
    bob = pki["bob"]
    for _ in range(CAP):
        assert isinstance(_order(shop, bob)[1], dict)
    assert _refused_as_too_many(_order(shop, bob)[1])

    def first(terms: Terms, route: Any, envelope: dict[str, Any], *, settle: Any = None) -> Handled:
        record = Record(terms.payment_id, "stub", "payee", terms, Status.PENDING)
        write = settle(record)
        shop.db.run(lambda tx: write(tx))
        return Handled({"payment_id": terms.payment_id, "module": "stub", "body": {"challenge": 1}}, record, True)
    monkeypatch.setattr(shop, "_early", lambda sd, envelope: True)      # the stub module as one that starts early
    monkeypatch.setattr(shop, "_room", lambda sd, envelope: None)
    monkeypatch.setattr(shop.payments, "handle_first", first)
    deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, False)
    hello = {"payment_id": "p", "module": "stub"}
    answer = shop.order(deal_id, _signed_order(_parsed(shop, der), bob), hello, der, tag)
    assert answer["next"] == "payment" and answer["envelope"]["body"] == {"challenge": 1}
    sd = shop.find(deal_id, fresh=True)
    assert sd is not None and sd.started and sd.order_bytes is not None and _unpaid(shop, bob) == CAP


@storages()
def test_workers_taking_one_buyers_orders_at_once_keep_its_cap(workers: Callable[..., Shop],
                                                               pki: dict[str, Any]) -> None:
    """Any worker takes any order: Bob, one below his cap, sends four orders to four workers at the same
    instant; the count is made again in each order's transaction, so exactly one is taken."""
    shops = [workers() for _ in range(4)]
    bob = pki["bob"]
    for i in range(CAP - 1):
        assert isinstance(_order(shops[i % 4], bob)[1], dict)
    prepared = []
    for shop in shops:
        deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, False)
        prepared.append((deal_id, der, tag, _signed_order(_parsed(shop, der), bob)))
    answers: list[Any] = [None] * len(shops)
    go = threading.Barrier(len(shops))

    def take(i: int) -> None:
        deal_id, der, tag, order = prepared[i]
        go.wait(10)
        try:
            answers[i] = shops[i].order(deal_id, order, None, der, tag)
        except CommerceError as e:
            answers[i] = e
    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(shops))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(isinstance(a, dict) for a in answers) == 1, answers
    assert all(_refused_as_too_many(a) for a in answers if not isinstance(a, dict)), answers
    assert _unpaid(shops[0], bob) == CAP and _rows(shops[0]) == CAP


def _message(answer: dict[str, Any], kind: str) -> dict[str, Any]:
    """The payer's message of this ``kind`` for the payment an order's answer set the terms of."""
    return {"payment_id": answer["terms"]["payment_id"], "module": "stub", "body": {"kind": kind}}


def _refused(shop: Shop, deal_id: str, envelope: dict[str, Any]) -> CommerceError:
    with pytest.raises(CommerceError) as e:
        shop.pay_and_deliver(deal_id, envelope)
    return e.value


@storages()
def test_a_refused_payment_message_does_not_take_a_deal_off_its_buyers_cap(
        workers: Callable[..., Shop], pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 2026-12-07, finding 1: a refused payment step still saves the payee's session (its module
    set, one round), and the shop took that for a payment started, so at the cap it took the deal off its
    buyer's cap. One junk ``/deals/pay`` per order (422), and one certificate, or all unsigned orders
    together, took deals without end: the open-deal limit filled and every buyer got 503. A payment
    starts only with a message the payee accepts (here the hello): that does give room for one more."""
    monkeypatch.setattr(shop_module, "SWEEP_EVERY_S", 0.0, raising=False)     # every order at the cap sweeps
    one, two = workers(), workers()
    for who, cap in ((pki["bob"], CAP), (None, MAX_OPEN // 10)):
        taken: list[tuple[str, dict[str, Any]]] = []
        for i in range(MAX_OPEN):
            deal_id, answer = _order(one if i % 2 else two, who)
            if not isinstance(answer, dict):
                assert _refused_as_too_many(answer), answer         # before: taken, one after another
                continue
            taken.append((deal_id, answer))
            refusal = _refused(two if i % 2 else one, deal_id, _message(answer, "junk"))
            assert refusal.http_status == 422 and "expected a 'hello'" in str(refusal)
        assert len(taken) == cap and _unpaid(one, who) == cap, (who, len(taken))
    assert one.store.open_count() == CAP + MAX_OPEN // 10
    alice_deal, alice = _order(two, pki["alice"])                   # before: 503, the shop was full
    assert isinstance(alice, dict) and alice["next"] == "payment", alice

    # Alice's payment starts (its hello accepted): at her cap, that deal stops counting and she orders on
    started = two.pay_and_deliver(alice_deal, _message(alice, "hello"))
    assert started["envelope"]["body"] == {"kind": "challenge"} and "confirmation" not in started
    for _ in range(CAP - 1):
        assert isinstance(_order(one, pki["alice"])[1], dict)
    assert isinstance(_order(two, pki["alice"])[1], dict)           # the sweep found the hello taken
    assert _refused_as_too_many(_order(one, pki["alice"])[1])
    sd = one.find(alice_deal, fresh=True)
    assert sd is not None and sd.started and not sd.paid


@storages()
def test_junk_card_purse_messages_do_not_lift_the_cap(pki: dict[str, Any], storage: Storage, tmp_path: Path,
                                                      scheme: Any, psam: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same attack with the real card purse at a simulated PSAM: the purse's payee refuses a message
    that is not a hello (no PSAM room is taken for it: ``PurseModule.admit`` takes room for hellos only),
    and before the fix each refusal took its deal off the buyer's cap: one certificate filled the shop."""
    monkeypatch.setattr(shop_module, "MAX_OPEN_DEALS", MAX_OPEN)
    monkeypatch.setattr(shop_module, "MAX_UNPAID_PER_BUYER", CAP, raising=False)
    monkeypatch.setattr(shop_module, "SWEEP_EVERY_S", 0.0, raising=False)
    db = Database(storage.url("shop", tmp_path))
    shop, payments = _purse_shop(pki, db, tmp_path, scheme, psam)
    try:
        taken = 0
        for _ in range(MAX_OPEN):
            deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, False)
            try:
                order = _signed_order(_parsed(shop, der), pki["bob"], "card-purse")
                answer = shop.order(deal_id, order, None, der, tag)
            except CommerceError as e:
                assert _refused_as_too_many(e), e           # before: taken, until the shop was full (503)
                continue
            taken += 1
            junk = {"payment_id": answer["terms"]["payment_id"], "module": "card-purse", "body": {"kind": "junk"}}
            assert shop.admit(deal_id, junk)                # what /deals/pay asks first: no room for a non-hello
            assert _refused(shop, deal_id, junk).http_status == 422
        assert taken == CAP and shop.store.open_count() == CAP
        assert payments.module("card-purse").desk().held() == 0
    finally:
        db.close()


@storages()
def test_an_abandoned_deal_stays_abandoned_until_it_is_paid(
        workers: Callable[..., Shop], pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 2026-12-07, finding 2: once abandoned (offer expired one validity ago, not paid), a deal
    counted again after any refused payment message: the shop let every message of a started payment
    through, recorded the refusal on the deal, and every write cleared the mark. So whoever held stalled
    payments put them all back on the open-deal limit at will, and each message appended a decision to the
    row and an entry to the archive, without end (MAX_ROUNDS did not stop it). Now the mark stays until
    the deal is paid, a payment that never started (only refused messages) is refused for the mark, a deal
    keeps at most KEPT_REFUSALS refusals, and a started payment's proof is still taken: paid, confirmed,
    delivered."""
    monkeypatch.setattr(shop_module, "MAX_OPEN_DEALS", 3)
    validity = dt.timedelta(seconds=2)
    one, two = workers(validity), workers(validity)
    bob = pki["bob"]
    deals = []
    for shop in (one, two, one):
        deal_id, answer = _order(shop, bob)
        assert isinstance(answer, dict), answer
        deals.append((deal_id, answer))
    (poked, poked_answer), (late, late_answer), (junked, junked_answer) = deals
    for deal_id, answer in ((poked, poked_answer), (late, late_answer)):     # payments started, then stalled
        assert two.pay_and_deliver(deal_id, _message(answer, "hello"))["envelope"]["body"] == {"kind": "challenge"}
    assert _refused(one, junked, _message(junked_answer, "junk")).http_status == 422   # never started
    with pytest.raises(CommerceError, match="too many open deals"):
        two.new_deal("mail-order", [("teapot", 1)], NONCE, False)

    newest = max(_parsed(one, s.offer_der).valid_until for s in (one.find(d, fresh=True) for d, _ in deals)
                 if s is not None)
    time.sleep(max(0.0, (newest + validity - dt.datetime.now(dt.UTC)).total_seconds()) + 1.1)
    two.new_deal("mail-order", [("teapot", 1)], NONCE, False)      # at the limit: all three abandoned
    assert two.store.open_count() == 0

    # a payment that never started: refused for the mark, nothing asked of the payment (before: 422, counted)
    with pytest.raises(DealAbandoned, match="never started"):
        one.pay_and_deliver(junked, _message(junked_answer, "junk"))
    # a started payment's messages refused, more than MAX_ROUNDS of them, at both workers: each answered
    # 422, the deal stays abandoned and keeps KEPT_REFUSALS refusals (before: counted again at once, one
    # decision and one archive entry more per message)
    for i in range(KEPT_REFUSALS):
        assert _refused(one if i % 2 else two, poked, _message(poked_answer, "junk")).http_status == 422
    kept, archived = _deal(one, poked).deal.decisions, _kinds(one, poked)
    assert [d.verdict for d in kept if d.step == "payment"] == ["refused"] * KEPT_REFUSALS
    assert archived.count("decision") == KEPT_REFUSALS
    for i in range(MAX_ROUNDS):                     # past MAX_ROUNDS too: the manager refuses before the step
        assert _refused(one if i % 2 else two, poked, _message(poked_answer, "junk")).http_status == 422
    assert one.store.open_count() == 0
    sd = _deal(two, poked)
    assert sd.abandoned and not sd.paid
    assert sd.deal.decisions == kept and _kinds(one, poked) == archived      # nothing more kept

    # money stays safe: a started payment's late proof is taken, a refused message before it or not
    assert _refused(two, late, _message(late_answer, "junk")).http_status == 422
    assert one.store.open_count() == 0 and _deal(one, late).abandoned
    done = one.pay_and_deliver(late, _message(late_answer, "proof"))
    assert done["envelope"]["body"] == {"kind": "receipt"} and done["confirmation"] and done["delivery"]
    sd = _deal(two, late)
    assert sd.paid and sd.finished and not sd.abandoned and sd.delivery and one.confirmation_of(sd) == sd.delivery
    assert two.payments.record(late_answer["terms"]["payment_id"], "payee").status is Status.PAID
    assert one.store.open_count() == 0                              # finished: not open either


def _deal(shop: Shop, deal_id: str) -> Any:
    sd = shop.find(deal_id, fresh=True)
    assert sd is not None
    return sd


def _written_again(signer: SoftSigner) -> SoftSigner:
    """The same signer with its certificate written out a second way: the CA's ECDSA signature (r, s) as
    (r, n - s), which verifies as well; nothing else changes, and nobody but the holder is needed."""
    from asn1crypto import algos
    from asn1crypto import x509 as a_x509
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551       # the order of P-256
    cert = a_x509.Certificate.load(signer.cert.public_bytes(Encoding.DER))
    sig = algos.DSASignature.load(cert["signature_value"].native)
    twin = a_x509.Certificate({"tbs_certificate": cert["tbs_certificate"],
                               "signature_algorithm": cert["signature_algorithm"],
                               "signature_value": algos.DSASignature({"r": sig["r"].native,
                                                                      "s": n - sig["s"].native}).dump()})
    return SoftSigner(signer.key, x509.load_der_x509_certificate(twin.dump()))


@storages()
def test_one_certificate_written_out_another_way_is_the_same_buyer(workers: Callable[..., Shop],
                                                                   pki: dict[str, Any]) -> None:
    """Review of 2026-12-07, finding 5: the buyer was the SHA-256 of the certificate's whole DER, and an
    ECDSA signature stays valid with s replaced by n - s, so Bob, writing his own certificate out again,
    was two buyers with twice the cap. The buyer is now the certificate's signed part, which only the CA
    makes."""
    shop = workers()
    bob, twin = pki["bob"], _written_again(pki["bob"])
    assert twin.certificate() != bob.certificate()
    for _ in range(CAP - 1):
        assert isinstance(_order(shop, bob)[1], dict)
    _, answer = _order(shop, twin)                  # the twin verifies and orders, as Bob
    assert isinstance(answer, dict), answer
    assert _unpaid(shop, bob) == CAP
    assert _refused_as_too_many(_order(shop, twin)[1])
    assert _refused_as_too_many(_order(shop, bob)[1])       # before: taken (Bob had CAP - 1 of his own)


class _BouncingFlow:
    def step(self, incoming: Any) -> Any:
        """As the cheque module's payee answers when the bank bounced the cheque: accepted, finished, unpaid."""
        return Step({"kind": "deposited", "answer": {"result": {"state": "bounced"}}}, done=True,
                    status=Status.BOUNCED, evidence={"cheque": "..."})


def test_a_payment_finished_unpaid_does_not_take_its_deal_off_the_cap(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A cheque the bank bounced is a payment the payee accepted and finished, unpaid: it takes no further
    message. It counted as started, so at the cap the deal left its buyer's count: one person certificate
    and one empty bank account took deals until the shop's limit was full and every buyer got 503 (second
    adversarial review of 2026-12-07). A finished payment counts as started only when it paid."""
    class Cheque(_Module):
        def payee_flow(self, terms: Terms) -> _BouncingFlow:
            return _BouncingFlow()
    limit, cap = 20, 3
    monkeypatch.setattr(shop_module, "MAX_OPEN_DEALS", limit)
    monkeypatch.setattr(shop_module, "MAX_UNPAID_PER_BUYER", cap)
    monkeypatch.setattr(shop_module, "SWEEP_EVERY_S", 0.0)
    root_key, root = _root("r", days=3)
    db = Database(f"sqlite:///{tmp_path / 'shop.db'}")
    shop = Shop(name="Teapot Shop", identity=Identity(SoftSigner(*_cert(root_key, root, "seller", "Teapot Shop"))),
                trust=TrustStore([root]), catalogue=demo_catalogue(), account="A1",
                archive=SharedArchive(tmp_path / "ev.sqlite3"),
                payments=PaymentManager(PartyContext(), modules={"stub": Cheque}, sessions=DatabaseSessions(db)),
                db=db)
    mallory = SoftSigner(*_cert(root_key, root, "person", "Mallory"))
    alice = SoftSigner(*_cert(root_key, root, "person", "Alice"))
    taken = 0
    try:
        for _ in range(limit + 5):
            try:
                deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, False)
                answer = shop.order(deal_id, _signed_order(_parsed(shop, der), mallory), None, der, tag)
            except CommerceError as e:
                assert e.code == "too_many_unpaid_orders", e
                break
            taken += 1
            out = shop.pay_and_deliver(deal_id, {"payment_id": answer["terms"]["payment_id"], "module": "stub",
                                                 "body": {"kind": "cheque"}})
            assert "confirmation" not in out                  # bounced: nothing paid
        assert taken == cap
        deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, False)
        assert shop.order(deal_id, _signed_order(_parsed(shop, der), alice), None, der, tag)["next"] == "payment"
    finally:
        db.close()


@storages()
def test_refused_hellos_give_their_psam_room_back(pki: dict[str, Any], storage: Any, tmp_path: Path,
                                                    scheme: Any, psam: Any) -> None:
    db = Database(storage.url("shop", tmp_path))
    shop, payments = _purse_shop(pki, db, tmp_path, scheme, psam)
    desk = payments.module("card-purse").desk()
    try:
        mallory = [pki["bob"], pki["alice"]]             # two certificates: 16 deals within the caps
        for i in range(desk.size):
            deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, False)
            order = _signed_order(_parsed(shop, der), mallory[i % 2], "card-purse")
            answer = shop.order(deal_id, order, None, der, tag)
            pid = answer["terms"]["payment_id"]
            junk = {"payment_id": pid, "module": "card-purse", "body": {"kind": "junk"}}
            for _ in range(MAX_ROUNDS):                  # each 422, no room taken; the session's rounds go up
                with pytest.raises(CommerceError):
                    shop.pay_and_deliver(deal_id, junk)
            hello = {"payment_id": pid, "module": "card-purse",
                     "body": {"kind": "hello", "card": "00" * 8, "counter": 0, "currency": 978, "card_certificate": ""}}
            assert shop.admit(deal_id, hello)           # what /deals/pay does first: room taken
            with pytest.raises(CommerceError) as e:
                shop.pay_and_deliver(deal_id, hello)    # refused by the manager before the purse flow runs
            assert "rounds" in str(e.value)
            assert desk.held() == 0                     # its room given back (it was kept for 60 s)
        desk.admit("honest-payment")                    # an honest buyer's first step finds room
    finally:
        db.close()


@storages()
def test_hellos_for_abandoned_deals_give_their_psam_room_back(pki: dict[str, Any], storage: Any, tmp_path: Path,
                                                  scheme: Any, psam: Any) -> None:
    """The same through today's abandon path: a hello for an abandoned deal whose payment never started is
    refused DealAbandoned before its module or device is asked anything; the slot Shop.admit took for it is
    given back (it was kept for 60 s: 16 such hellos a minute held every slot)."""
    import datetime as dt

    from semper.client.servers.shop import DealAbandoned
    db = Database(storage.url("shop", tmp_path))
    validity = dt.timedelta(seconds=3)        # long enough for each order to find its offer valid on a loaded machine
    shop, payments = _purse_shop(pki, db, tmp_path, scheme, psam, offer_validity=validity)
    desk = payments.module("card-purse").desk()
    try:
        deals, latest = [], dt.datetime.now(dt.UTC)
        for i in range(desk.size):
            deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, False)
            offer = _parsed(shop, der)
            latest = max(latest, offer.valid_until)
            who = [pki["bob"], pki["alice"]][i % 2]
            deals.append((deal_id, shop.order(deal_id, _signed_order(offer, who, "card-purse"), None,
                                              der, tag)["terms"]["payment_id"]))
        # every offer ended one validity ago (abandon's margin), and a second more
        time.sleep(max(0.0, (latest + validity - dt.datetime.now(dt.UTC)).total_seconds()) + 1.1)
        assert shop.store.abandon(dt.datetime.now(dt.UTC) - shop.offer_validity) == desk.size
        for deal_id, pid in deals:
            hello = {"payment_id": pid, "module": "card-purse", "body": {"kind": "hello"}}
            assert shop.admit(deal_id, hello)
            with pytest.raises(DealAbandoned):
                shop.pay_and_deliver(deal_id, hello)
        assert desk.held() == 0
    finally:
        db.close()
