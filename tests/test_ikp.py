"""iKP as its own payment module: 1KP, 2KP and 3KP through the payment manager and the bank over HTTPS.

What each level must show: who signed what (Sig_A always, Sig_M from 2KP, Sig_C in 3KP), that the
merchant never sees the account and the acquirer never sees the order, that the account code is
checked (and guessing it is stopped), and that money moves exactly once, as the audit confirms."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_payment_support import EUR, World, world

from semper.client.payment import ikp_formats
from semper.client.payment.errors import NegotiationError, PaymentRefused, ProtocolError
from semper.client.payment.manager import LocalPayee, PaymentManager, pay
from semper.client.payment.model import Status, Terms
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.ikp import IkpModule
from semper.client.payment.wire import SignedJson
from semper.client.servers.bank_audit import audit

CODE = "tea-4-two-please"


def _ctx(w: World, who: str, *, signer: bool = True, **extras: object) -> PartyContext:
    s, account = w.party(who)
    return PartyContext(bank=w.client(s), signer=s if signer else None, account=account, currency=EUR,
                        extras=dict(extras))


def _money(w: World) -> dict[str, int]:
    with w.bank.db.transaction() as tx:
        return {r[0]: r[1] for r in tx.all("SELECT id, balance FROM accounts")}


def _enrolled(w: World, who: str) -> None:
    module = PaymentManager(_ctx(w, who), only=["ikp"]).module("ikp")
    assert isinstance(module, IkpModule)
    assert module.enrol(CODE)["enrolled"] is True


@pytest.mark.parametrize("level", [1, 2, 3])
def test_each_level_pays_once_and_names_who_signed(world: World, level: int) -> None:
    _, buyer = world.party("buyer2")
    _, seller = world.party("seller")
    world.bank.cash_in(buyer, 3_000)
    _enrolled(world, "buyer2")
    payer = PaymentManager(_ctx(world, "buyer2", signer=level == 3, ikp_code=CODE), only=["ikp"])
    payee = PaymentManager(_ctx(world, "seller", ikp_levels=[level]), only=["ikp"])
    terms = Terms.new(700 + level, EUR, seller, b"order: a kilo of oolong #%d" % level, "seller")
    payee.expect(terms)
    before = _money(world)
    session = payer.pay(terms, payer.choose(terms, payee.offer()))
    first = session.start()
    assert first["body"]["level"] == level
    assert buyer not in json.dumps(first)                                  # the merchant learns no account ...
    invoice = payee.handle(first)
    assert invoice is not None and ("sig_m" in invoice["body"]) == (level >= 2)
    payment = session.step(invoice["body"])
    assert payment is not None
    assert buyer not in json.dumps(payment) and CODE not in json.dumps(payment)   # ... not even sealed ones
    assert ("sig_c" in payment) == (level == 3)
    confirm = payee.handle(session.envelope(payment))
    assert confirm is not None
    session.step(confirm["body"])
    assert session.done and session.record.status is Status.CAPTURED
    after = _money(world)
    assert after[buyer] == before[buyer] - terms.amount and after[seller] == before[seller] + terms.amount
    # Sig_A names H(Common), which the payer computed itself
    answer = SignedJson.from_json(session.record.evidence["bank_answer"])
    assert answer.body["result"]["common_hash"] == ikp_formats.h(session.record.evidence["common"]).hex()
    assert answer.body["result"]["level"] == level
    # the acquirer never saw the order: only the salted H(SALT_C, DESC)
    with world.bank.db.transaction() as tx:
        stored = tx.all("SELECT evidence FROM authorisations WHERE payment_id = ?", (terms.payment_id,))
    assert terms.order_hash not in stored[0][0]
    # revocable at the bank: a refund is SET's operation on the same authorisation
    rec = payee.refund(terms.payment_id, 100)
    assert rec.status is Status.PARTLY_REFUNDED
    assert _money(world)[buyer] == after[buyer] + 100
    assert audit(world.bank.db, world.bank.scheme_root).violations == []


def test_a_wrong_account_code_is_refused_and_guessing_blocks(world: World) -> None:
    _, buyer = world.party("buyer")
    _, seller = world.party("seller2")
    world.bank.cash_in(buyer, 1_000)
    _enrolled(world, "buyer")
    payee = PaymentManager(_ctx(world, "seller2", ikp_levels=[1]), only=["ikp"])
    before = _money(world)
    for n in range(6):
        thief = PaymentManager(_ctx(world, "buyer", signer=False, ikp_code=f"guess-{n:04d}-x"), only=["ikp"])
        terms = Terms.new(50, EUR, seller, b"order %d" % n, "seller2")
        payee.expect(terms)
        with pytest.raises(PaymentRefused) as e:
            pay(thief, terms, payee.offer(), LocalPayee(payee))
        assert e.value.code == ("bad_code" if n < 5 else "code_blocked")
    # the right code is now refused too, until the owner enrols again
    honest = PaymentManager(_ctx(world, "buyer", signer=False, ikp_code=CODE), only=["ikp"])
    terms = Terms.new(50, EUR, seller, b"order: honest", "seller2")
    payee.expect(terms)
    with pytest.raises(PaymentRefused, match="enrol"):
        pay(honest, terms, payee.offer(), LocalPayee(payee))
    assert _money(world) == before
    _enrolled(world, "buyer")
    terms = Terms.new(50, EUR, seller, b"order: after enrolment", "seller2")
    payee.expect(terms)
    assert pay(honest, terms, payee.offer(), LocalPayee(payee)).status is Status.CAPTURED
    assert audit(world.bank.db, world.bank.scheme_root).violations == []


def test_levels_are_negotiated_and_a_changed_invoice_is_refused(world: World) -> None:
    _, seller = world.party("seller")
    terms = Terms.new(10, EUR, seller, b"x", "seller")
    no_key = PaymentManager(_ctx(world, "buyer2", signer=False, ikp_code=CODE), only=["ikp"])
    wants_3 = PaymentManager(_ctx(world, "seller", ikp_min_level=3), only=["ikp"])
    with pytest.raises(NegotiationError, match="no iKP level"):
        no_key.pay(terms, no_key.choose(terms, wants_3.offer()))
    # the merchant's invoice for another price does not match what the buyer agreed
    world.bank.cash_in(world.party("buyer2")[1], 100)
    payer = PaymentManager(_ctx(world, "buyer2"), only=["ikp"])
    payee = PaymentManager(_ctx(world, "seller"), only=["ikp"])
    payee.expect(terms)
    session = payer.pay(terms, payer.choose(terms, payee.offer()))
    invoice = payee.handle(session.start())
    assert invoice is not None
    invoice["body"]["clear"]["price"] = 11
    with pytest.raises(ProtocolError, match="price"):
        session.step(invoice["body"])


def test_semper_payment_modules_lists_five() -> None:
    out = subprocess.run([sys.executable, "-m", "semper.client.cli", "payment", "modules", "--json"],
                         capture_output=True,
                         text=True, timeout=60, check=True)
    names = [m["name"] for m in json.loads(out.stdout)]
    assert names == ["card-purse", "cheque", "ecash", "ikp", "setpay"]
    ikp = next(m for m in json.loads(out.stdout) if m["name"] == "ikp")
    assert ikp["target"] == "semper.client.payment.modules.ikp:IkpModule" and "problem" not in ikp
