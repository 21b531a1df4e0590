"""Each module's whole flow through the payment manager, the bank over HTTPS on loopback, its keys in a
SoftHSM2 token, the card (where one is used) simulated in process. Money is counted at every step."""
from __future__ import annotations

from pathlib import Path

import pytest
from postgres import storages
from test_payment_support import CARD_PIN, EUR, PARTY_PIN, World, card_pin, world

from semper.client.payment.errors import NegotiationError, PaymentError, PaymentRefused, ProtocolError
from semper.client.payment.manager import LocalPayee, PaymentManager, pay, run_payment
from semper.client.payment.model import Status, Terms
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.ecash import EcashModule
from semper.client.payment.modules.mandate import MandateModule
from semper.client.payment.modules.purse import PurseModule
from semper.client.payment.negotiation import Requirements
from semper.client.payment.wallet import TokenWalletKey, Wallet
from semper.client.servers.bank_audit import audit
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card
from semper.hsm.rsa import RsaTokenKeys

pytestmark = storages()          # the bank's core cases on SQLite and on PostgreSQL


def _ctx(w: World, who: str, **kw) -> PartyContext:
    signer, account = w.party(who)
    return PartyContext(bank=w.client(signer), signer=signer, account=account, currency=EUR, **kw)


def _money(w: World) -> dict[str, int]:
    with w.bank.db.transaction() as tx:
        return {r[0]: r[1] for r in tx.all("SELECT id, balance FROM accounts")}


def _clean(w: World) -> None:
    report = audit(w.bank.db, w.bank.scheme_root)
    assert report.violations == [], report.violations


def test_purse_load_pay_clear(world: World, tmp_path: Path) -> None:
    buyer_img, psam_img = world.cards(tmp_path)
    _, buyer_acc = world.party("buyer")
    _, seller_acc = world.party("seller")
    world.bank.cash_in(buyer_acc, 50_000)
    with open_card(buyer_img, sync=False) as bc, open_card(psam_img, sync=False) as pc:
        purse, psam = PurseSession(bc), PsamSession(pc)
        payer = PaymentManager(_ctx(world, "buyer", purse=purse, enter_pin=card_pin), only=["card-purse"])
        payee = PaymentManager(_ctx(world, "seller", psam=psam, purse_root=world.scheme.root_cert), only=["card-purse"])
        before = _money(world)
        module = payer.module("card-purse")
        assert isinstance(module, PurseModule)
        out = module.load(10_000)
        assert out["balance"] == 10_000
        card = purse.info().card_id
        assert world.bank.shadow(card) == 10_000
        after_load = _money(world)
        assert after_load[buyer_acc] == before[buyer_acc] - 10_000
        assert after_load[f"float:{EUR}"] == before[f"float:{EUR}"] + 10_000
        for amount in (250, 1_000, 1):
            terms = Terms.new(amount, EUR, seller_acc, b"order %d" % amount, "seller")
            payee.expect(terms)
            rec = pay(payer, terms, payee.offer(), LocalPayee(payee))
            assert rec.status is Status.PAID and rec.module == "card-purse"
            assert payee.record(terms.payment_id, "payee").status is Status.PAID
        assert purse.info().balance == 10_000 - 1_251
        assert _money(world) == after_load                      # offline: the bank saw nothing yet
        seller_module = payee.module("card-purse")
        assert isinstance(seller_module, PurseModule)
        cleared = seller_module.clear()
        assert cleared is not None and cleared["total"] == 1_251 and cleared["count"] == 3
        m = _money(world)
        assert m[seller_acc] == after_load[seller_acc] + 1_251
        assert m[f"float:{EUR}"] == after_load[f"float:{EUR}"] - 1_251
        assert world.bank.shadow(card) == purse.info().balance
        assert seller_module.clear() is None                    # nothing new; the old batch is not paid twice
        assert _money(world) == m
    _clean(world)


def test_account_payment_is_dual_signed_and_refundable(world: World) -> None:
    _, buyer_acc = world.party("buyer2")
    _, seller_acc = world.party("seller")
    world.bank.cash_in(buyer_acc, 5_000)
    payer = PaymentManager(_ctx(world, "buyer2"), only=["setpay"])
    payee = PaymentManager(_ctx(world, "seller"), only=["setpay"])
    before = _money(world)
    terms = Terms.new(1_200, EUR, seller_acc, b"order: one bicycle bell", "seller")
    payee.expect(terms)
    session = payer.pay(terms, payer.choose(terms, payee.offer()))
    first = session.start()
    assert "account" not in str(first["body"]["oi"]) or buyer_acc not in str(first["body"])   # seller sees no account
    assert buyer_acc not in str(first)
    reply = payee.handle(first)
    assert reply is not None
    session.step(reply["body"])
    assert session.done and session.record.status is Status.CAPTURED
    m = _money(world)
    assert m[buyer_acc] == before[buyer_acc] - 1_200 and m[seller_acc] == before[seller_acc] + 1_200
    rec = payee.refund(terms.payment_id, 200)
    assert rec.status is Status.PARTLY_REFUNDED and rec.refunded == 200
    assert payee.status(terms.payment_id, "payee").status is Status.PARTLY_REFUNDED
    m2 = _money(world)
    assert m2[buyer_acc] == m[buyer_acc] + 200 and m2[seller_acc] == m[seller_acc] - 200
    assert payee.record(terms.payment_id, "payee").refunded == 200
    with pytest.raises(PaymentError, match="a refund must be 1 to 1000"):     # refused here, before the bank
        payee.refund(terms.payment_id, 1_001)
    # the bank did not see the order: only its hash is stored
    with world.bank.db.transaction() as tx:
        stored = tx.all("SELECT evidence, oi_hash FROM authorisations")
    assert all("bicycle" not in s[0] for s in stored)
    _clean(world)


def test_cheque_paid_once_and_bounced_when_uncovered(world: World) -> None:
    _, buyer_acc = world.party("buyer2")
    _, seller_acc = world.party("seller2")
    world.bank.cash_in(buyer_acc, 3_000)
    payer = PaymentManager(_ctx(world, "buyer2"), only=["cheque"])
    payee = PaymentManager(_ctx(world, "seller2"), only=["cheque"])
    before = _money(world)
    terms = Terms.new(700, EUR, seller_acc, b"order: paper", "seller2")
    payee.expect(terms)
    rec = pay(payer, terms, payee.offer(), LocalPayee(payee))
    assert rec.status is Status.PAID
    m = _money(world)
    assert m[buyer_acc] == before[buyer_acc] - 700 and m[seller_acc] == before[seller_acc] + 700
    module = payee.module("cheque")
    assert isinstance(module, MandateModule)
    from semper.client.payment.wire import SignedJson
    cheque = SignedJson.from_json(payee.record(terms.payment_id, "payee").evidence["cheque"])
    with pytest.raises(PaymentRefused) as e:
        module.deposit(cheque)
    assert e.value.code == "cheque_paid"
    assert _money(world) == m
    big = Terms.new(m[buyer_acc] + 1, EUR, seller_acc, b"order: too much", "seller2")
    payee.expect(big)
    rec = pay(payer, big, payee.offer(), LocalPayee(payee))
    assert rec.status is Status.BOUNCED
    assert _money(world) == m
    _clean(world)


def test_ecash_withdraw_spend_and_double_spend(world: World, tmp_path: Path) -> None:
    buyer, buyer_acc = world.party("buyer")
    _, seller_acc = world.party("seller2")
    world.bank.cash_in(buyer_acc, 2_000)
    keys = RsaTokenKeys(buyer.module, "buyer", PARTY_PIN)
    wallet = Wallet(tmp_path / "wallet.json", TokenWalletKey(keys))
    payer = PaymentManager(_ctx(world, "buyer", wallet=wallet), only=["ecash"])
    payee = PaymentManager(_ctx(world, "seller2"), only=["ecash"])
    module = payer.module("ecash")
    assert isinstance(module, EcashModule)
    before = _money(world)
    assert module.withdraw(1_234) == 1_234
    m = _money(world)
    assert m[buyer_acc] == before[buyer_acc] - 1_234 and m[f"ecash:{EUR}"] == before[f"ecash:{EUR}"] + 1_234
    assert b"serial" not in (tmp_path / "wallet.json").read_bytes()          # encrypted at rest
    reopened = Wallet(tmp_path / "wallet.json", TokenWalletKey(keys))
    assert reopened.balance(EUR) == 1_234
    terms = Terms.new(34, EUR, seller_acc, b"order: stamps", "seller2")
    payee.expect(terms)
    rec = pay(payer, terms, payee.offer(), LocalPayee(payee), Requirements(anonymous=True))
    assert rec.status is Status.PAID and wallet.balance(EUR) == 1_200
    m2 = _money(world)
    assert m2[seller_acc] == m[seller_acc] + 34 and m2[f"ecash:{EUR}"] == m[f"ecash:{EUR}"] - 34
    # spending the same coins again (a copy of the wallet from before) is refused at deposit
    spent = [c for c in reopened.coins if c.serial not in {x.serial for x in wallet.coins}]
    again = Terms.new(34, EUR, seller_acc, b"order: stamps again", "seller2")
    payee.expect(again)
    copy_ctx = _ctx(world, "buyer", wallet=reopened)
    reopened.coins = spent
    thief = PaymentManager(copy_ctx, only=["ecash"])
    with pytest.raises(PaymentRefused) as e:
        pay(thief, again, payee.offer(), LocalPayee(payee))
    assert e.value.code == "double_spend"
    assert _money(world) == m2
    # the bank never saw serials at withdrawal: no withdrawal row holds one
    with world.bank.db.transaction() as tx:
        rows = str(tx.all("SELECT * FROM withdrawals"))
    assert not any(c.serial in rows for c in wallet.coins)
    _clean(world)


def test_negotiation_follows_preferences_and_requirements(world: World, tmp_path: Path) -> None:
    payer = PaymentManager(_ctx(world, "buyer2"), preferences=["cheque", "setpay"], only=["setpay", "cheque"])
    payee = PaymentManager(_ctx(world, "seller"), only=["setpay", "cheque", "ecash"])
    _, seller_acc = world.party("seller")
    terms = Terms.new(10, EUR, seller_acc, b"x", "seller")
    assert payer.choose(terms, payee.offer()).module == "cheque"
    assert payer.choose(terms, payee.offer(), Requirements(revocable=True)).module == "setpay"
    with pytest.raises(NegotiationError, match="anonymous"):
        payer.choose(terms, payee.offer(), Requirements(anonymous=True))
    usd = Terms.new(10, 840, seller_acc, b"x", "seller")
    with pytest.raises(NegotiationError, match="currenc"):
        payer.choose(usd, payee.offer())
    # the payee answers only terms it set; a payer cannot change the amount
    payee.expect(terms)
    session = payer.pay(terms, payer.choose(terms, payee.offer()))
    env = session.start()
    env["payment_id"] = "not-expected"
    with pytest.raises(ProtocolError, match="expected"):
        payee.handle(env)
    assert run_payment is not None
