"""Issue 14, item 3: ``semper serve shop --workers N``: several worker processes on one socket, the PSAM in a
device process of its own, the deals in the database.

* A worker killed with SIGKILL in the middle of a purchase loses nothing: the buyer's retry reaches
  another worker (or the one the parent started again), which finishes the same deal from the
  database; money is conserved to the cent (the chaos runner's checks).
* The PSAM's room rule holds across the workers: with 17 payments saying hello at once to two workers,
  some to ``/deals/pay`` after their order and some with their order, each naming a card of its own, those
  the PSAM has room for get its challenge and the rest are refused before the PSAM (or any card) is asked;
  the PSAM began exactly one request per challenge, so none was evicted.
* So does the cap of open debits per card (``psam_desk.CARD_OPEN_CAP``): hellos at once to two workers,
  all naming one genuine card, get at most the cap's challenges.
"""
from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from workers import WorkerKiller, children

from semper.chaos.plan import Fault, RunPlan
from semper.chaos.proxy import LinkFault
from semper.chaos.runner import ADDRESS, run_one

WORKERS = 2


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from semper.chaos.market import Market
    m = Market.create(tmp_path_factory.mktemp("workers") / "world", patience=2.0)
    shop = m.services["shop"]
    shop.stop()
    shop.argv = [*shop.argv, "--workers", str(WORKERS)]
    m.proxies["shop"].retarget(shop.start())
    yield m
    m.close()


def test_the_shop_runs_as_workers_beside_its_psam_device(market: Any) -> None:
    shop = market.services["shop"]
    assert len(children(shop.proc.pid)) == WORKERS
    sock = market.world.shop_dir / "run" / "psam-0.sock"
    assert sock.exists() and (sock.stat().st_mode & 0o777) == 0o600
    assert (sock.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode,at,delay", [("up", 3, 0.0), ("during", 3, 4.0), ("during", 3, 12.0), ("up", 2, 0.0),
                                           ("during", 2, 6.0)])
def test_a_worker_killed_mid_purchase_loses_nothing(market: Any, tmp_path: Path, mode: str, at: int,
                                                    delay: float) -> None:
    shop = market.services["shop"]
    proxy = market.proxies["shop"]
    killer = WorkerKiller(shop)
    before = children(shop.proc.pid)
    proxy.party = killer
    try:
        plan = RunPlan(5, "mail-order", "card-purse", (Fault("crash", "shop", mode, at, delay),))
        report = run_one(market, plan, 0, tmp_path / "bundles")
    finally:
        proxy.party = shop
    assert report.violations == [], report.line()
    assert len(killer.killed) == 1 and killer.killed[0] in before, report.line()
    # the buyer's retry reached another worker, which finished the same deal
    assert report.results == ["satisfied"] and [d.outcome for d in report.deals] == ["satisfied"], report.line()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:                  # the parent started a worker in the dead one's place
        now = children(shop.proc.pid)
        if len(now) == WORKERS and killer.killed[0] not in now:
            break
        time.sleep(0.2)
    assert len(now) == WORKERS and killer.killed[0] not in now


def _genuine_cards(market: Any, n: int) -> list[tuple[str, str]]:
    """``n`` cards the purse scheme certified (card number hex, certificate base64), as anyone who saw their
    hellos holds them: a hello needs no more to pass the shop's check of its certificate."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from semper.client.support.scheme import ROLE_PURSE_CARD
    cards = []
    for _ in range(n):
        number = os.urandom(8).hex().upper()
        cert = market.world.scheme.certify(ec.generate_private_key(ec.SECP256R1()).public_key(),
                                           f"semper purse card {number}", number, ROLE_PURSE_CARD)
        cards.append((number, base64.b64encode(cert.public_bytes(Encoding.DER)).decode()))
    return cards


def _hellos_at_once(market: Any, deals: list[tuple[str, dict[str, Any], dict[str, str]]],
                    cards: list[tuple[str, str]]) -> dict[int, Any]:
    """Each deal's hello (the i-th naming cards[i]) sent at once, to ``/deals/order`` with its order when the
    deal has not been ordered yet, else to ``/deals/pay``: the shop's answer or ServiceError for each."""
    from semper.client.support.channels import JsonClient, ServiceError
    url = f"https://127.0.0.1:{market.services['shop'].port}"
    answers: dict[int, Any] = {}
    go = threading.Barrier(len(deals))

    def hello(i: int, deal: str, terms: dict[str, Any], order: dict[str, str]) -> None:
        card, certificate = cards[i]
        body = {"kind": "hello", "card": card, "counter": 1 + i, "currency": terms["currency"],
                "card_certificate": certificate}
        envelope = {"payment_id": terms["payment_id"], "module": "card-purse", "body": body}
        with JsonClient(url, market.world.root_pem, timeout=30, name="the shop") as c:
            go.wait(30)
            try:
                if order:
                    answers[i] = c.post("/deals/order", {"deal": deal, **order, "envelope": envelope})
                else:
                    answers[i] = c.post("/deals/pay", {"deal": deal, "envelope": envelope})
            except ServiceError as e:
                answers[i] = e
    threads = [threading.Thread(target=hello, args=(i, d, t, o)) for i, (d, t, o) in enumerate(deals)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def _challenged(answer: Any) -> bool:
    return isinstance(answer, dict) and answer.get("envelope", {}).get("body", {}).get("kind") == "challenge"


def _ordered_deal(market: Any, send: bool = True) -> tuple[str, dict[str, Any], dict[str, str]]:
    """A mail-order deal paid from the purse: (deal id, its payment terms, the order request's fields: the
    signed order, the offer and its tag, in base64). With ``send`` it is ordered (no fields); else the
    order is signed and not sent, and the terms are those it will have (the payment id the order fixes)."""
    from semper.client.commerce import blocks
    from semper.client.commerce import documents as docs
    from semper.client.commerce.deal import deal_attributes
    from semper.client.tinguin.model import Action
    b = market.buyer
    market.ui.payment = "card-purse"
    deal, offer, vs = blocks.get_offer(b, "mail-order", [("teapot", 1)], deal_attributes("mail-order"))
    c = blocks.review_and_confirm(b, deal, offer, vs, ADDRESS, Action.ORDER_AND_PAY, "card-purse")
    order = blocks.make_order(b, deal, offer, c)
    if not send:
        pid = docs.payment_id_for(deal.deal_id, docs.sha256_hex(order))
        return deal.deal_id, {"payment_id": pid, "currency": offer.currency}, {
            "order": blocks.b64(order), "offer": blocks.b64(offer.der), "offer_tag": offer.tag}
    answer = blocks.send_order(b, deal, offer, order)
    assert answer["next"] == "payment"
    return deal.deal_id, dict(answer["terms"]), {}


@pytest.mark.timeout(180)
def test_the_card_cap_holds_across_workers(market: Any) -> None:
    """Card certificates are public, so hellos naming one genuine card came to both workers at once; the
    PSAM's device keeps the cap for all of them: at most CARD_OPEN_CAP get the PSAM's challenge, the others
    are refused before the PSAM is asked, with words the buyer can act on. Leaves the cap's debits open
    (for STALE_AFTER): the next test counts them."""
    from semper.client.payment.psam_desk import CARD_OPEN_CAP
    from semper.client.servers.psam_device import PsamDeviceClient
    from semper.client.support.channels import ServiceError
    deals = [_ordered_deal(market, send=i % 3 != 0) for i in range(CARD_OPEN_CAP + 4)]
    device = PsamDeviceClient(market.world.shop_dir / "run" / "psam-0.sock")
    assert device.held() == 0                      # every earlier purchase of this module finished
    start = device.info()
    victim = _genuine_cards(market, 1)[0]
    answers = _hellos_at_once(market, deals, [victim] * len(deals))
    challenged = [a for a in answers.values() if _challenged(a)]
    assert len(answers) == len(deals) and len(challenged) == CARD_OPEN_CAP, answers
    # refused at /deals/pay as the shop refuses a payment message, in the desk's words (the order with its hello
    # is answered without the challenge, as with any refused hello)
    refused = [a for i, a in answers.items() if isinstance(a, ServiceError)]
    assert refused and all(e.status == 422 and e.code == "payment_refused" and "already has a payment open" in e.message
                           for e in refused), refused
    assert all(isinstance(a, ServiceError) or _challenged(a) or a["next"] == "payment" for a in answers.values())
    end = device.info()
    assert end.sequence - start.sequence == CARD_OPEN_CAP and device.held() == CARD_OPEN_CAP


@pytest.mark.timeout(180)
def test_the_psam_room_rule_holds_across_workers(market: Any) -> None:
    """Run last in this module: the payments it leaves open keep the PSAM's room for a minute."""
    from semper.client.payment.psam_desk import CARD_OPEN_CAP
    from semper.client.servers.psam_device import PsamDeviceClient
    from semper.client.support.channels import ServiceError
    # every third hello comes with its order (one request: the order's answer carries the challenge)
    deals = [_ordered_deal(market, send=i % 3 != 0) for i in range(17)]
    device = PsamDeviceClient(market.world.shop_dir / "run" / "psam-0.sock")
    room = 16 - device.held()          # the card cap's test left CARD_OPEN_CAP open, unless they went stale
    assert room in (16 - CARD_OPEN_CAP, 16)
    start = device.info()
    # a genuine card of its own in every hello (the shop checks a hello's card certificate before it asks the
    # PSAM, so a made-up card takes no room: test_orders_with_made_up_card_hellos_do_not_block_card_payments;
    # and one card holds at most CARD_OPEN_CAP: test_the_card_cap_holds_across_workers)
    answers = _hellos_at_once(market, deals, _genuine_cards(market, len(deals)))
    challenges = [a for a in answers.values() if _challenged(a)]
    refused = [a for a in answers.values() if isinstance(a, ServiceError)]
    assert len(answers) == 17 and len(challenges) == room and len(refused) == 17 - room, answers
    assert all(e.status == 503 and e.code == "busy" for e in refused), refused
    with_order = [a for i, a in answers.items() if deals[i][2]]
    assert all(isinstance(a, ServiceError) or a["next"] == "payment" for a in with_order)
    assert any(_challenged(a) for a in with_order), "no order carried the PSAM's challenge"
    end = device.info()
    # the PSAM began exactly one request per admitted payment: none for the refused, none evicted
    # (requests gone stale at the desk stay pending on the PSAM card until a new one evicts them)
    assert end.sequence - start.sequence == room and end.pending == min(16, start.pending + room)
    assert device.held() == 16
