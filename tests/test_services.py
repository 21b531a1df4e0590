"""Downloadable, certified commerce services (issue 16): documents, the certifier, download, enforcement.

One world for the module (CA, bank, third party, the shop with its PSAM as a card image, and the
service certifier, all on loopback HTTPS in this process); the buyer's card is a card image opened
in this process, its user a fixed policy (``bench.policy_ui``) answering the same TrustedUI calls as
the TINGUIN. Services are put in the shop's ``services/`` folder and certified through the
certifier's HTTPS interface, as an operator would; the buyer downloads them from the shop.
Every refusal is checked for its reason and for money: nothing paid, nowhere.
"""
from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from semper.bench.policy_ui import PolicyUI
from semper.client.commerce.services import builtin, interpreter
from semper.client.commerce.services.document import ServiceError, read
from semper.client.commerce.services.download import Decisions, run_downloaded
from semper.client.commerce.services.interpreter import Request
from semper.client.commerce.services.permits import Permit
from semper.client.commerce.setup import BuyerConfig, BuyerSession, open_buyer, register_card
from semper.client.commerce.shop_client import ShopClient
from semper.client.demo_world import CARD_PIN, World
from semper.client.servers.bank_audit import audit
from semper.client.support import pki, prefs
from semper.client.support.channels import JsonClient
from semper.client.support.channels import ServiceError as HttpRefusal
from semper.client.support.cms import parse_statement
from semper.client.tinguin.model import OutcomeStatus
from semper.hardware.simulator import open_card

STEPS = [{"block": "offer", "title": "get this period's signed offer", "evidence": ["offer"]},
         {"block": "confirm", "title": "confirm in the TINGUIN", "evidence": ["confirmation-text"]},
         {"block": "order", "title": "sign and send the order", "evidence": ["order"]},
         {"block": "payment", "title": "pay this period", "evidence": ["payment"]},
         {"block": "confirmation", "title": "check the signed confirmation", "evidence": ["order-confirmation"]},
         {"block": "delivery", "title": "check this period's delivery", "evidence": ["delivery", "delivered-content"]}]
SUBSCRIPTION: dict[str, Any] = {
    "format": "semper-service/1", "name": "tea-news", "version": 1, "title": "Tea market news, each period",
    "description": "The market report, delivered once a period, paid once a period.", "protocol": "mail-order",
    "items": [{"sku": "market-report", "quantity": 1}],
    "payment": {"modules": ["card-purse"], "max_amount": 500, "currency": 978},
    "card_signature": True, "anonymity": False, "steps": STEPS, "repeat": {"periods": 3, "every_seconds": 1}}
PERMITS = {"modules": ["card-purse"], "max_amount": 500, "currency": 978, "card_signature": True,
           "anonymity": False, "max_periods": 3}


@dataclass
class Market:
    world: World
    session: BuyerSession
    ui: PolicyUI
    certifier: Any                       # the open certifier (OpenCertifier)
    folder: Path
    mall: Any = None                     # the mall in this process (servers.mall.Mall), once started

    @property
    def buyer(self) -> Any:
        return self.session.buyer

    @property
    def services(self) -> Path:
        return self.world.shop_dir / "services"

    def money(self) -> dict[str, int]:
        shop = self.world.services.opened_shop.shop
        psam = shop.payments.ctx.psam.desk().info().lifetime_total      # through the PSAM's one owner
        return {**self.world.balances(self.buyer.purse), "psam": psam}

    def admin(self) -> _Admin:
        secret = (self.world.certifier_dir / "admin-secret").read_text().strip()
        return _Admin(self.world.services.certifier, self.world.root_pem, secret)

    def certify(self, doc: dict[str, Any], permits: dict[str, Any] | None = None, days: int = 30) -> bytes:
        answer = self.admin().post("/certify", {"document": doc, "permits": permits or PERMITS, "days": days})
        return base64.b64decode(answer["certificate"])

    def publish(self, doc: dict[str, Any], certificate: bytes | None) -> None:
        self.services.mkdir(exist_ok=True)
        (self.services / f"{doc['name']}.json").write_text(json.dumps(doc, indent=1))
        cert = self.services / f"{doc['name']}.cert"
        cert.unlink(missing_ok=True)
        if certificate is not None:
            cert.write_bytes(certificate)

    def run(self, name: str, **kw: Any) -> Any:
        certifiers = x509.load_pem_x509_certificates((self.world.certifier_dir / "certifier.pem").read_bytes())
        return run_downloaded(self.buyer, name, Request(), root_pem=self.world.root_pem, certifiers=certifiers,
                              decisions=Decisions(self.folder / "prefs.toml"), sleep=lambda s: None, **kw)


class _Admin:
    """The certifier operator's client (bearer secret on every request)."""

    def __init__(self, url: str, root_pem: str, secret: str) -> None:
        self.client = JsonClient(url, root_pem, name="the certifier")
        self.headers = {"Authorization": f"Bearer {secret}"}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.post(path, body, headers=self.headers)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    folder = tmp_path_factory.mktemp("services")
    world = World.create(folder / "w")
    s = world.start_in_process()
    try:
        certifier = world.start_certifier()
        world.buyer_dir.mkdir()
        with open_card(world.buyer_card, sync=False) as card:
            ui = PolicyUI(pin=CARD_PIN, payment="card-purse")
            cfg = BuyerConfig(shop_url=s.shop, ca_root_pem=world.root_pem, archive=world.buyer_dir / "ev.sqlite3",
                              bank_url=s.bank, bank_tls_root=world.bank_tls_root, account=world.accounts["buyer"],
                              patience=2.0)
            session = open_buyer(cfg, ui, card)
            register_card(session, ca_url=s.ca, ca_root_pem=world.root_pem, registration_key=world.registration_key(),
                          name="Bob Buyer", email="bob@buyer.example", save_dir=world.buyer_dir)
            session.buyer.payments.module("card-purse").load(5_000)        # type: ignore[attr-defined]
            yield Market(world, session, ui, certifier, folder)
            session.close()
    finally:
        world.stop()


def _refused(m: Market, name: str, reason: str, before: dict[str, int]) -> str:
    r = m.run(name)
    assert r.status is OutcomeStatus.FAILED and r.deal_id is None, r.summary
    assert r.summary.startswith(f"refused ({reason}):"), r.summary
    assert m.money() == before                                   # nothing paid, anywhere
    return r.summary


# ---- the document and the built-in workflows -----------------------------------------------------------
def test_the_four_workflows_are_documents_within_the_grammar() -> None:
    for name in builtin.NAMES:
        doc = builtin.document(name)
        assert doc.blocks[:2] == ("offer", "confirm")              # the TINGUIN's confirmation follows the offer
        assert read(doc.canonical()).sha256 == doc.sha256          # one byte form, one digest


def test_a_document_cannot_skip_the_confirmation_turn_evidence_off_or_keep_what_its_block_does_not() -> None:
    skip = copy.deepcopy(SUBSCRIPTION)
    skip["steps"] = [s for s in STEPS if s["block"] != "confirm"]
    with pytest.raises(ServiceError, match="the confirmation in the TINGUIN always follows the offer"):
        read(skip)
    off = {**SUBSCRIPTION, "evidence": False}
    with pytest.raises(ServiceError, match="'evidence'"):
        read(off)
    wrong = copy.deepcopy(SUBSCRIPTION)
    wrong["steps"][3]["evidence"] = ["pin"]
    with pytest.raises(ServiceError, match="the payment step cannot keep pin"):
        read(wrong)
    assert Permit(**{**PERMITS, "max_amount": 100}).overreach(read(SUBSCRIPTION)) == [
        "it may ask up to 5.00 EUR a payment, its certificate allows 1.00 EUR"]


# ---- certification -------------------------------------------------------------------------------------------
def test_the_certifier_refuses_to_certify_an_over_reaching_document(market: Market) -> None:
    with pytest.raises(HttpRefusal) as e:
        market.certify(SUBSCRIPTION, {**PERMITS, "modules": ["cheque"]})
    assert e.value.status == 422 and "would pay with card-purse" in str(e.value)
    key = (market.world.certifier_dir / "certifier.pem").read_bytes()
    eku = x509.load_pem_x509_certificate(key).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [o.dotted_string for o in eku] == [pki.ROLES["certifier"].role_oid]       # its own key usage


# ---- a new service, downloaded and run end to end ---------------------------------------------------------
def test_a_subscription_the_client_never_saw_runs_end_to_end_after_download(market: Market) -> None:
    m = market
    m.publish(SUBSCRIPTION, m.certify(SUBSCRIPTION))
    before = m.money()
    shown = len(m.ui.services)
    r = m.run("tea-news")
    assert r.status is OutcomeStatus.SATISFIED, r.summary
    assert len(r.periods) == 3 and all(p.ok and p.payment is not None for p in r.periods)
    assert "3 of 3 periods delivered, one payment each (12.00 EUR in all)" in r.summary
    assert len({p.deal_id for p in r.periods}) == 3                 # one deal, one payment per period
    after = m.money()
    assert after["buyer purse"] == before["buyer purse"] - 3 * 400
    assert after["psam"] == before["psam"] + 3 * 400
    # the TINGUIN showed the service once, with what its certificate allows; the decision is in the prefs
    assert len(m.ui.services) == shown + 1
    view = m.ui.services[-1]
    assert view.name == "tea-news" and ("may pay with", "card-purse; at most 5.00 EUR a payment") in view.may
    decisions = prefs.load(m.folder / "prefs.toml").values
    assert list(decisions.values()) == ["allow"]
    again = m.run("tea-news")                                        # allowed once: not asked again
    assert again.ok and len(m.ui.services) == shown + 1
    assert audit(m.world.bank.db, m.world.bank.scheme_root).violations == []


def test_a_refused_service_is_remembered_and_not_run(market: Market) -> None:
    m = market
    doc = {**copy.deepcopy(SUBSCRIPTION), "name": "tea-digest", "repeat": None}
    m.publish(doc, m.certify(doc))
    before = m.money()
    m.ui.allow_service = False
    try:
        r = m.run("tea-digest")
    finally:
        m.ui.allow_service = True
    assert r.status is OutcomeStatus.CANCELLED and "you refused the service 'tea-digest'" in r.summary
    shown = len(m.ui.services)
    again = m.run("tea-digest")
    assert again.status is OutcomeStatus.CANCELLED and "before" in again.summary and len(m.ui.services) == shown
    assert m.money() == before


# ---- refusals: each named, nothing paid ---------------------------------------------------------------------
def test_a_tampered_service_is_refused(market: Market) -> None:
    m = market
    doc = {**copy.deepcopy(SUBSCRIPTION), "name": "tea-tampered"}
    cert = m.certify(doc)
    doc["payment"]["max_amount"] = 400                    # even a change that asks less is not what was certified
    m.publish(doc, cert)
    assert "is not the one that was certified" in _refused(m, "tea-tampered", "tampered", m.money())


def test_an_uncertified_service_is_refused(market: Market) -> None:
    m = market
    doc = {**copy.deepcopy(SUBSCRIPTION), "name": "tea-uncertified"}
    m.publish(doc, None)
    assert "without a certificate" in _refused(m, "tea-uncertified", "uncertified", m.money())
    # a "certificate" the seller signed itself: its key has no certifier role
    body = json.loads(json.dumps({"type": "service-certificate", "serial": "AB" * 16, "service": doc["name"],
                                  "version": 1, "document_sha256": read(doc).sha256, "permits": PERMITS,
                                  "not_before": "2020-01-01T00:00:00Z", "not_after": "2099-01-01T00:00:00Z",
                                  "revocations": m.world.services.certifier + "/revocations"}))
    m.publish(doc, m.world.services.opened_shop.shop.identity.sign(body))
    assert "not a service certifier" in _refused(m, "tea-uncertified", "uncertified", m.money())


def test_an_expired_service_certificate_is_refused(market: Market) -> None:
    m = market
    doc = {**copy.deepcopy(SUBSCRIPTION), "name": "tea-expired"}
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    m.publish(doc, m.certifier.certifier.certify(doc, PERMITS, days=2, not_before=old))
    assert "not now" in _refused(m, "tea-expired", "expired", m.money())


def test_a_revoked_service_is_refused(market: Market) -> None:
    m = market
    doc = {**copy.deepcopy(SUBSCRIPTION), "name": "tea-revoked"}
    cert = m.certify(doc)
    m.publish(doc, cert)
    serial = parse_statement(cert).body["serial"]
    m.admin().post("/revoke", {"serial": serial, "reason": "it charged twice per period"})
    summary = _refused(m, "tea-revoked", "revoked", m.money())
    assert serial in summary and "it charged twice per period" in summary


def test_an_over_reaching_service_is_refused_at_download(market: Market) -> None:
    """A certificate the certifier's key signed without its evaluation (a careless operator): the document
    asks more than the certificate allows, and the client finds it."""
    m = market
    doc = {**copy.deepcopy(SUBSCRIPTION), "name": "tea-greedy"}
    now = dt.datetime.now(dt.UTC)
    body = {"type": "service-certificate", "serial": "CD" * 16, "service": doc["name"], "version": 1,
            "document_sha256": read(doc).sha256, "permits": {**PERMITS, "max_amount": 100},
            "not_before": (now - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "not_after": (now + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "revocations": m.world.services.certifier + "/revocations"}
    m.publish(doc, m.certifier.certifier.identity.sign(body))
    assert "its certificate allows 1.00 EUR" in _refused(m, "tea-greedy", "over-reaching", m.money())


def test_the_interpreter_enforces_the_certificate_whatever_the_document_or_the_seller_says(market: Market) -> None:
    """A certified service whose seller asks more than the certificate allows (17.80 for a service
    certified for 5.00 a payment): refused at run time, after the offer and before the TINGUIN's
    confirmation, the order or the payment; the refusal is a local decision in the deal's evidence."""
    m = market
    doc = {**copy.deepcopy(SUBSCRIPTION), "name": "tea-samplers", "items": [{"sku": "tea-sampler", "quantity": 2}],
           "repeat": None}
    m.publish(doc, m.certify(doc))
    before = m.money()
    confirmations = len(m.ui.confirmations)
    r = m.run("tea-samplers")
    assert r.status is OutcomeStatus.FAILED, r.summary
    assert "not permitted to ask 17.80 EUR (its certificate allows at most 5.00 EUR)" in r.summary
    assert len(m.ui.confirmations) == confirmations and m.money() == before
    kept = [json.loads(e.content) for e in m.buyer.archive.entries(r.deal_id) if e.kind == "decision"]
    assert any(d.get("step") == "service" and d.get("verdict") == "refused" for d in kept), kept
    # and a document run under a narrower permit than it declares: the payment module is not permitted
    narrow = Permit(**{**PERMITS, "modules": ["cheque"]})
    r = interpreter.run(m.buyer, read({**SUBSCRIPTION, "repeat": None}), Request(), narrow)
    assert r.status is not OutcomeStatus.SATISFIED and m.money() == before


# ---- the electronic mall ---------------------------------------------------------------------------------------
ADDRESS = {"name": "Bob Buyer", "street": "1 Main Street", "postcode": "12345", "city": "Teatown", "country": "de"}
MALL_BASKET: dict[str, Any] = {
    "format": "semper-service/1", "name": "mall-basket", "version": 1, "title": "Tea Mall basket",
    "description": "One order and one payment for goods of several shops; the mall settles with each shop.",
    "protocol": "mail-order", "payment": {"modules": ["cheque", "setpay"], "max_amount": 10_000, "currency": 978},
    "card_signature": True, "anonymity": False,
    "steps": STEPS + [{"block": "shop-parts", "title": "check each shop's part",
                       "evidence": ["mall-part", "delivery"]}]}
MALL_PERMITS = {"modules": ["cheque", "setpay"], "max_amount": 10_000, "currency": 978, "card_signature": True,
                "anonymity": False, "max_periods": 1}


def _mall(m: Market) -> Any:
    """The mall over both shops (started once for the module), its basket service certified and published."""
    if not m.world.services.mall:
        m.mall = m.world.start_mall()
        services = m.world.folder / "mall" / "services"
        services.mkdir(exist_ok=True)
        (services / "mall-basket.json").write_text(json.dumps(MALL_BASKET))
        (services / "mall-basket.cert").write_bytes(m.certify(MALL_BASKET, MALL_PERMITS))
    return m.mall


MALL_ANSWER_S = 120.0       # how long the buyer waits for each of the mall's answers here


def _buy_at_mall(m: Market, url: str) -> Any:
    """The buyer runs the mall's basket service (one teapot, one kettle), paying the mall by cheque.

    Why the buyer waits up to :data:`MALL_ANSWER_S` for each answer (its client's default is 15 s): the
    mall settles with the shops inside the payment request, which a loaded machine can stretch past
    15 s, and a request the buyer gave up on goes on in the mall. The restart tests need the first mall
    done when this returns: asked while it still settled, the restarted mall bought the kettle part
    again while the first one bought it (the second cheque bounced; the delivery was not shipped)."""
    b = m.buyer
    shop, b.shop = b.shop, ShopClient(url, m.world.root_pem, timeout=MALL_ANSWER_S)
    m.ui.payment = "cheque"
    try:
        certifiers = x509.load_pem_x509_certificates((m.world.certifier_dir / "certifier.pem").read_bytes())
        return run_downloaded(b, "mall-basket", Request([("teapots--teapot", 1), ("kettles--kettle", 1)], ADDRESS),
                              root_pem=m.world.root_pem, certifiers=certifiers,
                              decisions=Decisions(m.folder / "prefs.toml"))
    finally:
        b.shop.close()
        b.shop = shop
        m.ui.payment = "card-purse"


def test_the_mall_takes_one_payment_and_settles_with_two_shops(market: Market) -> None:
    """The mall as a downloaded service: its index lists both shops' goods; the buyer signs one order and
    pays once; the mall buys each shop's part for the buyer; each shop's signed delivery note and the
    mall's statement for its part are checked and kept; money is conserved (semper audit)."""
    import os
    import subprocess
    import sys
    m = market
    _mall(m)
    url = m.world.services.mall
    with JsonClient(url, m.world.root_pem, name="the mall") as c:
        index = c.get("/mall/index")
    assert {s["name"] for s in index["shops"]} == {"Teapot Shop", "Kettle Shop"}
    assert {"teapots--teapot", "kettles--kettle"} <= {i["sku"] for i in index["items"]}
    before = m.money()
    r = _buy_at_mall(m, url)
    assert r.status is OutcomeStatus.SATISFIED, r.summary
    assert "by 2 shops, each part signed by its shop" in r.summary
    after = m.money()
    assert after["buyer account"] == before["buyer account"] - (1250 + 2490)      # one payment, to the mall
    assert after["mall account"] == before["mall account"]                        # all of it settled to the shops
    assert after["seller account"] == before["seller account"] + 1250
    assert after["shop2 account"] == before["shop2 account"] + 2490
    kinds = [e.kind for e in r.evidence]
    assert kinds.count("statement:mall-part") == 2 and kinds.count("statement:delivery") == 3, kinds
    env = {**os.environ, "SEMPER_HOME": str(m.folder / "home")}
    audited = subprocess.run([sys.executable, "-m", "semper.client.cli", "audit", "--bank-dir",
                              str(m.world.bank_dir), "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert audited.returncode == 0, audited.stdout[-2000:] + audited.stderr[-2000:]
    assert json.loads(audited.stdout)["violations"] == []


def _mall_again(mall: Any) -> Any:
    """Another mall process on the same database and archives (nothing of the first one's memory)."""
    from semper.client.servers.mall import Mall
    return Mall(shops=mall.shops, agents=mall.agents, name=mall.name, identity=mall.identity, trust=mall.trust,
                db=mall.db, catalogue=mall.catalogue, payments=mall.payments, account=mall.account,
                archive=mall.archive)


def _restarted_mall(m: Market, mall: Any, tls_name: str) -> ShopClient:
    """A new mall process on the old one's database and archives (nothing of its memory), serving on a port of
    its own; a client to it."""
    from semper.client.servers.ca_home import issue_tls_identity
    from semper.client.servers.mall import mount_mall
    from semper.client.servers.shop_http import build_app
    from semper.client.support.channels import server_context
    from semper.client.support.http_service import ServiceRunner
    again = _mall_again(mall)
    app = build_app(again)
    mount_mall(app, again)
    tls = issue_tls_identity(m.world.ca, ("127.0.0.1", "localhost"), m.folder / tls_name, name=mall.name)
    runner = ServiceRunner(app, "127.0.0.1", 0, server_context(*tls)).start()
    m.world.services.runners.append(runner)
    return ShopClient(runner.url, m.world.root_pem)


def _bought_with_the_kettle_shop_down(m: Market, mall: Any, note: str) -> tuple[Any, dict[str, int]]:
    """The buyer pays the mall for a teapot and a kettle while the kettle shop is down: the teapot part is
    settled, nothing shipped; (the buyer's result, the money before). The kettle shop's port is held bound
    and not listening for the whole purchase, so every connection to it is refused at once: a port given
    back before (as this test did) can be taken by any process meanwhile, and an answer that does not
    come outlasts the buyer's patience, leaving the first mall settling while the test asks the second."""
    import socket
    kettles = mall.agents["kettles"]
    m.world.bank.cash_in(m.world.accounts["buyer"], 1250 + 2490, note)
    before = m.money()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        down = f"https://127.0.0.1:{held.getsockname()[1]}"
        reachable, kettles.shop = kettles.shop, ShopClient(down, m.world.root_pem)
        try:
            r = _buy_at_mall(m, m.world.services.mall)
        finally:
            kettles.shop.close()
            kettles.shop = reachable
    assert r.status is not OutcomeStatus.SATISFIED and r.deal_id, r.summary       # paid, nothing shipped yet
    assert m.money()["seller account"] == before["seller account"] + 1250         # the teapot part is settled
    return r, before


def _decisions(mall: Any, deal_id: str) -> list[Any]:
    """The mall's decisions on the deal as its database has them (why a settlement did not ship)."""
    sd = mall.find(deal_id, fresh=True)
    return [] if sd is None else [(d.step, d.verdict, d.reason) for d in sd.deal.decisions]


def test_a_restarted_mall_pays_no_shop_twice(market: Market) -> None:
    """The mall settles with the teapot shop, cannot reach the kettle shop (the buyer's delivery is not
    shipped), and is restarted; the buyer asks the new process for the delivery: it buys only the kettle
    part. What the mall settled is in its database, not in the memory of the process that settled it:
    the teapot shop is paid once, the mall's account ends where it began."""
    m = market
    mall = _mall(m)
    r, before = _bought_with_the_kettle_shop_down(m, mall, "the buyer's second basket")
    client = _restarted_mall(m, mall, "mall-again-tls")
    try:
        shipped = client.post("/deals/delivery", {"deal": r.deal_id})          # the buyer asks again
        after = m.money()
        assert after["seller account"] == before["seller account"] + 1250, "the teapot shop was paid twice"
        assert shipped.get("shipped") is True, (shipped, _decisions(mall, r.deal_id))
        parts = client.get(f"/mall/parts/{r.deal_id}")["parts"]
    finally:
        client.close()
    assert sorted(p["shop"] for p in parts) == ["Kettle Shop", "Teapot Shop"]
    assert after["shop2 account"] == before["shop2 account"] + 2490
    assert after["mall account"] == before["mall account"]
    assert after["buyer account"] == before["buyer account"] - (1250 + 2490)


def test_a_mall_asked_for_a_delivery_another_process_made_answers_from_the_database(market: Market) -> None:
    """Two mall processes on one database (a restart that overlaps the old process's last request; or two
    requests of one deal in one process): one holds the deal as it read it, paid and not shipped, while
    the other settles and ships it. Asked for the delivery, the first settled nothing (its write lost to
    the other's) and answered "not shipped" from its own stale copy; it answers from the deal as the
    database has it now: the delivery note the other signed. No shop is paid twice."""
    m = market
    mall = _mall(m)
    r, before = _bought_with_the_kettle_shop_down(m, mall, "the buyer's fourth basket")
    other = _mall_again(mall)
    stale = other.find(r.deal_id, fresh=False)                # what this process read (and remembers)
    assert stale is not None and stale.paid and stale.delivery is None
    note, _ = mall.deliver(r.deal_id)                         # the first process settles and ships
    assert note is not None, _decisions(mall, r.deal_id)
    assert other.deliver(r.deal_id) == (note, None)          # the second: shipped, the same note
    after = m.money()
    assert after["seller account"] == before["seller account"] + 1250
    assert after["shop2 account"] == before["shop2 account"] + 2490
    assert after["mall account"] == before["mall account"]


def test_a_mall_that_stopped_between_paying_a_shop_and_recording_it_does_not_pay_it_again(market: Market) -> None:
    """The mall pays the teapot shop and stops before it writes that part down (the process dies there:
    here the part store raises). The restarted mall, asked for the delivery, finds the purchase it had
    started (recorded with the shop's deal id before anything was paid), asks the teapot shop, which holds
    it paid, takes its verified confirmation and delivery note, and buys only the kettle part. (It bought
    the teapot part again before: the teapot shop was paid twice.)"""
    m = market
    mall = _mall(m)

    class Died(Exception):
        pass

    def die(deal_id: str, part: Any) -> None:
        raise Died("the mall's process died here")
    mall.parts.add = die
    m.world.bank.cash_in(m.world.accounts["buyer"], 1250 + 2490, "the buyer's third basket")
    before = m.money()
    try:
        r = _buy_at_mall(m, m.world.services.mall)
    finally:
        del mall.parts.add
    assert r.status is not OutcomeStatus.SATISFIED and r.deal_id, r.summary
    assert m.money()["seller account"] == before["seller account"] + 1250          # the teapot shop was paid
    client = _restarted_mall(m, mall, "mall-third-tls")
    try:
        shipped = client.post("/deals/delivery", {"deal": r.deal_id})           # the buyer asks again
        after = m.money()
        parts = client.get(f"/mall/parts/{r.deal_id}")["parts"] if shipped.get("shipped") else []
    finally:
        client.close()
    assert after["seller account"] == before["seller account"] + 1250, "the teapot shop was paid twice"
    assert shipped.get("shipped") is True, shipped
    assert sorted(p["shop"] for p in parts) == ["Kettle Shop", "Teapot Shop"]
    assert after["shop2 account"] == before["shop2 account"] + 2490
    assert after["mall account"] == before["mall account"]
    assert after["buyer account"] == before["buyer account"] - (1250 + 2490)


def _apart(monkeypatch: pytest.MonkeyPatch, mall: Any, *deal_ids: str) -> None:
    """Give these deals settlement locks of their own. The mall tells deals settling at once apart by one of
    :data:`~semper.client.servers.mall.LOCKS` locks chosen by the deal id's hash (randomised per process):
    two deals on one lock settle one after the other, and a test that makes them settle at once would wait
    for nothing. As many locks as make their indices differ: the same striping, a different count."""
    import threading

    from semper.client.servers import mall as mall_module
    count = next(n for n in range(mall_module.LOCKS, 4 * mall_module.LOCKS)
                 if len({hash(d) % n for d in deal_ids}) == len(deal_ids))
    monkeypatch.setattr(mall_module, "LOCKS", count)                  # read at each settlement
    monkeypatch.setattr(mall, "_settling", tuple(threading.Lock() for _ in range(count)))


def test_two_baskets_settling_with_one_shop_at_once_each_take_their_own_shop_answers(
        market: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two buyers' baskets settle with the kettle shop at once (the mall answers both asks for delivery in
    its thread pool), through the mall's one purchasing agent for that shop. Forced order: the first
    settlement pays the shop and waits; the second pays; the first then reads its confirmation. The shop's
    answers to a payment (its confirmation, its delivery note) belonged to the agent, so the first
    settlement took the second's confirmation as its own, refused it as another deal's, and did not ship.
    Each settlement keeps its own answers: both ship at once, each part's documents are its own shop deal's,
    no decision against the shop in the agent's archive, every shop paid once."""
    import threading

    from semper.client.commerce import blocks
    m = market
    mall = _mall(m)
    r1, before = _bought_with_the_kettle_shop_down(m, mall, "the buyer's fifth basket")
    r2, _ = _bought_with_the_kettle_shop_down(m, mall, "the buyer's sixth basket")
    _apart(monkeypatch, mall, r1.deal_id, r2.deal_id)
    kettles = mall.agents["kettles"]
    wait_s = 60.0
    lock = threading.Lock()
    payers: list[int] = []                     # the settlements' threads, in the order their payments ended
    both_paid, first_read = threading.Event(), threading.Event()
    forced: list[str] = []
    real_pay, real_fetch = blocks.pay, blocks.fetch_confirmation

    def pay(b: Any, *args: Any, **kw: Any) -> Any:
        out = real_pay(b, *args, **kw)
        if b is kettles:
            with lock:
                payers.append(threading.get_ident())
                if len(payers) == 2:
                    both_paid.set()
        return out

    def fetch_confirmation(b: Any, *args: Any, **kw: Any) -> Any:
        if b is not kettles:
            return real_fetch(b, *args, **kw)
        if payers and payers[0] == threading.get_ident():          # paid first: reads after the second paid
            forced.append("first waited" if both_paid.wait(wait_s) else "first: the second never paid")
            try:
                return real_fetch(b, *args, **kw)
            finally:
                first_read.set()
        forced.append("second waited" if first_read.wait(wait_s) else "second: the first never read")
        return real_fetch(b, *args, **kw)

    monkeypatch.setattr(blocks, "pay", pay)
    monkeypatch.setattr(blocks, "fetch_confirmation", fetch_confirmation)
    answers: dict[str, Any] = {}

    def ask(deal_id: str) -> None:
        c = ShopClient(m.world.services.mall, m.world.root_pem, timeout=MALL_ANSWER_S)
        try:
            answers[deal_id] = c.post("/deals/delivery", {"deal": deal_id})           # the buyer asks again
        except Exception as e:                     # said in the assertion below, not lost in the thread
            answers[deal_id] = {"error": repr(e)}
        finally:
            c.close()
    threads = [threading.Thread(target=ask, args=(r.deal_id,)) for r in (r1, r2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * wait_s + MALL_ANSWER_S)
    assert not any(t.is_alive() for t in threads), "a settlement did not end"
    assert sorted(forced) == ["first waited", "second waited"], forced         # the interleaving happened
    for r in (r1, r2):
        assert answers[r.deal_id].get("shipped") is True, (answers[r.deal_id], _decisions(mall, r.deal_id)[-2:])
    after = m.money()
    assert after["shop2 account"] == before["shop2 account"] + 2 * 2490            # each kettle part paid once
    assert after["seller account"] == before["seller account"] + 2 * 1250
    assert after["mall account"] == before["mall account"]
    for r in (r1, r2):
        part = mall.parts.of(r.deal_id)["kettles"]
        assert part.deal is not None
        assert parse_statement(part.documents["delivery"]).body["deal"] == part.deal
        entries = kettles.archive.entries(part.deal)
        assert [e.kind for e in entries if e.kind == "decision"] == [], [e.content for e in entries]
        for e in entries:
            if e.kind in ("statement:order-confirmation", "statement:delivery"):
                assert parse_statement(e.content).body["deal"] == part.deal, e.kind
