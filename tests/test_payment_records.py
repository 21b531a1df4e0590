"""A payee's payment record is kept in one place: what a refund or a settlement wrote is what the next
refund, settlement or status read sees (review finding: the payee's session kept a copy of the record
that refunds and settlements never updated, and the manager read that copy first).

The payee here is the real payment manager with the real SET module and the real item payee; only the
bank's answers come from a counting stand-in, so that each call the payee makes to the bank is seen."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from postgres import Storage, storages

from semper.client.payment.errors import PaymentError
from semper.client.payment.item import ItemPayee
from semper.client.payment.manager import PaymentManager
from semper.client.payment.model import Acceptance, Record, Status, Terms
from semper.client.payment.module import PartyContext, Step
from semper.client.payment.modules.setpay import SetPayModule
from semper.client.payment.sessions import DatabaseSessions
from semper.client.payment.store import RecordStore
from semper.client.support.db import Database

EUR = 978
PRICE = 1_200


class Bank:
    """The bank's set/* answers for one authorisation of PRICE, and every call counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.captured, self.refunded = 0, 0

    def call(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(op)
        if op == "set/settle":
            self.captured = PRICE
        elif op == "set/refund":
            if params["amount"] > self.captured - self.refunded:
                raise PaymentError("the bank refused: exceeds_capture")
            self.refunded += params["amount"]
        state = "refunded" if self.refunded and self.refunded == self.captured else \
            "captured" if self.captured else "authorised"
        return {"result": {"state": state, "captured": self.captured, "refunded": self.refunded}}


class SetPay(SetPayModule):
    """The SET module whose payee flow accepts at once (the dual signature is tests/test_payment_flows.py's)."""

    capture = True

    def acceptance(self) -> Acceptance | None:
        return Acceptance(self.name, (EUR,), 1)

    def payee_flow(self, terms: Terms) -> Any:
        status = Status.CAPTURED if SetPay.capture else Status.AUTHORISED

        class Flow:
            def step(self, incoming: Any) -> Step:
                return Step({"kind": "result"}, done=True, status=status, evidence={"authorisation": "AU1"})
        return Flow()


def _payee(kind: str, tmp_path: Path, bank: Bank) -> tuple[PaymentManager, Terms]:
    ctx = PartyContext(bank=bank, account="seller")             # type: ignore[arg-type]  # the counting stand-in
    if kind == "memory":
        payee = PaymentManager(ctx, modules={"setpay": SetPay})
    else:
        db = Database(f"sqlite:///{tmp_path / 'shop.db'}")
        payee = PaymentManager(ctx, modules={"setpay": SetPay}, store=RecordStore(db=db),
                               sessions=DatabaseSessions(db))
    terms = Terms.new(PRICE, EUR, "seller", b"order: one bicycle bell", "seller")
    payee.expect(terms)
    reply = payee.handle({"payment_id": terms.payment_id, "module": "setpay", "body": {"kind": "instruction"}})
    assert reply is not None
    return payee, terms


@pytest.mark.parametrize("kind", ["memory", "database"])
def test_a_refund_is_what_the_next_refund_sees(kind: str, tmp_path: Path) -> None:
    bank = Bank()
    bank.captured = PRICE
    SetPay.capture = True
    payee, terms = _payee(kind, tmp_path, bank)
    rec = payee.refund(terms.payment_id, 200)
    assert rec.refunded == 200 and rec.status is Status.PARTLY_REFUNDED
    with pytest.raises(PaymentError, match="a refund must be 1 to 1000 minor units"):      # refused here
        payee.refund(terms.payment_id, 1_001)
    assert bank.calls == ["set/refund"]                   # the bank was not asked for what was never left
    assert payee.record(terms.payment_id, "payee").refunded == 200
    rec = payee.refund(terms.payment_id)                  # the rest, and nothing after it
    assert rec.refunded == PRICE and rec.status is Status.REFUNDED
    with pytest.raises(PaymentError, match="a refund must be 1 to 0|only a completed payment"):
        payee.refund(terms.payment_id, 1)
    assert bank.calls == ["set/refund", "set/refund"] and bank.refunded == PRICE


@pytest.mark.parametrize("kind", ["memory", "database"])
def test_a_settled_payment_is_settled_once(kind: str, tmp_path: Path) -> None:
    bank = Bank()
    SetPay.capture = False                                # in an exchange: authorised, held until T decides
    payee, terms = _payee(kind, tmp_path, bank)
    item = ItemPayee(payee, "setpay", None, account="seller", payee_name="seller")   # type: ignore[arg-type]
    request = {"terms": terms.as_dict()}
    item.settle({}, request, b"resolved")
    item.settle({}, request, b"resolved")                 # T's decision handed over again (a retry, a restart)
    assert bank.calls == ["set/settle"]
    assert payee.record(terms.payment_id, "payee").status is Status.CAPTURED


@storages()
def test_a_database_from_before_keeps_its_sessions_and_records(storage: Storage) -> None:
    """Version 2 of payee_sessions drops the session's copy of the record; the session and the record
    (in payment_records, where every save also wrote it) are still there."""
    from semper.client.payment.sessions import SCHEMA
    from semper.client.payment.store import SCHEMA as RECORDS
    from semper.client.support.migrations import Schema, versions
    bank = Bank()
    bank.captured = PRICE
    SetPay.capture = True
    db = Database(storage.url("shop"))
    db.migrate(RECORDS)
    db.migrate(Schema(SCHEMA.store, SCHEMA.migrations[:1]))          # the table as main made it, with its column
    terms = Terms.new(PRICE, EUR, "seller", b"order: one bicycle bell", "seller")
    with db.transaction() as tx:
        tx.execute("INSERT INTO payee_sessions (payment_id, terms, route, module, done, rounds, record) "
                   "VALUES (?, ?, '{}', 'setpay', 1, 1, 'stale')", (terms.payment_id, json.dumps(terms.as_dict())))
    RecordStore(db=db).put(Record(terms.payment_id, "setpay", "payee", terms, Status.CAPTURED,
                                  evidence={"authorisation": "AU1"}))
    payee = PaymentManager(PartyContext(bank=bank, account="seller"),           # type: ignore[arg-type]
                           modules={"setpay": SetPay}, sessions=DatabaseSessions(db))
    assert versions(db)["payee_sessions"] == 2
    st = payee.sessions.get(terms.payment_id)
    assert st is not None and st.done and st.module == "setpay"
    assert payee.refund(terms.payment_id, 200).refunded == 200
    assert payee.record(terms.payment_id, "payee").refunded == 200
    db.close()
