"""Issue 14, item 2: a shop killed with SIGKILL at any moment and started again resumes its open deals.

The shop is the real ``semper serve shop`` process behind the chaos market's fault proxy, which kills
it at a chosen request (before forwarding it, after its answer, or some milliseconds after forwarding
it while the shop is handling it) and starts it again on its folder; the buyer is the real client,
which sends a request whose answer was lost once more. Each case is one run of the chaos runner with
a fixed plan, so every check of ``semper chaos`` applies: the deal ends satisfied for the buyer
*in its first attempt* (the same deal, not a new one), the bank's audit is clean, both archives
verify, and money is conserved to the cent after the shop cleared its PSAM batch — the card's debit
reached the seller's account, none of it stranded in the purse float.

Before the deals moved into the shop's database, a shop killed between the card's debit and the
proof forgot the deal: the buyer's retry got "no such deal", the amount stayed in the purse float
(``semper chaos``'s one known limit).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semper.chaos.plan import Fault, RunPlan
from semper.chaos.runner import run_one

# the buyer's requests to the shop in a mail order paid from the purse: 1 offer, 2 order with the card's
# hello, 3 proof
POINTS = [("up", 3, 0.0), ("down", 3, 0.0), ("during", 3, 3.0), ("during", 3, 9.0), ("during", 3, 20.0),
          ("up", 2, 0.0), ("down", 2, 0.0), ("during", 2, 4.0), ("during", 2, 9.0), ("during", 2, 20.0),
          ("down", 1, 0.0)]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from semper.chaos.market import Market
    m = Market.create(tmp_path_factory.mktemp("durable") / "world", patience=2.0)
    yield m
    m.close()


def _run(market: Any, plan: RunPlan, tmp_path: Path) -> Any:
    report = run_one(market, plan, 0, tmp_path / "bundles")
    assert report.violations == [], report.line()
    assert not report.known_limits, report.line()
    return report


@pytest.mark.timeout(120)
def test_a_shop_killed_between_the_debit_and_the_proof_completes_the_deal(market: Any, tmp_path: Path) -> None:
    """The attack on the old shop: SIGKILL just before the card's proof reaches it. The buyer's retry
    reaches the restarted shop, which takes the proof into its PSAM and delivers: one deal, satisfied,
    and the debit cleared to the seller's account."""
    plan = RunPlan(1, "mail-order", "card-purse", (Fault("crash", "shop", "up", 3),))
    report = _run(market, plan, tmp_path)
    assert any(i.startswith("crash shop at request 3 (POST /deals/pay") for i in report.injected), report.line()
    assert report.results == ["satisfied"] and [d.outcome for d in report.deals] == ["satisfied"], report.line()
    assert report.deals[0].paid > 0


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode,at,delay", POINTS, ids=[f"{m}-{a}-{d:g}ms" for m, a, d in POINTS])
def test_a_shop_killed_at_any_point_of_a_purchase_resumes_it(market: Any, tmp_path: Path, mode: str, at: int,
                                                            delay: float) -> None:
    plan = RunPlan(2, "mail-order", "card-purse", (Fault("crash", "shop", mode, at, delay),))
    report = _run(market, plan, tmp_path)
    assert any(i.startswith(f"crash shop at request {at}") for i in report.injected), report.line()
    # the buyer's first deal went through: the request whose answer was lost was answered again
    assert report.results == ["satisfied"] and [d.outcome for d in report.deals] == ["satisfied"], report.line()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("payment", ["setpay", "cheque"])
def test_a_shop_killed_while_the_bank_takes_the_payment_resumes_it(market: Any, tmp_path: Path,
                                                                  payment: str) -> None:
    """The account payment and the cheque: the shop dies after the bank acted and before it kept the
    answer; the retry reaches the bank with the payment's own idempotency key and gets the same answer."""
    for delay in (8.0, 25.0, 60.0):
        plan = RunPlan(3, "mail-order", payment, (Fault("crash", "shop", "during", 3, delay),))
        report = _run(market, plan, tmp_path / f"{delay:g}")
        assert report.results == ["satisfied"], report.line()


@pytest.mark.timeout(300)
def test_a_bank_killed_while_it_handles_a_request_answers_the_retry_the_same(market: Any, tmp_path: Path) -> None:
    """The bank is durable already: killed at any point of a purse load or of an account payment, started
    again, it answers the client's retry (same idempotency key) from what it committed."""
    for payment, at, delay in (("setpay", 1, 3.0), ("setpay", 1, 15.0), ("setpay", 2, 6.0), ("cheque", 1, 8.0)):
        plan = RunPlan(4, "mail-order", payment, (Fault("crash", "bank", "during", at, delay),))
        report = _run(market, plan, tmp_path / f"{payment}-{at}-{delay:g}")
        assert any(i.startswith("crash bank") for i in report.injected), report.line()
        assert report.results[-1] == "satisfied", report.line()


def _db(market: Any) -> dict[str, int]:
    stats = market.buyer.shop.get("/stats")
    return {**{k: int(v) for k, v in stats["db"].items()},
            **{"archive " + k: int(v) for k, v in stats.get("archive", {}).items()}}


@pytest.mark.timeout(120)
def test_a_purse_purchase_is_two_requests_and_two_write_transactions(market: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The card's hello travels with the order and the order's answer carries the PSAM's challenge; the
    standing offer is asked for once (``POST /offer``, which writes nothing) and kept by the buyer's client,
    so the next purchase of the same is two requests: the order and the proof, one write transaction each
    (the order's writes the deal, creates the payment's session and commits its first step). A cheque, whose
    module does not declare it may start early, sends no first message with its order."""
    from semper.chaos.runner import ADDRESS
    from semper.client.commerce import workflows as wf
    proxy = market.proxies["shop"]
    shop = market.buyer.shop
    orders: list[dict[str, Any]] = []
    post = shop.post

    def spy(path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/deals/order":
            orders.append(body)
        return post(path, body)
    monkeypatch.setattr(shop, "post", spy)
    market.buyer.offers.clear()
    for payment, asks in (("card-purse", True), ("card-purse", False), ("cheque", False)):
        market.top_up()
        market.ui.payment = payment
        before = _db(market)
        proxy.arm(None)
        orders.clear()
        r = wf.mail_order(market.buyer, [("teapot", 1)], form=ADDRESS)
        seen = list(proxy.seen)
        after = _db(market)
        assert r.ok, r.summary
        assert len(orders) == 1
        offer = ["POST /offer"] if asks else []
        if payment == "card-purse":
            assert orders[0]["envelope"]["body"]["kind"] == "hello"
            assert seen == [*offer, "POST /deals/order", "POST /deals/pay"], seen
            # the /stats read between the counts is one read transaction of its own
            assert after["write"] - before["write"] == 2 and after["read"] - before["read"] <= 3, (before, after)
            # the shop's evidence (offer and order; payment, note and decisions) in those two transactions, in
            # the deals' file: no write or flush of the archive's own (two and one before 2026-12-07)
            assert [after[k] - before[k] for k in ("archive in_deal", "archive alone", "archive flushes")] \
                == [2, 0, 0], (before, after)
            assert orders[0]["offer"] and orders[0]["offer_tag"]       # the stateless offer, sent back
        else:
            assert "envelope" not in orders[0] and seen[:2] == ["POST /deals/order", "POST /deals/pay"]


@pytest.mark.timeout(120)
def test_the_order_with_its_hello_sent_again_gets_the_same_answer_and_one_debit(market: Any) -> None:
    """The order's answer lost, the buyer's client sends the order and the hello again: the same terms and
    the same challenge, from what the shop committed (no write, the PSAM not asked again), and the card
    pays once."""
    from semper.chaos.runner import ADDRESS
    from semper.client.commerce import blocks
    from semper.client.commerce import documents as docs
    from semper.client.commerce.deal import deal_attributes
    from semper.client.tinguin.model import Action
    b = market.buyer
    market.top_up()
    market.ui.payment = "card-purse"
    deal, offer, vs = blocks.get_offer(b, "mail-order", [("teapot", 1)], deal_attributes("mail-order"))
    c = blocks.review_and_confirm(b, deal, offer, vs, ADDRESS, Action.ORDER_AND_PAY, "card-purse")
    order = blocks.make_order(b, deal, offer, c)
    early = blocks.start_early(b, deal, offer, order, c)
    assert early is not None and early.first["body"]["kind"] == "hello"
    assert early.first["payment_id"] == docs.payment_id_for(deal.deal_id, docs.sha256_hex(order))
    balance = market.purse_balance()
    first = blocks.send_order(b, deal, offer, order, early=early)
    assert first["envelope"]["body"]["kind"] == "challenge"
    assert first["terms"]["payment_id"] == early.first["payment_id"]
    before = _db(market)
    again = blocks.send_order(b, deal, offer, order, early=early)
    after = _db(market)
    assert again == first
    assert after["write"] == before["write"], (before, after)
    record = blocks.pay(b, deal, offer, docs.sha256_hex(order), c, again, early).record
    assert record.status.value == "paid"
    assert market.purse_balance() == balance - offer.total
    # and once paid, the order sent again gets its terms alone (its payment has moved on): nothing moves
    late = blocks.send_order(b, deal, offer, order, early=early)
    assert "envelope" not in late and late == {k: v for k, v in first.items() if k != "envelope"}
    assert market.purse_balance() == balance - offer.total


@pytest.mark.timeout(120)
def test_a_first_message_the_shop_does_not_take_with_the_order_leaves_the_order_as_before(market: Any) -> None:
    """A cheque's message with the order is not taken (its module does not declare it may start early), nor
    is a purse hello the PSAM refuses: the order is committed with its terms alone and answered without
    the payee's envelope, and the refused hello, sent to ``/deals/pay``, is refused there."""
    from semper.chaos.runner import ADDRESS
    from semper.client.commerce import blocks
    from semper.client.commerce import documents as docs
    from semper.client.commerce.deal import deal_attributes
    from semper.client.commerce.errors import SellerRefused
    from semper.client.tinguin.model import Action
    b = market.buyer
    for module, body in (("cheque", {"kind": "cheque"}),
                         ("card-purse", {"kind": "hello", "card": "C0FFEE0000000001", "counter": 1, "currency": 840,
                                         "card_certificate": "AAAA"})):
        market.ui.payment = module
        deal, offer, vs = blocks.get_offer(b, "mail-order", [("teapot", 1)], deal_attributes("mail-order"))
        c = blocks.review_and_confirm(b, deal, offer, vs, ADDRESS, Action.ORDER_AND_PAY, module)
        order = blocks.make_order(b, deal, offer, c)
        pid = docs.payment_id_for(deal.deal_id, docs.sha256_hex(order))
        envelope = {"payment_id": pid, "module": module, "body": body}
        before = _db(market)
        answer = b.shop.post("/deals/order", {"deal": deal.deal_id, "order": blocks.b64(order), "envelope": envelope,
                                              "offer": blocks.b64(offer.der), "offer_tag": offer.tag})
        after = _db(market)
        assert answer["next"] == "payment" and "envelope" not in answer, answer
        assert answer["terms"]["payment_id"] == pid
        assert after["write"] - before["write"] == 1, (before, after)
        if module == "card-purse":              # the card's currency is not the payment's: the PSAM is not asked
            with pytest.raises(SellerRefused):
                b.shop.post("/deals/pay", {"deal": deal.deal_id, "envelope": envelope})


@pytest.mark.timeout(300)
def test_orders_with_made_up_card_hellos_do_not_block_card_payments(market: Any) -> None:
    """Adversarial review 2026-12-07 (docs/threat-model.md): orders whose hello names a card that does not
    exist (a random number, any counter, a certificate that is not the scheme's) each held one of the
    PSAM's 16 open debits for a minute, so 16 such orders a minute stopped every card payment. The real
    shop now refuses such a hello before its PSAM is asked: each order is answered without the PSAM's
    challenge, and a genuine card still pays after more of them than the PSAM has room for."""
    import os

    from semper.chaos.runner import ADDRESS
    from semper.client.commerce import blocks
    from semper.client.commerce import documents as docs
    from semper.client.commerce import workflows as wf
    from semper.client.commerce.deal import deal_attributes
    from semper.client.commerce.errors import SellerRefused
    from semper.client.payment.psam_desk import PSAM_PENDING
    from semper.client.tinguin.model import Action
    b = market.buyer
    market.ui.payment = "card-purse"
    for i in range(PSAM_PENDING + 2):
        deal, offer, vs = blocks.get_offer(b, "mail-order", [("teapot", 1)], deal_attributes("mail-order"))
        c = blocks.review_and_confirm(b, deal, offer, vs, ADDRESS, Action.ORDER_AND_PAY, "card-purse")
        order = blocks.make_order(b, deal, offer, c)
        pid = docs.payment_id_for(deal.deal_id, docs.sha256_hex(order))
        hello = {"kind": "hello", "card": os.urandom(8).hex().upper(), "counter": 1 + i, "currency": offer.currency,
                 "card_certificate": blocks.b64(os.urandom(200))}
        envelope = {"payment_id": pid, "module": "card-purse", "body": hello}
        answer = b.shop.post("/deals/order", {"deal": deal.deal_id, "order": blocks.b64(order), "envelope": envelope,
                                              "offer": blocks.b64(offer.der), "offer_tag": offer.tag})
        assert answer["next"] == "payment" and "envelope" not in answer, answer       # no PSAM challenge
        with pytest.raises(SellerRefused, match="certificate"):
            b.shop.post("/deals/pay", {"deal": deal.deal_id, "envelope": envelope})
    market.top_up()
    market.proxies["shop"].arm(None)
    r = wf.mail_order(b, [("teapot", 1)], form=ADDRESS)
    assert r.ok, r.summary
