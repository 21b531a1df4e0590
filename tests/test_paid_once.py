"""A card payment the seller takes is taken once, and always: two holes in the seller's card path.

Finding D (review of 2026-12-07): a deal marked abandoned (``DealStore.abandon``, the sweep of stalled
payments at the open-deal limit, by any worker) while ``Shop._pay`` was taking its proof raised the row's
version under the payment step; the step's write of the deal failed, the shop read the deal again (not
paid) and signed a second confirmation and delivery note, both archived: the archive held two of each
for one payment. Now the deal paid is written over the mark in the step's own transaction, with the
confirmation and note signed once; the buyer gets the ones the row holds.

MAX_ROUNDS after a debit: the payment manager refused every message of a payment past its 16th step,
before the module's step. A card debits itself when it answers the PSAM's challenge; if its proof was then
refused 15 times (the PSAM's reader failing, the PSAM's process restarting, junk from whoever knows the
payment) the valid proof was refused for good: the buyer paid, got nothing, and the money stayed in the
purse float. Now a proof the card signed for this payment's request is taken however many rounds came
before; anything else past MAX_ROUNDS is still refused before the PSAM is asked, and the deal keeps at most
KEPT_REFUSALS refusals. On both back ends; each test fails on the code before its fix (ef4e8bc).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PIN
from postgres import Storage, storages
from test_stateless_offer import NONCE, _kinds, _parsed
from test_unpaid_caps import _purse_shop, _signed_order, pki  # pki: the fixture

from semper.client.commerce import documents as docs
from semper.client.commerce.errors import CommerceError
from semper.client.payment import card_purse
from semper.client.payment.manager import MAX_ROUNDS, PaymentManager
from semper.client.payment.model import Status, Terms
from semper.client.payment.module import PartyContext
from semper.client.payment.modules import purse as purse_module
from semper.client.payment.modules.purse import PayerFlow, PurseModule
from semper.client.servers import shop as shop_module
from semper.client.servers.shop import KEPT_REFUSALS, Shop
from semper.client.servers.shop_http import _paid_answer
from semper.client.support.db import Database
from semper.client.support.verify import verify_statement
from semper.hardware import errors as hw

EUR = 978
CONFIRMATION, DELIVERY = "statement:order-confirmation", "statement:delivery"


@pytest.fixture()
def card_shop(pki: dict[str, Any], storage: Storage, tmp_path: Path, scheme: Any, psam: Any,
              purse: Any) -> Iterator[tuple[Shop, PaymentManager]]:
    """A shop taking the card purse at a simulated PSAM, and the buyer's card (``purse``) loaded."""
    card_purse.load(purse, scheme, 10_000, PIN)
    db = Database(storage.url("shop", tmp_path))
    try:
        yield _purse_shop(pki, db, tmp_path, scheme, psam)
    finally:
        db.close()


def _card_debited(shop: Shop, bob: Any, purse: Any) -> tuple[str, dict[str, Any], int]:
    """A mail order paid from ``purse``: ordered, its hello answered, and the card's debit made (its
    balance down); the deal id, the proof's envelope, and the amount debited. The proof is not sent."""
    deal_id, der, tag = shop.new_deal("mail-order", [("teapot", 1)], NONCE, False)
    answer = shop.order(deal_id, _signed_order(_parsed(shop, der), bob, "card-purse"), None, der, tag)
    terms = Terms.from_dict(answer["terms"])
    flow = PayerFlow(PurseModule(PartyContext(purse=purse, currency=EUR)), terms)

    def envelope(body: Any) -> dict[str, Any]:
        return {"payment_id": terms.payment_id, "module": "card-purse", "body": body}
    hello = envelope(flow.step(None).message)
    assert shop.admit(deal_id, hello)
    challenge = shop.pay_and_deliver(deal_id, hello)["envelope"]
    before = purse.info().balance
    proof = envelope(flow.step(challenge["body"]).message)
    assert purse.info().balance == before - terms.amount            # the card has paid
    return deal_id, proof, terms.amount


def _psam_failing(payments: PaymentManager, monkeypatch: pytest.MonkeyPatch, error: Exception
                  ) -> tuple[Any, Any, list[int], list[float]]:
    """The PSAM's desk answering every proof with ``error``: (the desk, its real ``complete_debit``, one entry
    per proof the PSAM was asked, the payee's wall clock as a settable one-element list)."""
    desk = payments.module("card-purse").desk()
    take = desk.complete_debit
    asked: list[int] = []
    now = [1_000_000.0]
    monkeypatch.setattr(purse_module, "wall_clock", lambda: now[0])

    def failing(*a: Any, **kw: Any) -> Any:
        asked.append(1)
        raise error
    monkeypatch.setattr(desk, "complete_debit", failing)
    return desk, take, asked, now


def _row(shop: Shop, deal_id: str) -> Any:
    sd = shop.find(deal_id, fresh=True)
    assert sd is not None
    return sd


@storages()
@pytest.mark.parametrize("in_step", [True, False], ids=["settled-in-step", "settled-after"])
def test_a_deal_abandoned_while_its_proof_is_taken_is_confirmed_and_delivered_once(
        card_shop: tuple[Shop, PaymentManager], pki: dict[str, Any], purse: Any,
        monkeypatch: pytest.MonkeyPatch, in_step: bool) -> None:
    """``in_step``: the deal paid is written in the payment step's transaction (the shop), or after it (a
    shop whose delivery does more than sign, the mall: ``Shop.settles_in_payment_step``). Before, the
    first signed a second confirmation and note; the second answered the buyer who had paid without a
    confirmation and left the deal unpaid (its next try signed a second one)."""
    shop, payments = card_shop
    monkeypatch.setattr(shop, "settles_in_payment_step", in_step)
    deal_id, proof, _ = _card_debited(shop, pki["bob"], purse)
    desk = payments.module("card-purse").desk()
    take = desk.complete_debit
    marked: list[int] = []

    def marked_meanwhile(*a: Any, **kw: Any) -> Any:
        # another worker's sweep at the open-deal limit marks the deal while the PSAM takes its proof
        # (every deal ordered, not paid, whose offer ended before the cutoff)
        marked.append(shop.store.abandon(dt.datetime.now(dt.UTC) + dt.timedelta(days=1)))
        # and another worker records a refusal of some other message for it, as Shop._pay does
        other = shop.store.get(deal_id, fresh=True)
        assert other is not None
        other.deal.decide("payment", "refused", "junk from elsewhere")
        assert shop.store.save(other)
        return take(*a, **kw)
    monkeypatch.setattr(desk, "complete_debit", marked_meanwhile)
    done = shop.pay_and_deliver(deal_id, proof)
    assert marked == [1]                                           # the mark did land under the step

    sd = _row(shop, deal_id)
    assert sd.paid and sd.finished and not sd.abandoned
    assert [(d.step, d.verdict) for d in sd.deal.decisions][-3:] == [
        ("payment", "refused"), ("payment", "satisfied"), ("delivery", "satisfied")]   # the other's kept first
    kinds = _kinds(shop, deal_id)
    # before: two of each (the second signed after the step's write of the deal failed), and the payment
    # record kept twice
    # (one statement: the delivery note states the payment, and is the confirmation the answer names)
    assert kinds.count(CONFIRMATION) == 0 and kinds.count(DELIVERY) == 1, kinds
    assert kinds.count("payment") == 1, kinds
    assert sd.confirmation is None and done["confirmation"] == done["delivery"] == sd.delivery
    archived = {e.kind: e.content for e in shop.archive.entries(deal_id) if e.kind in (CONFIRMATION, DELIVERY)}
    assert archived == {DELIVERY: sd.delivery}

    again = shop.pay_and_deliver(deal_id, proof)                    # its answer lost: the same answer
    assert again["envelope"] == done["envelope"] and again["confirmation"] == done["confirmation"]
    assert again["delivery"] == done["delivery"] and _kinds(shop, deal_id) == kinds


@storages()
def test_a_card_that_paid_gets_its_goods_however_often_its_proof_was_refused(
        card_shop: tuple[Shop, PaymentManager], pki: dict[str, Any], purse: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    shop, payments = card_shop
    deal_id, proof, amount = _card_debited(shop, pki["bob"], purse)
    desk, take, asked, now = _psam_failing(payments, monkeypatch, hw.ReaderError("the PSAM's reader did not answer"))
    for _ in range(MAX_ROUNDS):                 # the buyer's client sends its proof again after each refusal
        with pytest.raises(CommerceError) as refused:
            shop.pay_and_deliver(deal_id, proof)
        assert refused.value.http_status == 422
    tried = len(asked)

    # past MAX_ROUNDS, junk and a proof the card did not sign are refused before the PSAM is asked, and the
    # deal keeps no more refusals than KEPT_REFUSALS
    pid = proof["payment_id"]
    forged = {**proof, "body": {**proof["body"], "signature": proof["body"]["signature"][:-8] + "AAAAAAA="}}
    for junk in ({"payment_id": pid, "module": "card-purse", "body": {"kind": "junk"}}, forged,
                 {"payment_id": pid, "module": "card-purse", "body": {"kind": "hello"}}):
        with pytest.raises(CommerceError, match="rounds"):
            shop.pay_and_deliver(deal_id, junk)
    assert len(asked) == tried and desk.held() == 1                  # the debit's room only, as before
    sd = _row(shop, deal_id)
    assert not sd.paid and [d.verdict for d in sd.deal.decisions if d.step == "payment"] == ["refused"] * KEPT_REFUSALS

    # the reader works again: the card's proof, sent again a while later, is taken (before: refused for good,
    # "more than 16 rounds": the card had paid and the buyer got nothing)
    monkeypatch.setattr(desk, "complete_debit", take)
    now[0] += purse_module.LATE_PROOF_EVERY_S
    done = shop.pay_and_deliver(deal_id, proof)
    assert done["envelope"]["body"]["kind"] == "receipt" and done["confirmation"] and done["delivery"]
    sd = _row(shop, deal_id)
    assert sd.paid and sd.finished and sd.payment["amount"] == amount
    record = payments.record(pid, "payee")
    assert record.status is Status.PAID and record.evidence["proof"] == proof["body"]["proof"]
    assert desk.held() == 0 and len(asked) == MAX_ROUNDS          # each of the card's proofs reached the PSAM
    kinds = _kinds(shop, deal_id)
    assert kinds.count(CONFIRMATION) == 0 and kinds.count(DELIVERY) == 1         # one statement for both
    assert shop.pay_and_deliver(deal_id, proof)["confirmation"] == done["confirmation"]    # replayed: the same


def test_a_proof_past_max_rounds_reaches_the_psam_at_most_once_in_a_while(
        card_shop: tuple[Shop, PaymentManager], pki: dict[str, Any], purse: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 2026-12-07, finding 2: past MAX_ROUNDS the card's own proof was let through at every copy, and
    each copy of a proof whose request the PSAM had evicted read the PSAM's batches (and could call the
    acquirer): one minimum debit bought PSAM work without end. Now a proof past MAX_ROUNDS is tried at most once
    in LATE_PROOF_EVERY_S, and still taken when the PSAM answers."""
    shop, payments = card_shop
    deal_id, proof, _amount = _card_debited(shop, pki["bob"], purse)
    desk, take, asked, now = _psam_failing(payments, monkeypatch, hw.ReplayError("no open request for this proof "
                                                                                 "(evicted)"))
    for _ in range(MAX_ROUNDS - 1):                  # the hello was round 1
        with pytest.raises(CommerceError):
            shop.pay_and_deliver(deal_id, proof)
    assert len(asked) == MAX_ROUNDS - 1
    for _ in range(5 * MAX_ROUNDS):                  # the same proof in a loop: one try reaches the PSAM
        with pytest.raises(CommerceError):
            shop.pay_and_deliver(deal_id, proof)
    assert len(asked) == MAX_ROUNDS
    now[0] += purse_module.LATE_PROOF_EVERY_S - 1
    with pytest.raises(CommerceError, match="rounds"):
        shop.pay_and_deliver(deal_id, proof)
    assert len(asked) == MAX_ROUNDS
    now[0] += 1                                      # a while later: one more try
    for _ in range(3):
        with pytest.raises(CommerceError):
            shop.pay_and_deliver(deal_id, proof)
    assert len(asked) == MAX_ROUNDS + 1
    now[0] += purse_module.LATE_PROOF_EVERY_S        # the PSAM answers again: the proof is taken
    monkeypatch.setattr(desk, "complete_debit", take)
    done = shop.pay_and_deliver(deal_id, proof)
    assert done["envelope"]["body"]["kind"] == "receipt" and done["confirmation"] and done["delivery"]
    assert _row(shop, deal_id).paid


@storages()
def test_workers_clocks_apart_do_not_open_the_late_proof_gate(
        card_shop: tuple[Shop, PaymentManager], pki: dict[str, Any], purse: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 2026-12-07: a clock behind the last try's counted as "long ago", so copies of the proof sent in
    turn to two workers whose clocks were 20 s apart all reached the PSAM. Now a clock up to MAX_CLOCK_SKEW_S
    behind counts as within the gate."""
    shop, payments = card_shop
    deal_id, proof, _amount = _card_debited(shop, pki["bob"], purse)
    _desk, _take, asked, now = _psam_failing(payments, monkeypatch, hw.ReplayError("no open request (evicted)"))
    for _ in range(MAX_ROUNDS - 1):
        with pytest.raises(CommerceError):
            shop.pay_and_deliver(deal_id, proof)
    before = len(asked)
    clocks = [now[0], now[0] - 20.0]                 # worker A, and worker B whose clock is 20 s behind
    for i in range(40):                              # copies sent to A and B in turn, within 4 s
        monkeypatch.setattr(purse_module, "wall_clock", lambda c=clocks[i % 2] + i * 0.1: c)
        with pytest.raises(CommerceError):
            shop.pay_and_deliver(deal_id, proof)
    assert len(asked) - before == 1


@storages()
def test_a_psam_failing_while_its_batches_are_read_keeps_the_late_proof_gate_shut(
        card_shop: tuple[Shop, PaymentManager], pki: dict[str, Any], purse: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 2026-12-07: a hardware error while the PSAM's batches were read for an evicted request was no
    PaymentError, so neither the round nor the gate's time was saved, and every copy read the batches again."""
    shop, payments = card_shop
    deal_id, proof, _amount = _card_debited(shop, pki["bob"], purse)
    desk, _take, _asked, _now = _psam_failing(payments, monkeypatch, hw.ReplayError("no open request (evicted)"))
    searched: list[int] = []

    def find_proof(record: bytes) -> Any:
        searched.append(1)
        raise hw.ReaderError("the PSAM's reader did not answer")
    monkeypatch.setattr(desk, "find_proof", find_proof)
    for _ in range(5 * MAX_ROUNDS):                  # within one second: past MAX_ROUNDS, one try gets through
        with pytest.raises(CommerceError):
            shop.pay_and_deliver(deal_id, proof)
    assert len(searched) == MAX_ROUNDS


@storages()
def test_a_purse_mail_order_signs_one_statement_that_confirms_and_ships(
        card_shop: tuple[Shop, PaymentManager], pki: dict[str, Any], purse: Any) -> None:
    """The payment step that completes a mail order paid from the card and ships signs ONE statement: the
    delivery note stating the payment (before: an order confirmation, then the note, two signatures on the
    shop's token). It proves both: the payment of this order confirmed, and the lines shipped. Later
    requests (the step replayed, ``confirm``, ``deliver``) answer that statement and sign nothing."""
    shop, _payments = card_shop
    signed = shop.counters["signatures"]
    deal_id, proof, amount = _card_debited(shop, pki["bob"], purse)
    done = shop.pay_and_deliver(deal_id, proof)
    assert shop.counters["signatures"] - signed == 2             # the offer and the note (before: 3)
    sd = _row(shop, deal_id)
    assert sd.confirmation is None and done["delivery"] == sd.delivery == done["confirmation"]
    note = verify_statement(sd.delivery, shop.trust)
    assert note.type == "delivery" and note.body["items"] == [{"sku": "teapot", "quantity": 1}]
    assert note.body["payment"] == {"module": "card-purse", "payment_id": sd.terms.payment_id, "amount": amount,
                                    "currency": EUR, "status": "paid"}
    assert docs.confirmed_payment(note.body, deal_id, sd.order_digest) == note.body["payment"]
    assert docs.confirmed_payment(note.body, deal_id, "00" * 32) is None          # another order's: none
    # the HTTP answer carries the statement once, as the delivery note
    answer = _paid_answer(done)
    assert "confirmation" not in answer and answer["shipped"] is True
    kinds = _kinds(shop, deal_id)
    assert kinds.count(CONFIRMATION) == 0 and kinds.count(DELIVERY) == 1, kinds
    # whatever is asked later answers with what was signed, and signs nothing more
    after = shop.counters["signatures"]
    assert shop.confirm(deal_id) == sd.delivery
    assert shop.deliver(deal_id) == (sd.delivery, None)
    assert shop.pay_and_deliver(deal_id, proof)["confirmation"] == sd.delivery
    assert shop.counters["signatures"] == after and _kinds(shop, deal_id) == kinds


def test_the_note_the_payment_step_signs_is_not_read_back_to_learn_it_states_the_payment(
        card_shop: tuple[Shop, PaymentManager], pki: dict[str, Any], purse: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shop signed the body of the note itself, so whether it states the payment is known without reading
    the statement again (a CMS parse and a JSON read of about 2 KB per purchase, docs/performance.md); a note
    the shop did not sign in this process (a row written by another worker) is still read, once."""
    shop, _payments = card_shop
    deal_id, proof, _amount = _card_debited(shop, pki["bob"], purse)
    read: list[bytes] = []
    real = shop_module.cms_profile.read_statement

    def counted(der: bytes) -> Any:
        read.append(der)
        return real(der)
    monkeypatch.setattr(shop_module.cms_profile, "read_statement", counted)
    done = shop.pay_and_deliver(deal_id, proof)
    assert done["confirmation"] == done["delivery"] and read == []
    # a note known only from its row (another worker signed it): read to tell, once, and then remembered
    shop_module._NOTES_STATING.clear()
    assert shop.confirm(deal_id) == done["delivery"] and shop.confirm(deal_id) == done["delivery"]
    assert read == [done["delivery"]]


@storages()
def test_a_shop_that_ships_later_keeps_the_confirmation_and_note_apart(
        card_shop: tuple[Shop, PaymentManager], pki: dict[str, Any], purse: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A shop whose payment step does not ship (its ``make_delivery`` ships nothing then) confirms the payment
    in a statement of its own; the note it signs when the buyer asks for delivery states no payment, and
    ``confirm`` keeps answering the confirmation: never a second statement of the payment."""
    shop, _payments = card_shop
    deal_id, proof, amount = _card_debited(shop, pki["bob"], purse)
    ship = shop.make_delivery
    monkeypatch.setattr(shop, "make_delivery", lambda sd: None)
    done = shop.pay_and_deliver(deal_id, proof)
    assert "delivery" not in done
    conf = verify_statement(done["confirmation"], shop.trust)
    assert conf.type == "order-confirmation" and conf.body["payment"]["amount"] == amount
    monkeypatch.setattr(shop, "make_delivery", ship)
    note, _ = shop.deliver(deal_id)
    assert note is not None
    body = verify_statement(note, shop.trust).body
    assert body["type"] == "delivery" and "payment" not in body
    signed = shop.counters["signatures"]
    assert shop.confirm(deal_id) == done["confirmation"] and shop.deliver(deal_id) == (note, None)
    assert shop.pay_and_deliver(deal_id, proof)["confirmation"] == done["confirmation"]
    assert shop.counters["signatures"] == signed
    kinds = _kinds(shop, deal_id)
    assert kinds.count(CONFIRMATION) == 1 and kinds.count(DELIVERY) == 1, kinds


@storages()
def test_a_shop_that_confirms_before_shipping_signs_the_pair(
        card_shop: tuple[Shop, PaymentManager], pki: dict[str, Any], purse: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``Shop.confirms_in_delivery_note`` off (the mall: its deal must be on disk confirmed before it buys
    from the shops): the confirmation, then the note, as before."""
    shop, _payments = card_shop
    monkeypatch.setattr(shop, "confirms_in_delivery_note", False)
    signed = shop.counters["signatures"]
    deal_id, proof, _amount = _card_debited(shop, pki["bob"], purse)
    done = shop.pay_and_deliver(deal_id, proof)
    assert shop.counters["signatures"] - signed == 3
    assert verify_statement(done["confirmation"], shop.trust).type == "order-confirmation"
    assert "payment" not in verify_statement(done["delivery"], shop.trust).body
    assert set(_paid_answer(done)) >= {"confirmation", "delivery"}
