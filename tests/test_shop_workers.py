"""Issue 14, item 3: ``semper serve shop --workers N``: several worker processes on one socket, the PSAM in a
device process of its own, the deals in the database.

* A worker killed with SIGKILL in the middle of a purchase loses nothing: the buyer's retry reaches
  another worker (or the one the parent started again), which finishes the same deal from the
  database; money is conserved to the cent (the chaos runner's checks).
* The PSAM's room rule holds across the workers: with 17 payments saying hello at once to two workers,
  some to ``/deals/pay`` after their order and some with their order, 16 get the PSAM's challenge and the
  17th is refused before the PSAM (or any card) is asked; the PSAM began exactly 16 requests, so none was
  evicted.
"""
from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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
def test_the_psam_room_rule_holds_across_workers(market: Any) -> None:
    """Run last in this module: the 16 payments it leaves open keep the PSAM's room for a minute."""
    from semper.client.servers.psam_device import PsamDeviceClient
    from semper.client.support.channels import JsonClient, ServiceError
    # every third hello comes with its order (one request: the order's answer carries the challenge)
    deals = [_ordered_deal(market, send=i % 3 != 0) for i in range(17)]
    device = PsamDeviceClient(market.world.shop_dir / "run" / "psam-0.sock")
    room = 16 - device.held()
    assert room == 16                      # every earlier purchase of this module finished
    start = device.info()
    url = f"https://127.0.0.1:{market.services['shop'].port}"
    with market.buyer.card_lock:
        market.buyer.purse.select()
        info = market.buyer.purse.info()
        card_id, counter = info.card_id, info.debit_counter + 1
        card_certificate = base64.b64encode(market.buyer.purse.certificate()).decode()
    answers: dict[int, Any] = {}
    go = threading.Barrier(len(deals))

    def hello(i: int, deal: str, terms: dict[str, Any], order: dict[str, str]) -> None:
        # the buyer's genuine card in every hello (the shop checks a hello's card certificate before it asks the
        # PSAM, so a made-up card takes no room: test_orders_with_made_up_card_hellos_do_not_block_card_payments)
        body = {"kind": "hello", "card": card_id, "counter": counter + i, "currency": terms["currency"],
                "card_certificate": card_certificate}
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
    challenges = [a for a in answers.values() if isinstance(a, dict) and a["envelope"]["body"]["kind"] == "challenge"]
    refused = [a for a in answers.values() if isinstance(a, ServiceError)]
    assert len(answers) == 17 and len(challenges) == room and len(refused) == 17 - room, answers
    assert all(e.status == 503 and e.code == "busy" for e in refused), refused
    with_order = [a for i, a in answers.items() if deals[i][2]]
    assert all(isinstance(a, ServiceError) or a["next"] == "payment" for a in with_order)
    assert any(isinstance(a, dict) and a["envelope"]["body"]["kind"] == "challenge" for a in with_order), \
        "no order carried the PSAM's challenge"
    end = device.info()
    # the PSAM began exactly one request per admitted payment: none for the refused, none evicted
    assert end.sequence - start.sequence == room and end.pending - start.pending == room
    assert device.held() == 16
