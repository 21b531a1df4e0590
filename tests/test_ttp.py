"""The third party over HTTPS: false complaints refused, replays answered the same, every answer
signed by its token key, decided once, and — as a real process killed mid-resolution — the same
decision after a restart."""
from __future__ import annotations

import base64
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from postgres import Storage, storages
from test_exchange_faults import exchange_with_fault, other_payment
from test_exchange_support import (
    PIN,
    World,
    buyer_managers,
    cards,
    make_party,
    purchase,
    run,
    seller_managers,
    start_ttp,
    ttp_process,
    ttp_stats,
    world,
)

from semper.client.exchange.messages import Proposal, check_decision, request_body
from semper.client.support.channels import JsonClient
from semper.client.support.cms import parse_statement

pytestmark = storages()          # the third party's core cases on SQLite and on PostgreSQL


# ---- a gen-ver exchange left open: the seller stopped before its item, the buyer did not go to T ----------
def open_exchange(world: World, tmp_path: Path, fresh_images: Any, attempts: int = 3) -> dict[str, Any]:
    """An exchange the buyer paid for and nobody took to T yet (its evidence: :func:`evidence`).

    The parties' patience per step is short (``STEP``, so that the honest party's wait for the item that
    never comes is quick); on a loaded machine a step can outlast it before the buyer has archived the
    proposal and its acceptance, and the exchange ends before it was ever open. That is this test's
    precondition, not what it tests (T's answers are): such a run is made again, a bounded number of times."""
    res: dict[str, Any] = {}
    for attempt in range(attempts):
        res = exchange_with_fault(world, tmp_path / f"try{attempt}", fresh_images, "gen-ver", dishonest="originator",
                                  stop_before="item", buyer_faults={"stop_before": "ttp"})
        try:
            evidence(res)
            return res
        except (KeyError, AttributeError):      # no responder run, or its archive lacks the exchange
            continue
    responder = res.get("responder")
    raise AssertionError(f"no exchange was left open in {attempts} attempts; the buyer's last run: "
                         f"{responder.as_dict() if responder is not None else 'none'}")


def evidence(res: dict[str, Any]) -> dict[str, Any]:
    buyer = res["buyer"]
    entries = {}
    from semper.client.support.archive import Archive
    with Archive.open(buyer.archive.path) as a:
        for e in a.entries(res["responder"].xid):
            entries.setdefault(e.kind, e.content)
    return {"proposal": entries["statement:xchg-proposal"], "accept": entries["statement:xchg-accept"],
            "item": json.loads(entries["item:sent"])["item"],
            "attachments": json.loads(entries["attachments"])["attachments"]}


def ask(world: World, url: str, kind: str, der: bytes) -> bytes:
    answer = JsonClient(url, world.root_pem, name="the third party", timeout=15).post(
        f"/{kind}", {"request": base64.b64encode(der).decode()})
    return base64.b64decode(answer["answer"])


def signed_request(world: World, who: str, kind: str, ev: dict[str, Any], **extra: Any) -> bytes:
    proposal = Proposal.verify(ev["proposal"], world.trust)
    return world.identities[who].sign(request_body(kind, proposal, proposal.xid, **extra))


def decision(world: World, der: bytes, ev: dict[str, Any]) -> Any:
    proposal = Proposal.verify(ev["proposal"], world.trust)
    return check_decision(der, world.trust, proposal.binding, None)


def test_false_complaints_are_refused_signed_and_change_nothing(world: World, storage: Storage, tmp_path: Path,
                                                                fresh_images: Any) -> None:
    res = open_exchange(world, tmp_path / "x", fresh_images)
    assert res["responder"].status == "stopped" and res["paid"] == 500
    ev = evidence(res)
    t = start_ttp(world, storage.url("ttp2", tmp_path))
    try:
        wrong = other_payment(world, res["cards"])
        false = signed_request(world, "buyer", "resolve", ev, item=wrong, attachments=ev["attachments"])
        answer = decision(world, ask(world, t.url, "resolve", false), ev)
        assert answer.outcome == "refused" and not answer.final and "false complaint" in answer.reason
        # a forged payment (signature altered) and a complaint by someone who is not a party
        forged = json.loads(json.dumps(ev["item"]))
        sig = bytearray(base64.b64decode(forged["proof"]["signature"]))
        sig[10] ^= 1
        forged["proof"]["signature"] = base64.b64encode(bytes(sig)).decode()
        assert decision(world, ask(world, t.url, "complaint", signed_request(
            world, "buyer", "complaint", ev, item=forged, attachments=ev["attachments"])), ev).outcome == "refused"
        stranger = decision(world, ask(world, t.url, "resolve", signed_request(
            world, "mallory", "resolve", ev, item=ev["item"], attachments=ev["attachments"])), ev)
        assert stranger.outcome == "refused" and "not a party" in stranger.reason
        # the wrong protocol step, and the originator of gen-ver, get reasons too
        assert "abort is for rev-rev" in decision(world, ask(world, t.url, "abort",
                                                             signed_request(world, "buyer", "abort", ev)), ev).reason
        assert "needs no third party" in decision(world, ask(world, t.url, "complaint",
                                                             signed_request(world, "seller", "complaint", ev)),
                                                             ev).reason
        # nothing changed: the exchange is still undecided ...
        status = decision(world, ask(world, t.url, "status", signed_request(world, "seller", "status", ev)), ev)
        assert status.outcome == "undecided" and not status.final
        # ... and the true complaint is still honoured
        good = decision(world, ask(world, t.url, "resolve", signed_request(
            world, "buyer", "resolve", ev, item=ev["item"], attachments=ev["attachments"])), ev)
        assert good.outcome == "resolved" and good.final
        assert t.ttp.stats()["decisions"] == 1
    finally:
        t.stop()


def test_a_replayed_request_gets_the_same_answer(world: World, storage: Storage, tmp_path: Path,
                                                fresh_images: Any) -> None:
    res = open_exchange(world, tmp_path / "x", fresh_images)
    ev = evidence(res)
    t = start_ttp(world, storage.url("ttp2", tmp_path))
    try:
        false = signed_request(world, "buyer", "complaint", ev, item=other_payment(world, res["cards"]),
                               attachments=ev["attachments"])
        first = ask(world, t.url, "complaint", false)
        assert ask(world, t.url, "complaint", false) == first            # byte for byte: the kept answer
        good = signed_request(world, "buyer", "resolve", ev, item=ev["item"], attachments=ev["attachments"])
        decided = ask(world, t.url, "resolve", good)
        assert ask(world, t.url, "resolve", good) == decided
        # any later request for the exchange, by either party, gets that decision
        assert ask(world, t.url, "status", signed_request(world, "seller", "status", ev)) == decided
        again = signed_request(world, "buyer", "complaint", ev, item=ev["item"], attachments=ev["attachments"])
        assert ask(world, t.url, "complaint", again) == decided
        assert ask(world, t.url, "complaint", false) == first             # the refusal stays what it was
        stats = t.ttp.stats()
        assert stats["decisions"] == 1 and stats["replays"] >= 4
    finally:
        t.stop()


def test_concurrent_requests_decide_once(world: World, storage: Storage, tmp_path: Path, fresh_images: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor
    res = open_exchange(world, tmp_path / "x", fresh_images)
    ev = evidence(res)
    t = start_ttp(world, storage.url("ttp2", tmp_path))
    try:
        reqs = [signed_request(world, "buyer", "resolve", ev, item=ev["item"], attachments=ev["attachments"])
                for _ in range(6)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda r: ask(world, t.url, "resolve", r), reqs))
        assert len(set(answers)) == 1 and decision(world, answers[0], ev).outcome == "resolved"
        assert t.ttp.stats()["decisions"] == 1
    finally:
        t.stop()


def test_every_answer_is_a_cms_statement_by_the_token_key(world: World, storage: Storage, tmp_path: Path,
                                                          fresh_images: Any) -> None:
    """openssl verifies a decision against the CA root, and its signer is the key on T's token."""
    res = open_exchange(world, tmp_path / "x", fresh_images)
    ev = evidence(res)
    t = start_ttp(world, storage.url("ttp2", tmp_path))
    try:
        der = ask(world, t.url, "status", signed_request(world, "buyer", "status", ev))
        (tmp_path / "d.der").write_bytes(der)
        (tmp_path / "ca.pem").write_text(world.root_pem)
        r = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "d.der"),
                            "-CAfile", str(tmp_path / "ca.pem"), "-purpose", "any", "-binary"],
                           capture_output=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["type"] == "decision"
        from semper.client.support import pki
        assert pki.point_of(parse_statement(der).signer_cert) == world.opened.ttp.signer.public_point()
        # garbage gets a signed refusal too, never a 5xx
        raw = ask(world, t.url, "resolve", b"\x30\x03\x02\x01\x00")
        body = parse_statement(raw).body
        assert body["outcome"] == "refused" and body["final"] is False
    finally:
        t.stop()


def test_timestamps_from_the_mounted_tsa(world: World, storage: Storage, tmp_path: Path, fresh_images: Any) -> None:
    from semper.client.support.tsa import timestamp_statement, verify_statement_timestamps
    t = start_ttp(world, storage.url("ttp", tmp_path))
    try:
        client = JsonClient(t.url, world.root_pem, name="the TSA", timeout=15)
        statement = world.identities["buyer"].sign({"type": "order", "goods": "report"})
        stamped = timestamp_statement(
            statement, lambda req: client.request("POST", "/timestamp", req,
                                                  {"Content-Type": "application/timestamp-query"})[2], world.trust)
        info = verify_statement_timestamps(parse_statement(stamped), world.trust)
        assert info is not None and "TSA" in info.tsa_name
    finally:
        t.stop()


# ---- the third party as a real process, killed in the middle of a resolution ---------------------------------
@pytest.mark.parametrize("crash_at", ["after-commit", "before-commit"])
def test_ttp_killed_mid_resolution_decides_the_same_way_after_restart(world: World, storage: Storage, tmp_path: Path,
                                                                      fresh_images: Any, crash_at: str) -> None:
    db = storage.url("ttp-proc", tmp_path)
    proc, url = ttp_process(world, db, crash_at=crash_at)
    port = int(url.rsplit(":", 1)[1])
    procs = [proc]
    c = cards(world, tmp_path / "cards", fresh_images)
    try:
        async def go() -> None:
            seller = make_party(world, "seller", tmp_path, seller_managers(world, c), url, step_timeout=0.4,
                                ttp_home=world.ttp_proc_home)
            buyer = make_party(world, "buyer", tmp_path, buyer_managers(world), url, step_timeout=0.4,
                               ttp_home=world.ttp_proc_home)
            await seller.start()
            await buyer.start()
            deal = purchase(world, c)
            buyer.plans.append(deal.plan)
            seller.outbox.stop_before = "item"
            o = await seller.originate(buyer.url, deal.offer, deal.want)
            r = await buyer.wait_outcome(o.session, 15)
            # T died in the middle of the resolution: the buyer has paid and is pending, not lost
            assert r.status == "pending" and r.gave and "could not be asked" in r.reason, r.as_dict()
            assert proc.wait(10) == 70
            restarted, url2 = ttp_process(world, db, port=port)
            procs.append(restarted)
            assert url2 == url
            again = await buyer.recover()
            assert [x.status for x in again] == ["resolved"], [x.as_dict() for x in again]
            assert again[0].received is not None
            # the seller had the payment before it stopped: nothing left open on its side
            assert await seller.recover() == []
            stats = ttp_stats(world, url)
            if crash_at == "after-commit":           # decided before the crash: the stored answer, byte for byte
                assert stats["decisions"] == 0 and stats["replays"] >= 1
            else:                                    # nothing was stored: decided now, the same way
                assert stats["decisions"] == 1
            assert stats["stored"].get("resolved") == 1
            from semper.client.servers import ttp_store
            from semper.client.support.db import Database
            dbh = Database(db)
            with dbh.transaction(write=False) as tx:
                rec = ttp_store.get_record(tx, r.xid or "")
            dbh.close()
            assert rec is not None and rec.outcome == "resolved" and rec.decision == again[0].decision
            for p in (seller, buyer):
                await p.stop()
                p.close()
        run(go(), 90)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_serve_ttp_does_not_crash_on_an_environment_switch(world: World, tmp_path: Path, fresh_images: Any) -> None:
    """Issue 13, item 8: ``semper serve ttp`` used to exit between signing and storing a decision when
    SEMPER_TTP_CRASH_AT was set in its environment (a test hook in the product). With the switch set,
    T must decide the buyer's resolution and keep serving."""
    db = tmp_path / "ttp-proc.db"
    proc, url = ttp_process(world, db, extra_env={"SEMPER_TTP_CRASH_AT": "before-commit"})
    c = cards(world, tmp_path / "cards", fresh_images)
    try:
        async def go() -> None:
            seller = make_party(world, "seller", tmp_path, seller_managers(world, c), url, step_timeout=0.4,
                                ttp_home=world.ttp_proc_home)
            buyer = make_party(world, "buyer", tmp_path, buyer_managers(world), url, step_timeout=0.4,
                               ttp_home=world.ttp_proc_home)
            await seller.start()
            await buyer.start()
            try:
                deal = purchase(world, c)
                buyer.plans.append(deal.plan)
                seller.outbox.stop_before = "item"            # the seller stops: the buyer resolves at T
                o = await seller.originate(buyer.url, deal.offer, deal.want)
                r = await buyer.wait_outcome(o.session, 15)
                assert r.status == "resolved", r.as_dict()
            finally:
                for p in (seller, buyer):
                    await p.stop()
                    p.close()
        run(go(), 90)
        assert proc.poll() is None, f"semper serve ttp exited with {proc.returncode}"
        stats = ttp_stats(world, url)
        assert stats["decisions"] == 1 and stats["stored"].get("resolved") == 1
    finally:
        for close in c.closers:
            close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_semper_ttp_init_and_serve_as_an_operator_would(tmp_path: Path, storage: Storage) -> None:
    """The commands end to end, each in its own process: a CA with a new token, the third party's
    token created beside it and certified, the service started, its escrow key checked. On
    PostgreSQL the CA and the third party each get a database by ``--db`` (and ``--ca-db``)."""
    import os
    import sys
    import time

    from test_exchange_support import REPO

    from semper.client.exchange.identity import TtpInfo
    from semper.client.support.trust import TrustStore
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF",)}
    env["SEMPER_HOME"] = str(tmp_path / "home")
    (tmp_path / "ca.pin").write_text("ca-pin-9876")
    (tmp_path / "ttp.pin").write_text("ttp-pin-5432")

    def semper(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], cwd=REPO, env=env,
                              capture_output=True,
                              text=True, timeout=120, check=False)
    ca_db = ("--db", storage.url("ca")) if storage.is_postgres else ()
    ttp_db = ("--db", storage.url("ttp")) if storage.is_postgres else ()
    r = semper("ca", "init", "--ca-dir", str(tmp_path / "ca"), "--create-token", "--pin-file", str(tmp_path / "ca.pin"),
               *ca_db)
    assert r.returncode == 0, r.stderr
    args = ("ttp", "init", "--dir", str(tmp_path / "ttp"), "--ca-dir", str(tmp_path / "ca"), "--ca-pin-file",
            str(tmp_path / "ca.pin"), "--pin-file", str(tmp_path / "ttp.pin"), *ttp_db,
            *(("--ca-db", ca_db[1]) if ca_db else ()))
    r = semper(*args, "--create-token")
    assert r.returncode == 0, r.stderr
    assert "escrow-key statement" in r.stdout
    r = semper(*args)                                   # a second init refuses, one line
    assert r.returncode == 2 and "already holds a third party" in r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "semper.client.cli", "serve", "ttp", "--dir", str(tmp_path / "ttp"),
                             "--pin-file", str(tmp_path / "ttp.pin"), "--port", "0", *ttp_db], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline, url = time.monotonic() + 30, None
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline()
            if "listening on" in line:
                url = line.strip().rsplit(" ", 1)[-1]
            elif not line:
                break
        assert url, proc.stderr.read() if proc.stderr else ""
        root = (tmp_path / "ca" / "ca.pem").read_text()
        client = JsonClient(url, root, name="the third party", timeout=15)
        from cryptography import x509
        cert = x509.load_pem_x509_certificate(client.get("/certificate")["certificate"].encode())
        escrow = base64.b64decode(client.get("/escrow-key")["statement"])
        info = TtpInfo.load(url, cert, escrow, TrustStore.from_files(tmp_path / "ca" / "ca.pem"))
        assert info.escrow is not None and len(info.escrow.point) == 65
        assert client.get("/stats")["total_requests"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()

