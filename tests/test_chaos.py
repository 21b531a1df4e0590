"""``semper chaos``: the command run small (every fault kind and every workflow, all checks passing),
a run replayed from its seed, the checks shown able to fail, and the product defects chaos found.

The command test starts its own world in a temporary folder: ``semper serve`` processes on
loopback, SoftHSM2 tokens, the buyer's card as a process (no pcscd); every wait in it is bounded,
and the subprocess itself has a timeout.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from semper.chaos import checks
from semper.chaos.plan import BUYER_CHEATS, CHEATS, KINDS, WORKFLOWS, make_plan, run_seed

REPO = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("SEMPER_CHAOS_RUNS", "10"))
SEED = int(os.environ.get("SEMPER_CHAOS_SEED", "29"))
# run 8 of seed 29 kills the shop at its request 4 in a mail order paid from the purse: just before the card's
# debit proof reached it while a purse purchase was four requests (the one known limit before the shop kept
# its deals in its database; tests/test_shop_durable.py kills it there now, request 3), its clearing request
# since the card's hello travels with the order; either way the restarted shop completes the deal


def _chaos(*args: str, timeout: float = 420) -> tuple[int, list[dict[str, Any]], dict[str, Any], str]:
    proc = subprocess.run([sys.executable, "-m", "semper.client.cli", "chaos", "--json", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = proc.stdout.splitlines()
    runs = [json.loads(line) for line in lines if line.startswith('{"deals"')]
    start = next(i for i, line in enumerate(lines) if line == "{")
    return proc.returncode, runs, json.loads("\n".join(lines[start:])), proc.stderr


@pytest.fixture(scope="module")
def small_run() -> tuple[int, list[dict[str, Any]], dict[str, Any], str]:
    return _chaos("--runs", str(RUNS), "--seed", str(SEED))


@pytest.mark.timeout(480)
def test_chaos_runs_every_workflow_under_every_fault_and_passes(small_run: Any) -> None:
    code, runs, summary, err = small_run
    assert code == 0, (summary["failing_runs"], err[-2000:])
    assert summary["runs"] == RUNS == len(runs) and summary["violations"] == 0
    assert set(summary["workflows"]) == set(WORKFLOWS)
    assert set(summary["faults_planned"]) == set(KINDS)
    # the faults did happen, not only planned: the card was torn, links dropped, a party crashed, the shop cheated
    assert {"card-tear", "drop", "crash", "cheat"} <= set(summary["faults_injected"]), summary
    assert summary["final_audit"]["exit"] == 0 and summary["final_audit"]["clean"]
    for r in runs:
        assert r["violations"] == [] and r["plan"]["run_seed"] == run_seed(SEED, r["index"])
        assert r["deals"] or r["results"], r                   # every run drove a deal (or tried to)
    # the honest buyer always ended satisfied, with nothing given, or with evidence that wins
    assert {d["outcome"] for r in runs for d in r["deals"]} <= {"satisfied", "nothing-given", "buyer-wins"}


@pytest.mark.timeout(240)
def test_a_run_replays_from_its_seed(small_run: Any) -> None:
    """The same plan, the same injections at the same request, the same findings."""
    _code, runs, summary, _err = small_run
    crash = next(r for r in runs if any(f["kind"] == "crash" and f["where"] == "shop" for f in r["plan"]["faults"])
                 and (r["plan"]["workflow"], r["plan"]["payment"]) == ("mail-order", "card-purse")) if SEED == 29 else \
        next(r for r in runs if any(f["kind"] == "crash" for f in r["plan"]["faults"]))
    code, again, replay_summary, err = _chaos("--replay", str(crash["plan"]["run_seed"]), timeout=200)
    assert code == 0, (replay_summary, err[-2000:])
    assert len(again) == 1 and replay_summary["seed"] is None and replay_summary["runs"] == 1
    one = again[0]
    assert one["plan"] == crash["plan"] and one["injected"] == crash["injected"]
    assert [d["outcome"] for d in one["deals"]] == [d["outcome"] for d in crash["deals"]]
    # no known limit is left: the shop killed between the card's debit and the proof completes the deal
    assert one["known_limits"] == crash["known_limits"] == [] and summary["known_limits"] == []
    if SEED == 29:
        assert one["results"] == ["satisfied"] and [d["outcome"] for d in one["deals"]] == ["satisfied"], one


@pytest.mark.postgres
@pytest.mark.timeout(480)
def test_chaos_on_postgresql_kills_the_shop_and_the_bank_and_passes() -> None:
    """The same runs with every party's state in a PostgreSQL cluster of the run's own (``--db
    postgresql``): the shop and the bank killed and restarted, no violation and no known limit."""
    from semper.bench.postgres import missing_reason
    if missing_reason():
        pytest.skip(missing_reason() or "")
    code, runs, summary, err = _chaos("--runs", str(RUNS), "--seed", str(SEED), "--db", "postgresql")
    assert code == 0, (summary["failing_runs"], err[-2000:])
    assert summary["db"] == "postgresql" and summary["runs"] == RUNS == len(runs)
    assert summary["violations"] == 0 and summary["known_limits"] == []
    assert summary["final_audit"]["exit"] == 0 and summary["final_audit"]["clean"]
    crashed = {i.split()[1] for r in runs for i in r["injected"] if i.startswith("crash ")}
    assert "shop" in crashed, runs
    assert {d["outcome"] for r in runs for d in r["deals"]} <= {"satisfied", "nothing-given", "buyer-wins"}


def test_plans_come_from_the_seed_alone_and_rotate() -> None:
    seeds = [run_seed(3, i) for i in range(20)]
    assert seeds == [run_seed(3, i) for i in range(20)] and len(set(seeds)) == 20
    plans = [make_plan(s) for s in seeds]
    assert [p.as_dict() for p in plans] == [make_plan(s).as_dict() for s in seeds]
    assert {(p.workflow, p.kinds[0]) for p in plans} == {(w, k) for w in WORKFLOWS for k in KINDS}
    assert make_plan(seeds[0], ("contract",)).workflow == "contract"
    for p in plans:
        for f in p.faults:
            assert f.kind in KINDS and f.describe()
            if f.kind == "cheat":
                assert f.where in CHEATS + BUYER_CHEATS
            if f.kind in ("drop", "crash"):
                assert f.where in ("shop", "bank", "ttp") and f.at >= 1
                assert f.mode in (("up", "down", "during") if f.kind == "crash" else ("up", "down"))
                assert (f.delay_ms > 0) == (f.mode == "during") or f.delay_ms == 0
    with pytest.raises(ValueError):
        make_plan(1, ("teleshopping",))


# ---- the checks can fail ---------------------------------------------------------------------------------
M0 = checks.Money(buyer_account=1000, seller_account=0, purse=500, purse_float=500, issued=10_000)


def test_money_check_finds_created_lost_stranded_and_unproven_value() -> None:
    paid = checks.Money(900, 100, 500, 500, 10_000)
    assert checks.check_money(M0, paid, 100) == []
    created = checks.Money(900, 150, 500, 500, 10_000)
    assert any("created 50" in v for v in checks.check_money(M0, created, 100))
    lost = checks.Money(900, 50, 500, 500, 10_000)
    assert any("lost 50" in v for v in checks.check_money(M0, lost, 100))
    stranded = checks.Money(1000, 0, 400, 500, 10_000)             # the card paid 100, no bank saw it
    found = checks.check_money(M0, stranded, 0)
    assert any("100 of card debits that reached no bank" in v for v in found) and any("lost 100" in v for v in found)
    assert any("proves 0 paid" in v for v in checks.check_money(M0, paid, 0))          # paid without proof
    assert any("issued moved" in v for v in checks.check_money(M0, checks.Money(900, 100, 500, 500, 11_000), 100))


def _ruling(text: str, ok: bool = True, owes: list[str] | None = None, paid: bool = True) -> dict[str, Any]:
    return {"bundle": {"ok": ok, "problems": [] if ok else ["entry 3 altered"]}, "ruling": text,
            "seller_owes": owes or [], "facts": {"payment": {"proof": "x"}} if paid else {}}


def test_buyer_verdict_finds_an_empty_handed_honest_buyer() -> None:
    v = checks.buyer_verdict
    assert v("d", "mail-order", _ruling("... both fulfilled"), None, 1250).outcome == "satisfied"
    assert v("d", "mail-order", _ruling("the seller owes", owes=["goods"]), None, 1250).outcome == "buyer-wins"
    assert v("d", "mail-order", _ruling("nothing was paid under this order", paid=False), None, 1250).paid == 0
    bad = v("d", "mail-order", _ruling("the buyer paid; something else"), None, 1250)
    assert not bad.ok and bad.outcome == "violation"
    assert not v("d", "mail-order", _ruling("... both fulfilled", ok=False), None, 1250).ok
    ex = {"bundle": {"ok": True}, "ruling": "r", "originator": {"fulfilled": False, "how": "no evidence"},
          "responder": {"fulfilled": True}}
    unfair = v("d", "information", _ruling("paid in a fair exchange", paid=False), ex, 400)
    assert not unfair.ok and unfair.paid == 400
    ex["originator"] = {"fulfilled": False, "how": "commitment false"}
    assert v("d", "information", _ruling("x", paid=False), ex, 400).outcome == "buyer-wins"
    ex["originator"] = {"fulfilled": True}
    assert v("d", "contract", _ruling("x", paid=False), ex, 0).outcome == "satisfied"
    assert not v("d", "information", _ruling("paid", paid=True), None, 400).ok        # paid, no exchange at all


def test_shop_delivery_check_finds_goods_given_without_payment() -> None:
    kinds = {"a" * 32: ["statement:offer", "statement:order", "payment", "statement:delivery"],
             "b" * 32: ["statement:offer", "statement:order", "statement:delivery"]}
    found = checks.check_shop_deliveries(kinds, {"a" * 32: 1250, "b" * 32: 1250})
    assert len(found) == 1 and "bbbbbbbb" in found[0]


def test_archive_and_audit_checks_report_tampering(tmp_path: Path) -> None:
    from semper.client.support.archive import Archive
    path = tmp_path / "ev.sqlite3"
    with Archive.open(path, create=True) as a:
        for i in range(3):
            a.append("c" * 32, "note", f"entry {i}".encode())
        assert checks.check_archive("the buyer", a.verify().as_dict()) == []
    db = sqlite3.connect(path)
    table = next(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                 if "content" in [c[1] for c in db.execute(f"PRAGMA table_info({r[0]})")])
    db.execute(f"UPDATE {table} SET content = ? WHERE rowid = 2", (b"entry X",))
    db.commit()
    db.close()
    with Archive.open(path) as a:
        found = checks.check_archive("the buyer", a.verify().as_dict())
    assert found and all(f.startswith("the buyer's archive") for f in found)
    report = {"clean": False, "violations": [{"cause": "conservation", "detail": "accounts 10 + float 0 != 9"}]}
    assert checks.check_audit(report) == ["audit: conservation: accounts 10 + float 0 != 9"]


# ---- defects chaos found, each fixed in the product -------------------------------------------------------
def test_a_retransmitted_payment_message_gets_the_same_answer(tmp_path: Path) -> None:
    """A lost answer used to make the payee refuse the payer's retry: the buyer was told 'nothing was
    paid' while the money had moved (``semper chaos``, SET payment, answer dropped). The payee's session
    keeps the last message and its answer: in memory, and in the party's database, where another
    process of the payee (or the payee restarted) answers the retry the same."""
    from semper.client.payment.errors import ProtocolError
    from semper.client.payment.manager import PaymentManager
    from semper.client.payment.model import Acceptance, ExchangeProperties, Model, Status, Terms
    from semper.client.payment.module import BaseModule, PartyContext, Step
    from semper.client.payment.sessions import DatabaseSessions
    from semper.client.support.db import Database

    class Capture(BaseModule):
        name, model = "capture", Model.ACCOUNT_BASED
        properties = ExchangeProperties(externally_verifiable=True, revocable=False)
        calls = 0

        def acceptance(self) -> Acceptance:
            return Acceptance("capture", (978,))

        def payee_flow(self, terms: Terms) -> Any:
            class Flow:
                def step(self, incoming: Any) -> Step:
                    Capture.calls += 1
                    return Step({"n": Capture.calls}, done=True, status=Status.PAID)
            return Flow()

    terms = Terms("p" * 32, 100, 978, "acct", "a" * 64, "shop")
    db = Database(f"sqlite:///{tmp_path / 'shop.db'}")
    for sessions in (None, DatabaseSessions(db)):
        Capture.calls = 0
        one = PaymentManager(PartyContext(), modules={"capture": Capture}, sessions=sessions)
        other = one if sessions is None else PaymentManager(PartyContext(), modules={"capture": Capture},
                                                            sessions=DatabaseSessions(db))
        one.expect(terms)
        msg = {"payment_id": terms.payment_id, "module": "capture", "body": {"kind": "capture", "x": 1}}
        first = one.handle(msg)
        assert other.handle(msg) == first and Capture.calls == 1          # the retry: the same answer
        assert other.record(terms.payment_id, "payee").status is Status.PAID
        with pytest.raises(ProtocolError):                                # finished: a new message is refused
            other.handle({**msg, "body": {"kind": "next"}})
        assert Capture.calls == 1
        terms = Terms("q" * 32, 100, 978, "acct", "a" * 64, "shop")
    db.close()


def test_payment_evidence_keeps_the_card_certificate_when_the_card_is_gone() -> None:
    from semper.client.commerce.blocks import payment_evidence
    from semper.client.payment.model import Record, Status, Terms
    from semper.hardware import errors as hw

    class GonePurse:
        def select(self) -> None:
            raise hw.CardRemovedError("pulled")

    class B:
        purse = GonePurse()
        card_lock = threading.RLock()

    rec = Record("p" * 32, "card-purse", "payer", Terms("p" * 32, 100, 978, "acct", "a" * 64, "shop"), Status.PAID,
                 evidence={"proof": "UA==", "proof_signature": "Uw==", "card_certificate": "Q0VSVA=="})
    out = json.loads(payment_evidence(B(), rec))
    assert out["card_certificate"] == "Q0VSVA=="


def test_a_card_that_goes_away_outside_a_payment_ends_the_deal_as_failed() -> None:
    from semper.client.commerce import workflows
    from semper.client.tinguin.model import OutcomeStatus
    from semper.hardware import errors as hw

    class UI:
        def progress(self, step: Any) -> None:
            pass

        def result(self, outcome: Any) -> None:
            self.outcome = outcome

    class Shop:
        def post(self, path: str, body: Any) -> Any:
            raise hw.CardRemovedError("the card was pulled")

    class B:
        ui, shop, purse = UI(), Shop(), None

        def balance(self) -> None:
            return None

    r = workflows.sign_contract(B(), "supply-contract")
    assert r.status is OutcomeStatus.FAILED and "insert it and try again" in r.summary


def _self_signed_pem() -> str:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chaos test root")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_link_cut_during_the_tls_handshake_is_a_dropped_connection_not_a_failed_check() -> None:
    """A connection cut mid-handshake used to be reported as "failed the TLS check ... not the shop the
    CA vouches for": a false alarm about identity for what is a dropped link."""
    from semper.client.commerce.errors import ServiceUnavailable
    from semper.client.commerce.shop_client import ShopClient
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    accepted = []

    def cut() -> None:
        for _ in range(2):                       # the first try and the client's one retry
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.recv(4096)                      # the ClientHello arrives; the link is cut
            conn.close()
    t = threading.Thread(target=cut, daemon=True)
    t.start()
    client = ShopClient(f"https://127.0.0.1:{server.getsockname()[1]}", _self_signed_pem(), timeout=5)
    with pytest.raises(ServiceUnavailable) as e:
        client.post("/deals", {})
    t.join(10)
    server.close()
    assert "did not answer" in str(e.value) and "TLS check" not in str(e.value)
    assert len(accepted) == 2                    # retried once, like any dropped connection


def test_the_buyer_client_can_ask_the_third_party_again() -> None:
    """An exchange that ended ``pending`` (third party unreachable) could not be finished from the
    commerce client; ``ExchangeClient.recover`` runs the party's own recovery (found by chaos)."""
    from semper.client.commerce.exchange_client import ExchangeClient

    class Party:
        asked = 0

        async def start(self) -> Party:
            return self

        async def recover(self) -> list[str]:
            Party.asked += 1
            return ["resolved"]

        async def stop(self) -> None:
            pass

        def close(self) -> None:
            pass

    client = ExchangeClient(Party)
    try:
        assert client.recover(timeout=10) == ["resolved"] and Party.asked == 1
    finally:
        client.close()


# ---- the runner's checks catch a broken world -------------------------------------------------------------
@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from semper.chaos.market import Market
    m = Market.create(tmp_path_factory.mktemp("chaos-market"))
    yield m
    m.close()


@pytest.mark.timeout(120)
def test_a_retried_exchange_order_starts_one_exchange(market: Any, tmp_path: Path) -> None:
    """The answer to an information order lost, the buyer's client sends the order again: the shop
    used to start a second exchange, the buyer's client took that one's refusal for the deal's
    outcome ("nothing given") while the first exchange had paid — the seller gained twice what the
    buyer's deal evidence proved (``semper chaos --seed 7 --workflow information --workflow contract``)."""
    from semper.chaos import runner
    from semper.chaos.plan import Fault, RunPlan
    for workflow, payment in (("information", "card-purse"), ("contract", "none")):
        r = runner.run_one(market, RunPlan(0, workflow, payment, (Fault("drop", "shop", "down", 2),)), 0, tmp_path)
        assert r.injected and "POST /deals/order" in r.injected[0], r.line()
        assert r.ok and r.results[0] == "satisfied", r.line()


@pytest.mark.timeout(180)
def test_the_runner_reports_money_from_nowhere_and_a_doctored_archive(market: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from semper.chaos import runner
    from semper.chaos.plan import RunPlan
    plan = RunPlan(0, "mail-order", "card-purse")
    clean = runner.run_one(market, plan, 0, tmp_path / "0")
    assert clean.ok and [d.outcome for d in clean.deals] == ["satisfied"], clean.line()

    honest_drive = runner.drive

    def drive_and_print_money(m: Any, p: Any, report: Any) -> None:
        honest_drive(m, p, report)
        m.world.bank.cash_in(m.world.accounts["seller"], 700)        # the seller gains what nobody paid
    monkeypatch.setattr(runner, "drive", drive_and_print_money)
    r = runner.run_one(market, plan, 1, tmp_path / "1")
    assert any("seller gained" in v and "proves" in v for v in r.violations), r.line()
    assert any("created 700" in v for v in r.violations), r.line()
    monkeypatch.setattr(runner, "drive", honest_drive)

    # an entry of the shop's archive altered behind its back: the next run's archive check says so
    db = sqlite3.connect(market.world.shop_dir / "evidence.sqlite3")
    table = next(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                 if "content" in [c[1] for c in db.execute(f"PRAGMA table_info({r[0]})")])
    db.execute(f"UPDATE {table} SET content = ? WHERE rowid = 3", (b"doctored",))
    db.commit()
    db.close()
    r = runner.run_one(market, plan, 2, tmp_path / "2")
    assert any(v.startswith("the shop's archive") for v in r.violations), r.line()
