"""Fair exchange paying with every module: each with the property it can honestly have, and every fault.

* e-cash, externally verifiable (gen-ver, the responder pays): the payee deposits the coins for this
  payment in its check; the third party, resolving, deposits them for the payee itself, so a coin
  spent elsewhere fails its check and a coin the payee has already counts once;
* cheque, generatable (gen-ver, the originator pays): reserved at the bank before it is committed,
  released by the drawer or by the third party in its place; back to the drawer only on the third
  party's 'expired';
* SET-like account payment, revocable (rev-rev): held at the bank until the third party resolves
  (captured) or revokes (released to the payer).

For every message, the party that sends it stops right there; the honest party must end with what it
was promised, its money back, or the third party's signed decision, and the money is counted at the
bank (its audit included); the judge, given the honest party's evidence, rules accordingly. The card
purse in exchanges is tests/test_exchange_faults.py's."""
from __future__ import annotations

from pathlib import Path

import pytest
from fig2_support import EUR, Exchange, People, Ran, exchange, people, run

from semper.client.exchange.judge import judge
from semper.client.exchange.party import ResponsePlan
from semper.client.payment.manager import LocalPayee, pay
from semper.client.payment.model import Terms
from semper.client.transfer.information import InformationOffer, describe
from semper.client.transfer.items import Description, PackageDescription
from semper.client.transfer.managers import PackageOffer
from semper.client.transfer.payment import PaymentOffer
from semper.client.transfer.statements import CredentialOffer, StatementOffer

PRICE = 700
REPORT = b"market report, Q3: " + bytes(range(200)) * 4
KINDS = ("negotiate", "negotiated", "propose", "accept", "item")
SENDER = {"negotiate": "originator", "negotiated": "responder", "propose": "originator", "accept": "responder",
          "item": "originator"}


def _report_with_receipt(people: People, seller: str) -> tuple[PackageOffer, PackageDescription]:
    receipt = {"type": "receipt", "goods": "market report Q3", "amount": PRICE, "currency": EUR}
    offer = PackageOffer((InformationOffer(REPORT, "report.bin"),
                          StatementOffer(people[seller].identity.sign, receipt)),
                         "report with receipt")
    want = PackageDescription((describe(REPORT, "report.bin"),
                               Description("statement", {"statement_type": "receipt",
                                                         "fields": {"amount": PRICE, "currency": EUR}})))
    return offer, want


def _payment(module: str) -> Description:
    return Description("payment", {"module": module, "amount": PRICE, "currency": EUR})


def ecash_purchase(people: People) -> Exchange:
    """gen-ver: Alice's report and receipt (generatable) for Bob's e-cash (verifiable)."""
    offer, expect = _report_with_receipt(people, "alice")
    return Exchange("alice", "bob", offer, _payment("ecash"),
                    ResponsePlan(expect, PaymentOffer(people.payer("bob", "ecash"), PRICE, EUR)))


def cheque_purchase(people: People, valid_for: float = 3600.0) -> Exchange:
    """gen-ver: Bob's reserved cheque (generatable) for Alice's report (verifiable); Bob originates."""
    return Exchange("bob", "alice", PaymentOffer(people.payer("bob", "cheque", valid_for=valid_for), PRICE, EUR),
                    describe(REPORT, "report.bin"),
                    ResponsePlan(_payment("cheque"), InformationOffer(REPORT, "report.bin")))


def set_voucher(people: People) -> Exchange:
    """rev-rev: Alice's voucher, revocable by T, for Bob's SET-like payment, revocable at the bank."""
    voucher = {"voucher": "V-77", "value": PRICE}
    return Exchange("alice", "bob", CredentialOffer(people["alice"].identity.sign, voucher, revocable=True),
                    _payment("setpay"),
                    ResponsePlan(Description("credential", {"attributes": voucher, "revocable": True}),
                                 PaymentOffer(people.payer("bob", "setpay"), PRICE, EUR)))


SCENARIOS = {"ecash": ecash_purchase, "cheque": cheque_purchase, "setpay": set_voucher}
# Bob pays, Alice is paid, in every scenario
EXPECTED = {      # the honest party's ending when the other stops before sending <kind> (None: never heard of it)
    "ecash": {"negotiate": {None}, "negotiated": {"no-exchange"}, "propose": {"no-exchange"}, "accept": {"pending"},
              "item": {"resolved"}},
    "cheque": {"negotiate": {None}, "negotiated": {"no-exchange"}, "propose": {"no-exchange"}, "accept": {"pending"},
               "item": {"resolved"}},
    "setpay": {"negotiate": {None}, "negotiated": {"no-exchange"}, "propose": {"no-exchange"}, "accept": {"revoked"},
               "item": {"revoked"}},
}
CASES = [(m, k) for m in SCENARIOS for k in KINDS]


def _fund(people: People, module: str) -> None:
    if module == "ecash":
        people["bob"].payments.module("ecash").withdraw(PRICE)                # type: ignore[attr-defined]


def _judged(people: People, ran: Ran, role: str) -> object | None:
    path = ran.bundles.get(role)
    if path is None:
        return None
    ruling = judge(path, people.trust, people["alice"].verifiers)
    assert ruling.bundle_ok, ruling.bundle_problems
    return ruling


@pytest.mark.parametrize("module", list(SCENARIOS))
def test_fault_free_exchange_pays_once(people: People, tmp_path: Path, module: str) -> None:
    _fund(people, module)
    ran = exchange(people, tmp_path, lambda: SCENARIOS[module](people))
    assert ran.originator.status in ("completed", "resolved"), ran.originator.as_dict()
    assert ran.responder is not None and ran.responder.status in ("completed", "resolved"), ran.responder.as_dict()
    assert ran.delta("alice") == PRICE
    assert ran.delta("bob") + ran.delta("bob wallet") == -PRICE
    assert ran.delta("holds") == 0                          # nothing left held: the SET payment was settled
    # optimistic: the third party saw nothing, except the one resolution that makes a SET payment final
    assert ran.originator.ttp_requests + ran.responder.ttp_requests == (1 if module == "setpay" else 0)
    for role in ("originator", "responder"):
        ruling = _judged(people, ran, role)
        assert ruling is not None and ruling.fair and ruling.originator.fulfilled and ruling.responder.fulfilled
    people.clean()


@pytest.mark.parametrize("module, kind", CASES, ids=[f"{m}-stop-before-{k}" for m, k in CASES])
def test_a_party_that_stops_leaves_the_other_whole(people: People, tmp_path: Path, module: str, kind: str) -> None:
    _fund(people, module)
    ex = SCENARIOS[module](people)
    faulty_role = SENDER[kind]
    faulty = ex.originator if faulty_role == "originator" else ex.responder
    ran = exchange(people, tmp_path, lambda: SCENARIOS[module](people), faulty=faulty, stop_before=kind)
    honest = ran.honest(faulty_role)
    status = honest.status if honest is not None else None
    assert status in EXPECTED[module][kind], honest.as_dict() if honest else None
    honest_name = "bob" if faulty == "alice" else "alice"
    if honest_name == "bob":          # the honest payer: its money went only for what it holds
        spent = ran.delta("bob") + ran.delta("bob wallet") + (PRICE if ran.delta("holds") == PRICE else 0) < 0
        assert not spent or (honest is not None and honest.received is not None), (status, ran.before, ran.after)
    elif honest is not None and honest.gave and status != "revoked":
        assert ran.delta("alice") == PRICE, (status, ran.before, ran.after)     # the honest payee gave: paid
    if status == "revoked":           # both void: the SET hold went back to Bob
        assert ran.delta("alice") == 0 and ran.delta("bob") == 0 and ran.delta("holds") == 0
    if status == "resolved":
        assert ran.delta("alice") == PRICE and honest is not None and honest.received is not None
    ruling = _judged(people, ran, honest.role) if honest is not None else None
    if ruling is not None and status in ("resolved", "revoked", "no-exchange"):
        assert ruling.fair, ruling.as_dict()                                     # type: ignore[attr-defined]
    people.clean()


def test_spent_coins_fail_the_check_and_the_complaint(people: People, tmp_path: Path) -> None:
    """e-cash is verifiable only because the check deposits: coins Bob spent before are refused by Alice
    (she gives nothing), and Bob's complaint at the third party is refused as false (its check deposits)."""
    bob, alice = people["bob"], people["alice"]
    bob.payments.module("ecash").withdraw(PRICE)                             # type: ignore[attr-defined]
    copy = list(bob.wallet.coins)
    terms = Terms.new(PRICE, EUR, alice.account, b"elsewhere", "alice")
    alice.payments.expect(terms)
    pay(bob.payments, terms, alice.payments.offer(), LocalPayee(alice.payments))
    bob.wallet.coins = copy                                                    # ... and he keeps a copy
    ran = exchange(people, tmp_path, lambda: ecash_purchase(people))
    assert ran.originator.status == "pending", ran.originator.as_dict()      # Alice gave nothing
    assert ran.responder is not None and ran.responder.status == "refused", ran.responder.as_dict()
    assert "false complaint" in ran.responder.reason and "double spend" in ran.responder.reason
    assert ran.delta("alice") == 0
    bob.wallet.coins = []
    people.clean()


def test_the_third_party_deposits_coins_the_payee_never_saw(people: People, tmp_path: Path) -> None:
    """Bob's payment reaches Alice after her patience: she asked the status and went away. Bob resolves:
    the third party deposits his coins for Alice and Bob gets the report. Alice, recovering from her
    archive alone, finds the resolution; her own deposit of those coins for this payment counts once."""
    people["bob"].payments.module("ecash").withdraw(PRICE)                    # type: ignore[attr-defined]
    ran = exchange(people, tmp_path, lambda: ecash_purchase(people), faulty="bob", delays={"accept": 1.5})
    assert ran.originator.status == "pending", ran.originator.as_dict()
    assert ran.responder is not None and ran.responder.status == "resolved", ran.responder.as_dict()
    assert ran.delta("alice") == PRICE and ran.delta("bob wallet") == -PRICE

    async def recover() -> list:
        alice = people.party("alice", tmp_path)
        await alice.start()
        try:
            return await alice.recover()
        finally:
            await alice.stop()
            alice.close()
    outcomes = run(recover())
    assert [o.status for o in outcomes] == ["resolved"], [o.as_dict() for o in outcomes]
    assert people.money()["alice"] == ran.after["alice"]                      # counted once
    people.clean()


def test_a_cheque_commitment_nobody_resolved_goes_back_to_its_drawer(people: People, tmp_path: Path) -> None:
    """Bob commits a cheque reserved for 4 seconds; Alice stops before accepting. While it runs the third
    party says 'undecided'; after it, 'expired', and the bank gives the reservation back to Bob. (Alice
    wants a second left when she checks the commitment: 3 s of slack for a loaded machine.)"""
    people["alice"].verifiers["cheque"].margin = 1
    try:
        ran = exchange(people, tmp_path, lambda: cheque_purchase(people, valid_for=4), faulty="alice",
                       stop_before="accept", configure=lambda o, r: o.waits.update(accept=5.0))
    finally:
        people["alice"].verifiers["cheque"].margin = 60
    assert ran.originator.status == "expired", ran.originator.as_dict()
    assert ran.delta("bob") == 0 and ran.delta("holds") == 0 and ran.delta("alice") == 0
    people.clean()


def test_a_late_resolution_of_a_cheque_is_refused_as_expired(people: People, tmp_path: Path) -> None:
    """The other side of the time bound: a payee that resolves after the commitment's time gets the third
    party's signed 'expired' (the deadline was in the signed proposal it accepted), and the drawer its
    reservation back; an honest payee resolves within its patience, long before."""
    people["alice"].verifiers["cheque"].margin = 1
    try:
        ran = exchange(people, tmp_path, lambda: cheque_purchase(people, valid_for=4), faulty="bob",
                       stop_before="item", configure=lambda o, r: r.waits.update(item=5.0))
    finally:
        people["alice"].verifiers["cheque"].margin = 60
    assert ran.responder is not None and ran.responder.status == "expired", ran.responder.as_dict()
    assert ran.delta("alice") == 0 and ran.delta("holds") == PRICE           # reserved until Bob asks for it
    ruling = _judged(people, ran, "responder")
    assert ruling is not None and ruling.originator.how == "commitment expired"     # type: ignore[attr-defined]
    people.clean()
