"""Every cell of the paper's Figure 2, as a person reaches it (client/commerce/figure2.py), with faults.

Per cell: the fault-free exchange through the TINGUIN (a scripted user confirms the exact text of
what is given, what is expected, with whom and what keeps it fair; the result screen ends it), and
the same items (made by figure2.make_offer/describe, the product's builders) with each party
stopping before each message it sends: the honest party ends with what it was promised, its item
kept back, a revocation, or the third party's signed decision; the bank's audit stays clean, and the
judge, given the honest party's evidence, rules the exchange fair where it ended fairly.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fig2_support import EUR, Exchange, People, exchange, people

from semper.client.commerce import figure2 as f2
from semper.client.commerce.errors import DealDeclined
from semper.client.commerce.exchange_client import ExchangeClient
from semper.client.exchange.judge import judge
from semper.client.exchange.party import ResponsePlan
from semper.client.tinguin.api import Script, run_scripted
from semper.client.tinguin.model import OutcomeStatus

# The scripted user confirms as soon as the text is on screen (the TINGUIN's 0.6 s reading rule is tested on
# its own screen, test_tinguin_screens.py): this module confirms some thirteen exchanges.
READ_AT_ONCE = 0.0

REPORT = b"market report, Q4: " + bytes(range(256)) * 3
LETTER = b"Dear Bob, the lease ends on 31 March. -- Alice"
NOTES = b"Bob's field notes " * 40
CONTRACT = "a" * 64


def _person(people: People, who: str, client: ExchangeClient | None) -> f2.Person:
    p = people[who]
    return f2.Person(p.identity, p.payments, p.verifiers, client, people.trust, people.ttp_info())  # type: ignore[arg-type]


# cell -> (originator, responder, what the originator gives, what it expects, funding)
Case = tuple[str, str, f2.Thing, f2.Thing, dict[str, int]]
CASES: dict[str, Case] = {
    "payment": ("bob", "alice", f2.Money("ecash", 300, EUR), None, {"bob": 300}),
    "signature-transfer": ("alice", "bob", f2.Signature("notice", {"text": "the meeting moves to 10:00"}), None, {}),
    "information-transfer": ("alice", "bob", f2.Information("letter.txt", LETTER), None, {}),
    "fair-money-exchange": ("bob", "alice", f2.Money("cheque", 500, EUR), f2.Money("ecash", 500, EUR),
                            {"alice": 500}),
    "fair-payment-with-receipt": ("alice", "bob", f2.Signature("receipt", {"amount": 700, "currency": EUR}),
                                  f2.Money("ecash", 700, EUR), {"bob": 700}),
    "fair-payment-with-receipt-revocable": ("alice", "bob", f2.Signature("voucher", {"value": 700}, revocable=True),
                                            f2.Money("setpay", 700, EUR), {}),
    "fair-purchase": ("alice", "bob", f2.Information("report.bin", REPORT), f2.Money("ecash", 700, EUR),
                      {"bob": 700}),
    "fair-contract-signing": ("alice", "bob", f2.Signature("contract-signature", {"contract": CONTRACT, "role": "a"}),
                              f2.Signature("contract-signature", {"contract": CONTRACT, "role": "b"}), {}),
    "certified-mail": ("alice", "bob", f2.Information("letter.txt", LETTER),
                       f2.Signature("receipt-of-mail", {"sha256": f2.Information("l", LETTER).digest()[0]}), {}),
    "fair-information-exchange": ("alice", "bob", f2.Information("report.bin", REPORT),
                                  f2.Information("notes.txt", NOTES), {}),
}
# what the responder gives back (the mirror of the originator's expectation, with the data where it has it)
GIVES_BACK: dict[str, f2.Thing] = {
    "fair-contract-signing": f2.Signature("contract-signature", {"contract": CONTRACT, "role": "b"}),
    "certified-mail": f2.Signature("receipt-of-mail", {"sha256": f2.Information("l", LETTER).digest()[0]}),
    "fair-information-exchange": f2.Information("notes.txt", NOTES),
}
PROTOCOL = {"payment": "plain", "signature-transfer": "plain", "information-transfer": "plain",
            "fair-payment-with-receipt-revocable": "rev-rev"}
KINDS = {"plain": ("negotiate", "negotiated", "propose", "accept"),
         "gen-ver": ("negotiate", "negotiated", "propose", "accept", "item"),
         "rev-rev": ("negotiate", "negotiated", "propose", "accept", "item")}
SENDER = {"negotiate": "originator", "negotiated": "responder", "propose": "originator", "accept": "responder",
          "item": "originator"}


def _gives_back(cell: str) -> f2.Thing:
    return GIVES_BACK.get(cell, CASES[cell][3])


def _expects_back(cell: str) -> f2.Thing:
    give = CASES[cell][2]
    if isinstance(give, f2.Information):           # the responder names information by its digest only
        sha, length = give.digest()
        return f2.Information(give.name, sha256=sha, length=length)
    return give


def _fund(people: People, funding: dict[str, int]) -> None:
    """E-cash for the payer (coins a stopped exchange left in the wallet are used first), and money in the
    accounts for the cheques and SET payments of many runs in one world."""
    for p in people.persons.values():
        if people.world.bank.balance(p.account) < 5_000:
            people.world.bank.cash_in(p.account, 10_000)
    for who, amount in funding.items():
        if people[who].wallet.balance(EUR) < amount:
            people[who].payments.module("ecash").withdraw(amount)            # type: ignore[attr-defined]


def _party_exchange(people: People, cell: str) -> Callable[[], Exchange]:
    o, r, give, expect, _ = CASES[cell]

    def make() -> Exchange:
        po, pr = _person(people, o, None), _person(people, r, None)
        plan = ResponsePlan(f2.describe(_expects_back(cell)), f2.make_offer(pr, _gives_back(cell)))
        fair = PROTOCOL.get(cell) != "plain"
        return Exchange(o, r, f2.make_offer(po, give), f2.describe(expect), plan, fair=fair)
    return make


def _protocol(cell: str) -> str:
    return PROTOCOL.get(cell, "gen-ver")


FAULTS = [(c, k) for c in CASES for k in KINDS[_protocol(c)]]


def test_every_cell_of_figure_2_is_named() -> None:
    assert {f2.cell_for(give, expect).key for _o, _r, give, expect, _f in CASES.values()} == set(f2.CELLS)
    with pytest.raises(Exception, match="nothing for nothing"):
        f2.cell_for(None, None)


@pytest.mark.parametrize("cell", list(CASES))
def test_each_cell_through_the_tinguin(people: People, tmp_path: Path, cell: str) -> None:
    """The originator confirms in the TINGUIN and the exchange runs; the responder's party answers."""
    o, r, give, expect, funding = CASES[cell]
    _fund(people, funding)
    before = people.money()
    oc = ExchangeClient(lambda: people.party(o, tmp_path, step_timeout=2.0))
    rc = ExchangeClient(lambda: people.party(r, tmp_path, step_timeout=2.0))
    try:
        known = rc.expect(ResponsePlan(f2.describe(_expects_back(cell)),
                                       f2.make_offer(_person(people, r, rc), _gives_back(cell))))
        seen: list[str] = []

        def deal(ui: object) -> f2.PeerResult:
            try:
                return f2.originate(ui, _person(people, o, oc), rc.url, people[r].certificate, give, expect,
                                    patience=60.0)
            finally:
                seen.extend(getattr(ui, "seen", []))
        result = run_scripted(deal, phrase="my tea phrase", say=lambda _line: None, min_read=READ_AT_ONCE)
        theirs = rc.wait(known, 30)
    finally:
        oc.close()
        rc.close()
    assert result.ok, result.summary
    assert result.outcome is not None and result.outcome.protocol == _protocol(cell)
    assert theirs is not None and theirs.status in ("completed", "resolved"), theirs
    text = "\n".join(seen)
    assert "You give:" in text and "You expect:" in text and f2.CELLS[f2.cell_for(give, expect).key].title in text
    fingerprint = hashlib.sha256(people[r].certificate.public_bytes(Encoding.DER)).hexdigest()
    assert f"SHA-256 {fingerprint[:32]}" in text                      # the peer, as its certificate names it
    after = people.money()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["holds"] == 0                                         # nothing left reserved or held
    assert sum(delta[k] for k in ("alice", "bob", "alice wallet", "bob wallet")) == 0     # money conserved
    paid = [x for x in (give, expect) if isinstance(x, f2.Money)]
    if len(paid) == 1:                                                 # the payee got exactly the amount
        payee = r if paid[0] is give else o
        assert delta[payee] == paid[0].amount, delta
    people.clean()


def test_a_declined_confirmation_sends_nothing(people: People, tmp_path: Path) -> None:
    o, r, give, expect, _ = CASES["fair-purchase"]
    rc = ExchangeClient(lambda: people.party(r, tmp_path))
    oc = ExchangeClient(lambda: people.party(o, tmp_path))
    try:
        known = rc.expect(ResponsePlan(f2.describe(_expects_back("fair-purchase")),
                                       f2.make_offer(_person(people, r, rc), expect)))
        with pytest.raises(DealDeclined):
            run_scripted(lambda ui: f2.originate(ui, _person(people, o, oc), rc.url, people[r].certificate, give,
                                                 expect), script=Script(accept=False), phrase="my tea phrase",
                         say=lambda _line: None, min_read=READ_AT_ONCE)
        assert rc.wait(known, 1.0) is None                    # the peer never heard of it
        assert oc.party.counters["messages"] == 0
    finally:
        oc.close()
        rc.close()


def test_another_key_answering_is_refused(people: People, tmp_path: Path) -> None:
    """Alice confirmed an exchange with Bob; whoever answers at that address with another key gets nothing."""
    o, _r, give, expect, _ = CASES["certified-mail"]
    impostor = ExchangeClient(lambda: people.party("bob", tmp_path))
    oc = ExchangeClient(lambda: people.party(o, tmp_path))
    try:
        impostor.expect(ResponsePlan(f2.describe(_expects_back("certified-mail")),
                                     f2.make_offer(_person(people, "bob", impostor), _gives_back("certified-mail"))))
        result = run_scripted(lambda ui: f2.originate(ui, _person(people, o, oc), impostor.url,
                                                      people["alice"].certificate, give, expect),
                              phrase="my tea phrase", say=lambda _line: None, min_read=READ_AT_ONCE)
    finally:
        oc.close()
        impostor.close()
    assert result.status is OutcomeStatus.CANCELLED and result.outcome is not None
    assert result.outcome.status == "no-exchange" and "not the one you chose" in result.outcome.reason


def test_the_responder_confirms_its_standing_offer_in_the_tinguin(people: People, tmp_path: Path) -> None:
    """Bob, the responder of certified mail, confirms in the TINGUIN what he signs for which letter and
    from whom; Alice's letter arrives, he holds it and she his receipt."""
    import threading
    o, r, give, expect, _ = CASES["certified-mail"]
    oc = ExchangeClient(lambda: people.party(o, tmp_path))
    rc = ExchangeClient(lambda: people.party(r, tmp_path))
    box: dict[str, object] = {}
    try:
        def later() -> None:
            import time
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not rc.party.plans:
                time.sleep(0.05)
            box["o"] = oc.originate(rc.url, f2.make_offer(_person(people, o, oc), give), f2.describe(expect), 60,
                                    responder=people[r].certificate)
        t = threading.Thread(target=later, daemon=True)
        t.start()
        result = run_scripted(lambda ui: f2.respond(ui, _person(people, r, rc), _gives_back("certified-mail"),
                                                    _expects_back("certified-mail"), peer=people[o].certificate,
                                                    patience=30),
                              phrase="my tea phrase", say=lambda _line: None, min_read=READ_AT_ONCE)
        t.join(40)
    finally:
        oc.close()
        rc.close()
    assert result.ok, result.summary
    assert result.outcome is not None and result.outcome.received is not None
    assert box["o"].status == "completed"                                # type: ignore[attr-defined]


@pytest.mark.parametrize("cell, kind", FAULTS, ids=[f"{c}-stop-before-{k}" for c, k in FAULTS])
def test_a_party_that_stops_leaves_the_other_whole(people: People, tmp_path: Path, cell: str, kind: str) -> None:
    o, r, _give, _expect, funding = CASES[cell]
    _fund(people, funding)
    faulty_role = SENDER[kind]
    faulty = o if faulty_role == "originator" else r
    ran = exchange(people, tmp_path, _party_exchange(people, cell), faulty=faulty, stop_before=kind)
    honest = ran.honest(faulty_role)
    if honest is None:                                  # stopped before the first message: nobody heard of it
        assert kind == "negotiate"
        people.clean()
        return
    protocol = _protocol(cell)
    if protocol == "plain":
        # no fairness was agreed: the receiver decides after each transfer; the giver keeps the signed evidence
        assert honest.status in ("no-exchange", "failed", "completed"), honest.as_dict()
        if honest.status == "failed":
            assert honest.gave and honest.role == "originator"
    else:
        assert honest.status in ("no-exchange", "pending", "resolved", "revoked"), honest.as_dict()
        if honest.gave and honest.status != "revoked":
            assert honest.received is not None, honest.as_dict()            # gave only for what it holds
        if kind in ("negotiated", "propose"):
            assert honest.status == "no-exchange"
        if protocol == "gen-ver" and kind == "item":
            assert honest.status == "resolved" and honest.received is not None
        if protocol == "rev-rev" and kind in ("accept", "item"):
            assert honest.status == "revoked"
            assert ran.delta("holds") == 0 and ran.delta("bob") == 0 and ran.delta("alice") == 0
    mine = r if faulty == o else o
    if protocol != "plain" and honest.status in ("no-exchange", "revoked"):
        # back to the start for the honest party (a cheque the faulty drawer reserved and then never proposed
        # stays reserved for it until its time runs out: its own doing, nobody else's money)
        assert ran.delta(mine) == 0 and ran.delta(f"{mine} wallet") == 0, (ran.before, ran.after)
        assert ran.delta(faulty) <= 0, (ran.before, ran.after)
    if honest.status == "pending":
        assert ran.delta(faulty) <= 0, (ran.before, ran.after)          # the party that stopped got nothing
    path = ran.bundles.get(honest.role)
    if path is not None and honest.status in ("resolved", "revoked", "no-exchange", "completed"):
        ruling = judge(path, people.trust, people["alice"].verifiers)
        assert ruling.bundle_ok, ruling.bundle_problems
        if protocol != "plain":
            assert ruling.fair, ruling.as_dict()                                 # type: ignore[attr-defined]
    people.clean()


def test_semper_exchange_cells_lists_every_cell(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from semper.client.cli import main
    assert main(["exchange", "cells", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["cell"] for r in rows] == list(f2.CELLS) and len(rows) == 9


def test_a_standing_offer_for_one_person_is_refused_to_another(people: People, tmp_path: Path) -> None:
    """Bob's standing offer names who may take it (here: a certificate that is not Alice's); Alice asking
    gets a refusal in negotiation and nothing is given on either side."""
    o, r, give, expect, _ = CASES["certified-mail"]
    rc = ExchangeClient(lambda: people.party(r, tmp_path))
    oc = ExchangeClient(lambda: people.party(o, tmp_path))
    try:
        plan = ResponsePlan(f2.describe(_expects_back("certified-mail")),
                            f2.make_offer(_person(people, r, rc), _gives_back("certified-mail")),
                            originator=people["bob"].certificate)
        rc.expect(plan)
        out = oc.originate(rc.url, f2.make_offer(_person(people, o, oc), give), f2.describe(expect), 30,
                           responder=people[r].certificate)
    finally:
        oc.close()
        rc.close()
    assert out.status == "no-exchange" and "for another party" in out.reason and not out.gave, out.as_dict()
