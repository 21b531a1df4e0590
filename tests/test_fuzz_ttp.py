"""Fuzzing the third party's HTTPS endpoints, and a state machine in which decisions must never change.

The third party is the real one (``client/servers/ttp*.py``, its key in the exchange tests' SoftHSM2
token, HTTPS on loopback, a fresh database per run), started with ``test_exchange_support.start_ttp``.
Its evidence comes from real exchanges left open (``test_ttp.open_exchange``): a gen-ver purchase the
buyer paid for while the seller stopped before its item, and a rev-rev swap stopped the same way.

Stateless fuzzers: random methods, paths, content types and bodies on every endpoint; hostile JSON;
requests whose base64 or CMS is damaged (bit flips, truncation, splices); DER garbage for the
time-stamping authority. Unauthenticated garbage gets a 4xx JSON error or T's *signed* refusal, and
the database stays exactly as it was.

The state machine (``TtpMachine``) sends true and false complaints, resolutions, aborts and status
requests by both parties and by a stranger, through the right and the wrong endpoint, interleaved
with replays, damaged requests, garbage and restarts of T on the same database. Invariants: every
answer is a decision signed by T; a final decision, once made, is the answer to every later request
of a party of that exchange, byte for byte, and the table row never changes; refusals to
authenticated parties are kept and replayed byte for byte; nothing unauthenticated is kept.
"""
from __future__ import annotations

import base64
import collections
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from postgres import Storage, storages
from test_exchange_faults import exchange_with_fault, other_payment
from test_exchange_support import RunningTtp, World, start_ttp, world
from test_fuzz_support import (
    CONTENT_TYPES,
    METHODS,
    RawHttps,
    Step,
    assert_refusal,
    assert_sane,
    db_snapshot,
    dumps,
    garbage_bodies,
    hostile_bodies,
    paths,
    protocol_level_refusals,
    walk_every_rule,
)
from test_ttp import evidence, open_exchange

from semper.client.exchange.messages import Proposal, request_body
from semper.client.support.archive import Archive
from semper.client.support.verify import verify_statement
from semper.client.transfer.statements import same_key

KINDS = ("resolve", "abort", "complaint", "status")
KNOWN = tuple(f"/{k}" for k in KINDS) + ("/escrow-key", "/certificate", "/timestamp", "/stats")
pytestmark = storages()          # refusals kept or not, decisions once, on SQLite and on PostgreSQL
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


# ---- evidence of two open exchanges, and requests about them ---------------------------------------------
@dataclass(frozen=True)
class Req:
    """One signed request: who sent it, about which exchange, what T must answer to an undecided one."""

    name: str
    xid: str
    kind: str
    der: bytes
    expect: str            # "resolved", "revoked", "refused" (kept), "stranger" (refused, not kept), "undecided"


@dataclass
class Evidence:
    gv: dict[str, Any]               # gen-ver: proposal, accept, item, attachments (the buyer's archive)
    rr: dict[str, Any]               # rev-rev: proposal
    wrong_item: dict[str, Any]       # a genuine payment for another purchase
    requests: list[Req]


def _rr_proposal(res: dict[str, Any]) -> bytes:
    with Archive.open(res["buyer"].archive.path) as a:
        return next(e.content for e in a.entries(res["responder"].xid) if e.kind == "statement:xchg-proposal")


def _requests(w: World, ev_gv: dict[str, Any], rr_der: bytes, wrong: dict[str, Any]) -> list[Req]:
    gv, rr = Proposal.verify(ev_gv["proposal"], w.trust), Proposal.verify(rr_der, w.trust)
    out: list[Req] = []

    def add(name: str, prop: Proposal, who: str, kind: str, expect: str, copies: int = 2, **extra: Any) -> None:
        for i in range(copies):                # each signature is new: the same request, other bytes
            der = w.identities[who].sign(request_body(kind, prop, prop.xid, **extra))
            out.append(Req(f"{name}#{i}", prop.xid, kind, der, expect))
    true_item = {"item": ev_gv["item"], "attachments": ev_gv["attachments"]}
    add("gv true resolve", gv, "buyer", "resolve", "resolved", **true_item)
    add("gv true complaint", gv, "buyer", "complaint", "resolved", **true_item)
    add("gv false resolve", gv, "buyer", "resolve", "refused", item=wrong, attachments=ev_gv["attachments"])
    add("gv resolve without attachments", gv, "buyer", "resolve", "refused", copies=1, item=ev_gv["item"],
        attachments="none")
    add("gv seller complaint", gv, "seller", "complaint", "refused")
    add("gv seller resolve", gv, "seller", "resolve", "refused", copies=1, **true_item)
    add("gv abort", gv, "buyer", "abort", "refused")
    add("gv status seller", gv, "seller", "status", "undecided")
    add("gv status buyer", gv, "buyer", "status", "undecided")
    add("gv stranger", gv, "mallory", "resolve", "stranger", **true_item)
    add("rr abort seller", rr, "seller", "abort", "revoked")
    add("rr abort buyer", rr, "buyer", "abort", "revoked")
    add("rr complaint buyer", rr, "buyer", "complaint", "revoked")
    add("rr resolve buyer", rr, "buyer", "resolve", "refused")
    add("rr status", rr, "seller", "status", "undecided")
    add("rr stranger", rr, "mallory", "abort", "stranger")
    return out


@pytest.fixture(scope="module")
def ev(world: World, tmp_path_factory: pytest.TempPathFactory, fresh_images: Any) -> Evidence:
    folder = tmp_path_factory.mktemp("fuzz-ttp-evidence")
    res = open_exchange(world, folder / "gv", fresh_images)
    ev_gv = evidence(res)
    wrong = other_payment(world, res["cards"])
    rr = exchange_with_fault(world, folder / "rr", fresh_images, "rev-rev", dishonest="originator",
                             stop_before="item", buyer_faults={"stop_before": "ttp"})
    rr_der = _rr_proposal(rr)
    return Evidence(ev_gv, {"proposal": rr_der}, wrong, _requests(world, ev_gv, rr_der, wrong))


@pytest.fixture(scope="module")
def ttp(world: World, storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTtp]:
    t = start_ttp(world, storage.url("fuzzttp", tmp_path_factory.mktemp("fuzz-ttp")))
    yield t
    t.stop()


def raw_for(w: World, t: RunningTtp) -> RawHttps:
    return RawHttps(t.url, w.root_pem)


def answer_of(w: World, a: Any) -> dict[str, Any]:
    """The body of T's signed answer (checked: a decision statement signed by T's certificate)."""
    assert a.status == 200, (a.status, a.body[:300])
    der = base64.b64decode(a.json()["answer"], validate=True)
    vs = verify_statement(der, w.trust)
    assert same_key(vs.signer, w.opened.ttp.certificate), vs.signer_name
    assert vs.body["type"] == "decision" and vs.body["outcome"] in ("resolved", "revoked", "originator-fault",
                                                                    "refused", "undecided"), vs.body
    return {"der": der, **vs.body}


def post_request(raw: RawHttps, kind: str, der: bytes) -> Any:
    return raw.post_json(f"/{kind}", {"request": base64.b64encode(der).decode()})


# ---- damaged requests ---------------------------------------------------------------------------------
@st.composite
def damaged(draw: st.DrawFn, der: bytes) -> bytes:
    """``der`` with bits flipped, cut short, spliced, or grown: what a network attacker can make of it."""
    how = draw(st.sampled_from(("flip", "truncate", "splice", "append", "prefix")))
    b = bytearray(der)
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(b)
    if how == "truncate":
        return bytes(b[:draw(st.integers(1, len(b) - 1))])
    if how == "splice":
        i = draw(st.integers(0, len(b) - 1))
        return bytes(b[:i]) + draw(st.binary(min_size=1, max_size=40)) + bytes(b[i + 1:])
    if how == "append":
        return bytes(b) + draw(st.binary(min_size=1, max_size=40))
    return draw(st.binary(min_size=1, max_size=8)) + bytes(b)


# ---- stateless fuzzers ------------------------------------------------------------------------------------
@FUZZ
@given(method=st.sampled_from(METHODS), path=paths(KNOWN), ctype=st.sampled_from(CONTENT_TYPES + ("application/json",)),
       body=st.one_of(st.none(), garbage_bodies()))
def test_random_requests_change_nothing(world: World, ttp: RunningTtp, method: str, path: str, ctype: str,
                                        body: bytes | None) -> None:
    raw = raw_for(world, ttp)
    before = db_snapshot(ttp.ttp.db)
    a = raw.send(method, path, body, {"Content-Type": ctype} if ctype else {})
    assert_sane(a, method)
    assert db_snapshot(ttp.ttp.db) == before


def test_hostile_json_and_bad_base64(world: World, ttp: RunningTtp, ev: Evidence) -> None:
    raw = raw_for(world, ttp)
    before = db_snapshot(ttp.ttp.db)
    valid = {"request": base64.b64encode(ev.requests[0].der).decode()}
    for kind in KINDS:
        for data in hostile_bodies(valid).values():
            assert_refusal(raw.send("POST", f"/{kind}", data, {"Content-Type": "application/json"}))
        for bad in ("", "%%%", "AAA", "A" * 5 + "=", " " + valid["request"], valid["request"] + "\n"):
            assert_refusal(raw.post_json(f"/{kind}", {"request": bad}), 400)
    assert db_snapshot(ttp.ttp.db) == before


@FUZZ
@given(data=st.data())
def test_damaged_requests_get_a_signed_refusal_and_are_not_kept(world: World, ttp: RunningTtp, ev: Evidence,
                                                               data: st.DataObject) -> None:
    req = data.draw(st.sampled_from(ev.requests))
    der = data.draw(damaged(req.der))
    kind = data.draw(st.sampled_from(KINDS))
    raw = raw_for(world, ttp)
    before = db_snapshot(ttp.ttp.db)
    a = post_request(raw, kind, der)
    if a.status != 200:                      # an undecodable body is refused before T sees it
        assert_refusal(a)
    else:
        body = answer_of(world, a)
        if body["outcome"] != "refused" or _verifies(world, der):
            # a damage DER ignores (e.g. in an unsigned field) leaves a valid request, answered as one: its
            # refusal, if it is one a party earned (a resolve by the buyer of a rev-rev exchange), is kept
            verify_statement(der, world.trust)
            return
    assert db_snapshot(ttp.ttp.db) == before


def _verifies(world: World, der: bytes) -> bool:
    from semper.client.support.cms import EvidenceError
    try:
        verify_statement(der, world.trust)
    except EvidenceError:
        return False
    return True


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_statement_parser_refuses_every_damage_as_evidence_error(world: World, ev: Evidence,
                                                                 data: st.DataObject) -> None:
    """In process, no HTTP: a damaged statement is valid or an EvidenceError, nothing else (what the
    third party and every verifier rely on to answer with a refusal instead of a crash)."""
    from semper.client.support.cms import EvidenceError
    der = data.draw(damaged(data.draw(st.sampled_from(ev.requests)).der))
    try:
        verify_statement(der, world.trust)
    except EvidenceError:
        pass


@FUZZ
@given(data=st.data())
def test_time_stamp_requests_that_are_not_der(world: World, ttp: RunningTtp, data: st.DataObject) -> None:
    """Garbage and damaged TimeStampReqs: a TimeStampResp refusal (or a 4xx), never a 500."""
    from asn1crypto import tsp
    good = tsp.TimeStampReq({"version": "v1", "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                                                                  "hashed_message": os.urandom(32)},
                             "nonce": 7, "cert_req": True}).dump()
    body = data.draw(st.one_of(st.binary(max_size=200), damaged(good), st.just(good[:-1] + b"\x00\x00")))
    raw = raw_for(world, ttp)
    a = raw.send("POST", "/timestamp", body, {"Content-Type": "application/timestamp-query"})
    assert_sane(a)
    if a.status == 200:
        from semper.client.support.tsa import (
            TimeStampResponse,  # asn1crypto's own makes the token mandatory
        )
        resp = TimeStampResponse.load(a.body)
        assert resp["status"]["status"].native in ("granted", "granted_with_mods", "rejection")


# Found by the fuzzer above: asn1crypto parses this into an object without ``.native`` (AttributeError, a 500)
ASN1CRYPTO_ATTRIBUTE_ERROR = (b"0<\x02\x01\x00010\r\x06\x00\x01\x01\x00\x01\x04\x00\x00\x00\x00\x01\x00\x04 "
                              + bytes(32) + b"\x07\x01\x00\x01\x01\x00")


def test_time_stamp_requests_found_by_the_fuzzer(world: World, ttp: RunningTtp) -> None:
    from semper.client.support.tsa import TimeStampResponse
    for der in (ASN1CRYPTO_ATTRIBUTE_ERROR, b"\x30\x82\x1f\x00" + b"\x30\x80" * 3000):
        a = raw_for(world, ttp).send("POST", "/timestamp", der, {"Content-Type": "application/timestamp-query"})
        assert a.status == 200, (a.status, a.body[:200])
        status = TimeStampResponse.load(a.body)["status"]
        assert status["status"].native == "rejection" and status["fail_info"].native == {"bad_data_format"}


def test_a_request_whose_certificate_holds_a_damaged_key(world: World, ttp: RunningTtp, ev: Evidence) -> None:
    """Found by the fuzzer: a bit flipped in the signer's public point made ``public_key()`` raise (a 500)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    req = ev.requests[0]
    point = world.identities["buyer"].certificate.public_key().public_bytes(Encoding.X962,
                                                                            PublicFormat.UncompressedPoint)
    assert req.der.count(point) == 1
    at = req.der.index(point) + 20
    damaged_key = req.der[:at] + bytes([req.der[at] ^ 0x01]) + req.der[at + 1:]
    before = db_snapshot(ttp.ttp.db)
    body = answer_of(world, post_request(raw_for(world, ttp), req.kind, damaged_key))
    assert body["outcome"] == "refused" and "public key" in body["reason"], body
    assert db_snapshot(ttp.ttp.db) == before


def _in_signer_certificate(world: World, der: bytes, old: bytes, new: bytes) -> bytes:
    """``der`` with ``old`` replaced by ``new`` inside the buyer's certificate it carries."""
    from cryptography.hazmat.primitives.serialization import Encoding
    cert = world.identities["buyer"].certificate.public_bytes(Encoding.DER)
    assert der.count(cert) == 1 and cert.count(old) == 1
    return der.replace(cert, cert.replace(old, new))


def test_requests_whose_certificate_is_damaged_where_parsing_is_lazy(world: World, ttp: RunningTtp,
                                                                    ev: Evidence) -> None:
    """Found by 50,000 damaged statements run straight into verify_statement: an unknown key type
    (UnsupportedAlgorithm), an X.509 version 4 (InvalidVersion), and a damaged subject name met while
    wording a bad-signature refusal (ValueError) were each a 500 at the third party."""
    req = next(r for r in ev.requests if r.name.startswith("gv status buyer"))
    unknown_key = _in_signer_certificate(world, req.der, bytes.fromhex("2a8648ce3d0201"),
                                         bytes.fromhex("2a8e48ce3d0201"))
    version_4 = _in_signer_certificate(world, req.der, bytes.fromhex("a003020102"), bytes.fromhex("a003020103"))
    email = bytes.fromhex("2a864886f70d0109011613")            # OID emailAddress, IA5String of 19 characters
    bad_name = _in_signer_certificate(world, req.der, email + b"x-buyer@example.org", email + b"x-buyer@exa\xedple.org")
    bad_name = bad_name[:-5] + bytes([bad_name[-5] ^ 1]) + bad_name[-4:]          # and the signature damaged too
    before = db_snapshot(ttp.ttp.db)
    for damaged_der in (unknown_key, version_4, bad_name):
        body = answer_of(world, post_request(raw_for(world, ttp), req.kind, damaged_der))
        assert body["outcome"] == "refused" and "not a valid signed statement" in body["reason"], body
    assert db_snapshot(ttp.ttp.db) == before


def test_truncated_oversized_lying_and_non_http_requests(world: World, ttp: RunningTtp, ev: Evidence) -> None:
    raw = raw_for(world, ttp)
    before = db_snapshot(ttp.ttp.db)
    whole = dumps({"request": base64.b64encode(ev.requests[0].der).decode()})
    for keep in (0, 1, len(whole) // 2, len(whole) - 1):
        raw.truncated("/resolve", whole, keep)
    too_big = len(b'{"request": ""}') + 16 * 1024 * 1024 * 4 // 3 + 64 * 1024 + 1
    lying = raw.lying_length("/resolve", 10**12, too_big + 1)
    assert lying is not None
    assert_refusal(lying, 413)
    assert_refusal(raw.send("POST", "/timestamp", b"\x30" * 9000, {"Content-Type": "application/timestamp-query"}), 413)
    protocol_level_refusals(raw, "/resolve")
    assert db_snapshot(ttp.ttp.db) == before
    assert answer_of(world, post_request(raw, "status", ev.requests[0].der))["outcome"] in ("undecided", "refused",
                                                                                           "resolved")


# ---- the state machine -------------------------------------------------------------------------------------
RAN: collections.Counter[str] = collections.Counter()


def counted(fn: Callable[..., None]) -> Callable[..., None]:
    """Count how often a rule ran, so the test can show that every rule did."""
    @functools.wraps(fn)
    def run(self: Any, **kw: Any) -> None:
        RAN[fn.__name__] += 1
        fn(self, **kw)
    run.counted = True
    return run


class TtpMachine(RuleBasedStateMachine):
    """Both parties, a stranger and a network attacker at one third party; T restarts now and then."""

    world: World
    storage: Storage
    ev: Evidence
    root: Path

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(dir=self.root))
        self.db = self.storage.url("fuzzttp", self.folder)
        self.t = start_ttp(self.world, self.db)
        self.raw = raw_for(self.world, self.t)
        self.decided: dict[str, bytes] = {}          # xid -> T's final decision (DER)
        self.outcome: dict[str, str] = {}
        self.kept: dict[str, bytes] = {}             # SHA-256 of a request's bytes -> the refusal kept for it
        self.sent: list[Req] = []

    def teardown(self) -> None:
        self.t.stop()
        self.storage.drop(self.db)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _send(self, req: Req, kind: str | None = None) -> dict[str, Any]:
        before = db_snapshot(self.t.ttp.db)
        body = answer_of(self.world, post_request(self.raw, kind or req.kind, req.der))
        return {"before": before, "after": db_snapshot(self.t.ttp.db), **body}

    def _party(self, r: Req) -> None:
        """Send one authenticated request and check T's answer against what it decided and kept before."""
        got = self._send(r)
        self.sent.append(r)
        digest = hashlib.sha256(r.der).hexdigest()
        if digest in self.kept:                              # the same bytes again: the kept answer
            assert got["der"] == self.kept[digest]
        elif r.expect == "stranger":
            assert got["outcome"] == "refused" and "not a party" in got["reason"]
            assert got["after"] == got["before"]
        elif r.xid in self.decided:                          # decided: that decision, whoever asks, whatever
            assert got["der"] == self.decided[r.xid], (r.name, got["outcome"], self.outcome[r.xid])
            assert got["after"] == got["before"]
        elif r.expect in ("resolved", "revoked"):
            assert got["outcome"] == r.expect and got["final"] is True, got
            self.decided[r.xid], self.outcome[r.xid] = got["der"], r.expect
            RAN["decision: " + r.expect] += 1
        elif r.expect == "refused":
            assert got["outcome"] == "refused" and got["final"] is False, got
            self.kept[digest] = got["der"]
            assert got["after"]["ttp_exchange"] == got["before"]["ttp_exchange"]
        else:
            assert got["outcome"] == "undecided" and got["final"] is False, got
            assert got["after"] == got["before"]

    @initialize()
    def a_first_request(self) -> None:
        self._party(self.ev.requests[0])

    @rule(i=st.integers(0, 10**6))
    @counted
    def party_request(self, i: int) -> None:
        """A request of a party (or the stranger) through its own endpoint, new or sent before."""
        self._party(self.ev.requests[i % len(self.ev.requests)])

    @rule(data=st.data())
    @counted
    def replay(self, data: st.DataObject) -> None:
        """Bytes T has seen before, sent again (by anyone who copied them off the wire)."""
        self._party(data.draw(st.sampled_from(self.sent)))

    @rule(data=st.data())
    @counted
    def wrong_endpoint(self, data: st.DataObject) -> None:
        """A party's request sent to another endpoint: refused, nothing kept, nothing decided. (Bytes
        T kept a refusal for get that refusal again, whichever endpoint they come through.)"""
        r = data.draw(st.sampled_from(self.ev.requests))
        kind = data.draw(st.sampled_from([k for k in KINDS if k != r.kind]))
        got = self._send(r, kind)
        kept = self.kept.get(hashlib.sha256(r.der).hexdigest())
        if kept is not None:
            assert got["der"] == kept
        else:
            assert got["outcome"] == "refused" and f"not a {kind} request" in got["reason"], got
        assert got["after"] == got["before"]

    @rule(data=st.data())
    @counted
    def damaged_request(self, data: st.DataObject) -> None:
        """A request damaged on the way: refused and forgotten, unless the damage left it valid."""
        r = data.draw(st.sampled_from(self.ev.requests))
        der = data.draw(damaged(r.der))
        try:
            verify_statement(der, self.world.trust)
        except Exception:
            before = db_snapshot(self.t.ttp.db)
            a = post_request(self.raw, r.kind, der)
            if a.status != 200:
                assert_refusal(a)
            else:
                assert answer_of(self.world, a)["outcome"] == "refused"
            assert db_snapshot(self.t.ttp.db) == before
            return
        self._party(Req(r.name + " (re-encoded)", r.xid, r.kind, der, r.expect))    # still the same request

    @rule(data=st.data())
    @counted
    def garbage(self, data: st.DataObject) -> None:
        before = db_snapshot(self.t.ttp.db)
        path = data.draw(st.sampled_from(KNOWN))
        if data.draw(st.booleans()):
            a = self.raw.send("POST", path, data.draw(garbage_bodies()), {"Content-Type": "application/json"})
            assert_sane(a)
        else:
            a = post_request(self.raw, path.strip("/") if path.strip("/") in KINDS else "status",
                             data.draw(st.binary(min_size=1, max_size=300)))
            assert a.status < 500
            if a.status == 200:
                assert answer_of(self.world, a)["outcome"] == "refused"
        assert db_snapshot(self.t.ttp.db) == before

    @rule()
    @counted
    def restart(self) -> None:
        """T stops and starts again on its database (a crash, as far as anyone can tell)."""
        self.t.stop()
        self.t = start_ttp(self.world, self.db)
        self.raw = raw_for(self.world, self.t)

    @invariant()
    def decisions_never_change(self) -> None:
        with self.t.ttp.db.transaction(write=False) as tx:
            rows = {r[0]: (r[1],
                           base64.b64decode(r[2])) for r in tx.all("SELECT xid, outcome, decision FROM ttp_exchange")}
            kept = {r[0] for r in tx.all("SELECT request_sha256 FROM ttp_answer")}
        assert {x: d for x, (_, d) in rows.items()} == self.decided
        assert {x: o for x, (o, _) in rows.items()} == self.outcome
        assert kept == set(self.kept)


def _every_request(m: TtpMachine, d: st.DataObject) -> None:
    for i in range(len(m.ev.requests)):       # each party's request once, in order: every outcome T can give
        m.party_request(i=i)


TTP_WALK: list[Step] = [
    lambda m, d: m.a_first_request(),
    _every_request,
    lambda m, d: m.replay(data=d),
    lambda m, d: m.wrong_endpoint(data=d),
    lambda m, d: m.damaged_request(data=d),
    lambda m, d: m.garbage(data=d),
    lambda m, d: m.restart(),
    lambda m, d: m.replay(data=d),
]


def test_ttp_state_machine(world: World, storage: Storage, ev: Evidence, tmp_path: Path) -> None:
    """Decided once, refusals kept, across restarts; on PostgreSQL with a third of the examples. Every rule
    and both decisions come up in a walk through all of them; the random rounds then interleave them."""
    TtpMachine.world, TtpMachine.storage, TtpMachine.ev, TtpMachine.root = world, storage, ev, tmp_path
    RAN.clear()
    rules = {name for name, v in vars(TtpMachine).items() if getattr(v, "counted", False)}
    walk_every_rule(TtpMachine, TTP_WALK, ["decisions_never_change"])
    assert rules <= set(RAN), f"rules the walk did not run: {sorted(rules - set(RAN))}"
    assert RAN["decision: resolved"] and RAN["decision: revoked"], "the walk got no decision of each kind"
    examples = int(os.environ.get("SEMPER_FUZZ_EXAMPLES", "15"))
    if storage.is_postgres:
        examples = max(1, examples // 3)
    run_state_machine_as_test(TtpMachine, settings=settings(
        max_examples=examples, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
    print("third-party state machine, steps per rule (the walk's included):", dict(RAN))
