"""Fuzzing the bank's HTTPS endpoints, and a state machine that mixes real payments with attacks.

The bank is the real one (``client/servers/bank*.py``, keys in the session's SoftHSM2 token, HTTPS
on loopback), opened over a *copy* of the session bank's database so every run starts from the same
ledger: the parties, accounts and mint keys of ``test_payment_support.make_world``, plus a purse
card and a PSAM personalised for this module.

Stateless fuzzers: random methods, paths, content types and bodies; hostile JSON in every field of
every operation; properly signed requests whose parameters are dropped, retyped or blown up; and
requests that are truncated, oversized, lying about their length, or not HTTP. Every refusal must
be a 4xx with a JSON error and leave the whole database byte for byte as it was.

The state machine (``BankMachine``) interleaves what customers really do — cash in, cheques,
account payments and refunds, e-cash withdrawals and deposits, purse loads, purchases and
clearing — with replays of accepted requests, tampered and re-signed copies, foreign signers and
garbage. Invariants after every step: each balance is what the model says, the card holds what the
model says, ``semper audit``'s checks find nothing, and every rejected request left the database
exactly as it was. A retry (new nonce, same idempotency key) must get the same answer and move no
money.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import functools
import hashlib
import os
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from postgres import Storage, storages
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
    json_values,
    mutations,
    paths,
    protocol_level_refusals,
    walk_every_rule,
)
from test_payment_support import CARD_PIN, EUR, World, card_pin, world

from semper.client.payment import blind, formats
from semper.client.payment.bank_client import BankClient
from semper.client.payment.errors import InsufficientFunds, PaymentError, ProtocolError
from semper.client.payment.manager import LocalPayee, PaymentManager, pay
from semper.client.payment.model import Status, Terms
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.purse import PurseModule
from semper.client.payment.wire import SignedJson, b64, digest, unb64
from semper.client.servers.bank import Bank
from semper.client.servers.bank_audit import audit
from semper.client.servers.bank_http import build_app
from semper.client.support.channels import server_context
from semper.client.support.db import Database
from semper.client.support.http_service import ServiceRunner
from semper.client.support.personalisation import (
    CardProfile,
    personalise_psam,
    personalise_purse_card,
)
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card

OPS = ("accounts/balance", "issuer/load", "issuer/confirm", "acquirer/clear", "acquirer/clear_proof", "set/authorise",
       "set/capture", "set/release", "set/refund", "set/status", "cheque/deposit", "cheque/status", "mint/withdraw",
       "mint/deposit")
BUYERS, SELLERS = ("buyer", "buyer2"), ("seller", "seller2")
PARTIES = BUYERS + SELLERS
CARD_MAX = 200_000
pytestmark = storages()          # money and refusal invariants on SQLite and on PostgreSQL
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


# ---- a bank of our own over a copy of the session bank's ledger -------------------------------------------
@dataclass
class Template:
    db: str                       # the template ledger's storage URL (copied for every bank of the module)
    buyer_card: Path
    psam: Path
    card_cert: bytes
    psam_cert: bytes


@dataclass
class BankCopy:
    """A running bank on a private copy of the template: its service, a raw client, the card pair."""

    world: World
    storage: Storage
    folder: Path
    bank: Bank
    runner: ServiceRunner
    raw: RawHttps
    buyer_card: Path
    psam: Path
    template: Template
    accepted: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    def client(self, who: str) -> BankClient:
        """A customer's client whose every accepted request is kept (path, envelope, answer) for replays."""
        c = BankClient(self.runner.url, self.world.home.tls_root, self.world.signers[who], retries=1)
        inner, kept = c.http, self.accepted

        class Recording:
            def __getattr__(self, name: str) -> Any:
                return getattr(inner, name)

            def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
                answer = inner.post(path, body, headers)
                kept.append((path, copy.deepcopy(body), answer))
                return answer
        c.http = Recording()
        return c

    def balances(self) -> dict[str, int]:
        with self.bank.db.transaction(write=False) as tx:
            return {r[0]: int(r[1]) for r in tx.all("SELECT id, balance FROM accounts")}

    def ledger(self) -> list[Any]:
        """Everything that moved money (what a retry must leave alone; nonces may grow)."""
        with self.bank.db.transaction(write=False) as tx:
            return (tx.all("SELECT id, balance FROM accounts ORDER BY id") + tx.all("SELECT COUNT(*) FROM entries")
                    + tx.all("SELECT COUNT(*) FROM postings"))

    def stop(self) -> None:
        self.runner.stop()
        self.bank.db.close()
        self.storage.drop(_url(self.bank.db))


def _open_bank(w: World, url: str) -> Bank:
    return Bank(Database(url), w.bank.keys, w.home.roots(), bank_id=w.bank.bank_id, scheme_root=w.bank.scheme_root)


def open_copy(w: World, storage: Storage, template: Template, folder: Path) -> BankCopy:
    folder.mkdir(parents=True, exist_ok=True)
    url = storage.copy(template.db, "fuzzbank", folder)
    buyer, psam = folder / "buyer.card", folder / "psam.card"
    shutil.copyfile(template.buyer_card, buyer)
    shutil.copyfile(template.psam, psam)
    bank = _open_bank(w, url)
    tls = w.home.tls_dir
    runner = ServiceRunner(build_app(bank), "127.0.0.1", 0, server_context(tls / "cert.pem", tls / "key.pem")).start()
    return BankCopy(w, storage, folder, bank, runner, RawHttps(runner.url, w.home.tls_root), buyer, psam, template)


def _url(db: Database) -> str:
    return db.dsn.target if db.backend == "postgresql" else f"sqlite:///{db.dsn.target}"


@pytest.fixture(scope="module")
def template(world: World, storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> Template:
    folder = tmp_path_factory.mktemp("fuzz-bank-template")
    world.bank.db.close()                    # PostgreSQL copies a database nobody is connected to (reopens on use)
    bank = _open_bank(world, storage.copy(_url(world.bank.db), "fuzzbank_template", folder))
    issuer = bank.keys.signer.public_point()
    personalise_purse_card(folder / "buyer.card", world.scheme, CardProfile(CARD_PIN, b"12345678",
                                                                            max_balance=CARD_MAX),
                           sync=False, issuer_point=issuer)
    personalise_psam(folder / "psam.card", world.scheme, sync=False)
    with open_card(folder / "buyer.card", sync=False) as c:
        card_cert = PurseSession(c).certificate()
    with open_card(folder / "psam.card", sync=False) as c:
        psam_cert = PsamSession(c).certificate()
    bank.link_card(card_cert, world.accounts["buyer"])
    bank.link_psam(psam_cert, world.accounts["seller"])
    bank.db.close()
    return Template(_url(bank.db), folder / "buyer.card", folder / "psam.card", card_cert, psam_cert)


@pytest.fixture(scope="module")
def bank(world: World, storage: Storage, template: Template, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[BankCopy]:
    b = open_copy(world, storage, template, tmp_path_factory.mktemp("fuzz-bank"))
    yield b
    b.stop()


# ---- valid parameters of every operation (the fuzzers break them) -------------------------------------------
def cheque(w: World, drawer: str, payee_account: str, amount: int, number: str | None = None) -> dict[str, Any]:
    body = formats.cheque(w.bank.bank_id, w.accounts[drawer], number or "c" + secrets.token_hex(8), payee_account,
                          amount, EUR, "0" * 64)
    s = w.signers[drawer]
    return SignedJson(body, s.certificate(), s.sign_digest(digest(body))).to_json()


def templates(b: BankCopy) -> dict[str, dict[str, Any]]:
    """For every operation, parameters of the right shape (well-formed, if not always acceptable)."""
    w = b.world
    key = next(iter(b.bank.mint_keys.values()))
    n = key.public.key_size // 8
    card_cert, psam_cert = b.template.card_cert, b.template.psam_cert
    sealed = {"wrapped": b64(os.urandom(n)), "nonce": b64(os.urandom(12)), "ciphertext": b64(os.urandom(48))}
    return {
        "accounts/balance": {"account": w.accounts["buyer"]},
        "issuer/load": {"account": w.accounts["buyer"], "request": b64(os.urandom(60)),
                        "signature": b64(os.urandom(70)),
                        "card_certificate": b64(card_cert)},
        "issuer/confirm": {"confirmation": b64(os.urandom(60)), "signature": b64(os.urandom(70)),
                           "card_certificate": b64(card_cert)},
        "acquirer/clear": {"psam_certificate": b64(psam_cert), "header": b64(os.urandom(60)),
                           "header_signature": b64(os.urandom(70)), "certificates": [b64(card_cert)],
                           "entries": [[0, b64(os.urandom(60)), b64(os.urandom(70))]]},
        "acquirer/clear_proof": {"psam_certificate": b64(psam_cert), "request": b64(os.urandom(72)),
                                 "request_signature": b64(os.urandom(70)), "card_certificate": b64(card_cert),
                                 "proof": b64(os.urandom(72)), "proof_signature": b64(os.urandom(70))},
        "set/authorise": {"account": w.accounts["seller"], "payment_id": "p-" + secrets.token_hex(4), "amount": 10,
                          "currency": EUR, "oi_hash": "0" * 64, "sealed_pi": sealed,
                          "dual_signature": b64(os.urandom(70)),
                          "payer_certificate": b64(w.signers["buyer"].certificate())},
        "set/capture": {"authorisation": "AUNOSUCH", "amount": 1},
        "set/release": {"authorisation": "AUNOSUCH"},
        "set/refund": {"authorisation": "AUNOSUCH", "amount": 1},
        "set/status": {"authorisation": "AUNOSUCH"},
        "cheque/deposit": {"account": w.accounts["seller"], "cheque": cheque(w, "buyer2", w.accounts["seller"], 10**6)},
        "cheque/status": {"drawer": w.accounts["buyer"], "number": "c-nosuch"},
        "mint/withdraw": {"account": w.accounts["buyer"], "coins": [{"key_id": key.key_id,
                                                                     "blinded": b64(b"\x01" * n)}]},
        "mint/deposit": {"account": w.accounts["seller"], "coins": [{"key_id": key.key_id, "serial": "0" * 64,
                                                                      "signature": b64(b"\x01" * n)}]},
    }


def envelope(b: BankCopy, who: str, op: str, params: Any, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A request signed by ``who`` as BankClient makes it, with body fields overridden.

    A body that has no canonical form (floats, huge integers) is signed over its plain JSON: an
    attacker signs whatever it likes; the bank must refuse it, not crash on it."""
    full = {"op": op, "params": params, "nonce": secrets.token_hex(16), "time": int(time.time()),
            "idempotency_key": secrets.token_hex(8), "bank": b.bank.bank_id, **(overrides or {})}
    try:
        d = digest(full)
    except ProtocolError:
        d = hashlib.sha256(dumps(full)).digest()
    s = b.world.signers[who]
    return {"body": full, "certificate": b64(s.certificate()), "signature": b64(s.sign_digest(d))}


def refused_unchanged(b: BankCopy, path: str, data: bytes, ctype: str = "application/json") -> dict[str, Any]:
    """POST ``data``: a 4xx with a JSON error, and the bank's whole database exactly as before."""
    before = db_snapshot(b.bank.db)
    a = b.raw.send("POST", path, data, {"Content-Type": ctype})
    err = assert_refusal(a)
    assert db_snapshot(b.bank.db) == before, f"the bank's database changed on a refused {path}: {err}"
    return err


# ---- stateless fuzzers ------------------------------------------------------------------------------------
@FUZZ
@given(method=st.sampled_from(METHODS), path=paths(("/info",) + tuple("/" + op for op in OPS)),
       ctype=st.sampled_from(CONTENT_TYPES + ("application/json",)), body=st.one_of(st.none(), garbage_bodies()))
def test_random_requests_change_nothing(bank: BankCopy, method: str, path: str, ctype: str, body: bytes | None) -> None:
    before = db_snapshot(bank.bank.db)
    a = bank.raw.send(method, path, body, {"Content-Type": ctype} if ctype else {})
    assert_sane(a, method)
    assert db_snapshot(bank.bank.db) == before


def test_hostile_json_at_every_operation(bank: BankCopy) -> None:
    """Deep nesting, 5000-digit numbers, NaN, lone surrogates in every field of the envelope."""
    for op in OPS:
        env = envelope(bank, "buyer", op, {"account": bank.world.accounts["buyer"]})
        for data in hostile_bodies(env).values():
            refused_unchanged(bank, "/" + op, data)
        if op in ("accounts/balance", "mint/deposit"):                 # one level down (the same path for all)
            for data in hostile_bodies(env["body"]).values():
                refused_unchanged(bank, "/" + op, dumps({**env, "body": "@"}).replace(b'"@"', data))


@pytest.mark.parametrize("field, value, code", [
    ("time", 10**400, "stale"), ("time", -(10**400), "stale"), ("time", 2**63, "stale"), ("time", 1.5, "malformed"),
    ("time", True, "malformed"), ("nonce", "short", "malformed"), ("nonce", "n" * 65, "malformed"),
    ("idempotency_key", "k", "malformed"), ("bank", "", "wrong_bank"), ("params", [], "malformed"),
    ("op", "set/status", "malformed"), ("extra", 1, "malformed"),
], ids=lambda v: repr(v)[:12])
def test_hostile_request_bodies_properly_signed(bank: BankCopy, field: str, value: Any, code: str) -> None:
    """The signer is genuine, the body is not what a bank request looks like: a 400, never a 500."""
    env = envelope(bank, "buyer", "accounts/balance", {"account": bank.world.accounts["buyer"]}, {field: value})
    err = refused_unchanged(bank, "/accounts/balance", dumps(env))
    assert err["error"] == code, err


def test_sealed_instructions_that_do_not_open_are_refused(bank: BankCopy) -> None:
    """set/authorise with a payment instruction the bank's token cannot decrypt (random, empty, too long)."""
    params = templates(bank)["set/authorise"]
    n = next(iter(bank.bank.mint_keys.values())).public.key_size // 8
    for wrapped in (os.urandom(n), b"\x00" * n, os.urandom(7), os.urandom(n + 1), b"\xff" * n):
        p = {**params, "sealed_pi": {**params["sealed_pi"], "wrapped": b64(wrapped)}}
        err = refused_unchanged(bank, "/set/authorise", dumps(envelope(bank, "seller", "set/authorise", p)))
        assert err["error"] == "bad_instruction", err


@FUZZ
@given(data=st.data())
def test_signed_requests_with_broken_parameters(bank: BankCopy, data: st.DataObject) -> None:
    """Genuinely signed requests whose parameters lack a field, have one of another type, or a huge one."""
    op = data.draw(st.sampled_from(OPS))
    valid = templates_cache(bank)[op]
    params = data.draw(mutations(valid, kinds=("drop", "retype", "oversize")))
    who = data.draw(st.sampled_from(PARTIES))
    refused_unchanged(bank, "/" + op, dumps(envelope(bank, who, op, params)))


_TEMPLATES: dict[str, dict[str, dict[str, Any]]] = {}


def templates_cache(b: BankCopy) -> dict[str, dict[str, Any]]:
    """:func:`templates` once per template (they sign a cheque; every copy of one template shares them)."""
    if b.template.db not in _TEMPLATES:
        _TEMPLATES[b.template.db] = templates(b)
    return _TEMPLATES[b.template.db]


def test_truncated_oversized_lying_and_non_http_requests(bank: BankCopy) -> None:
    before = db_snapshot(bank.bank.db)
    whole = dumps(envelope(bank, "buyer", "accounts/balance", {"account": bank.world.accounts["buyer"]}))
    for keep in (0, 1, len(whole) // 2, len(whole) - 1):
        bank.raw.truncated("/accounts/balance", whole, keep)
    big = bank.raw.send("POST", "/acquirer/clear", b'{"body": "' + b"A" * (16 * 1024 * 1024) + b'"}',
                        {"Content-Type": "application/json"})
    assert_refusal(big, 413)
    lying = bank.raw.lying_length("/acquirer/clear", 10**12, 17 * 1024 * 1024)
    assert lying is not None
    assert_refusal(lying, 413)
    protocol_level_refusals(bank.raw, "/accounts/balance")
    assert db_snapshot(bank.bank.db) == before
    ok = bank.client("buyer").call("accounts/balance", {"account": bank.world.accounts["buyer"]})
    assert ok["result"]["account"] == bank.world.accounts["buyer"]


# ---- the state machine -------------------------------------------------------------------------------------
RAN: collections.Counter[str] = collections.Counter()


def counted(fn: Callable[..., None]) -> Callable[..., None]:
    """Count how often a rule ran, so the test can show that every rule (attack or business) did."""
    @functools.wraps(fn)
    def run(self: Any, **kw: Any) -> None:
        RAN[fn.__name__] += 1
        fn(self, **kw)
    run.counted = True
    return run


class _Fixed:
    """Stands in for ``st.data()`` when a rule is called directly: every draw is this value."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def draw(self, strategy: Any) -> Any:
        return self.value


class BankMachine(RuleBasedStateMachine):
    """Customers doing real business, an attacker replaying, tampering and re-signing what it saw."""

    world: World
    storage: Storage
    template: Template
    root: Path

    def __init__(self) -> None:
        super().__init__()
        self.b = open_copy(self.world, self.storage, self.template, Path(tempfile.mkdtemp(dir=self.root)))
        w = self.world
        self.acc = {p: w.accounts[p] for p in PARTIES}
        start = self.b.balances()
        self.model = {p: start[self.acc[p]] for p in PARTIES}
        self.issued = -start[f"external:{EUR}"]
        self.clients = {p: self.b.client(p) for p in PARTIES}
        self.card_conn = open_card(self.b.buyer_card, sync=False)
        self.psam_conn = open_card(self.b.psam, sync=False)
        self.purse, self.psam = PurseSession(self.card_conn), PsamSession(self.psam_conn)
        self.card_balance = 0
        self.psam_pending = 0
        self.coins: list[tuple[dict[str, str], int]] = []
        self.spent: list[dict[str, str]] = []
        self.captured: list[dict[str, Any]] = []
        self.denominations = sorted({k.denomination for k in self.b.bank.mint_keys.values() if k.currency == EUR})

    def ctx(self, who: str, **kw: Any) -> PartyContext:
        return PartyContext(bank=self.clients[who], signer=self.world.signers[who], account=self.acc[who],
                            currency=EUR, **kw)

    def teardown(self) -> None:
        try:
            report = audit(self.b.bank.db, self.b.bank.scheme_root)            # with every signature checked
            assert report.violations == [], report.violations
        finally:
            self.card_conn.close()
            self.psam_conn.close()
            self.b.stop()
            shutil.rmtree(self.b.folder, ignore_errors=True)

    # ---- what customers do -----------------------------------------------------------------------------
    @initialize()
    def some_business(self) -> None:
        """Money in both buyers' accounts, a coin spent, an account payment: every attack has a target."""
        for who in BUYERS:
            self.cash_in(who=who, amount=10_000)
        self.withdraw(who="buyer", data=_Fixed(1))
        self.deposit(data=_Fixed(0), payee="seller2")
        self.account_payment(payer="buyer2", payee="seller", amount=100)

    @rule(who=st.sampled_from(BUYERS), amount=st.integers(1, 5_000))
    @counted
    def cash_in(self, who: str, amount: int) -> None:
        self.b.bank.cash_in(self.acc[who], amount)
        self.model[who] += amount
        self.issued += amount

    @rule(drawer=st.sampled_from(BUYERS), payee=st.sampled_from(SELLERS), amount=st.integers(1, 3_000))
    @counted
    def cheque(self, drawer: str, payee: str, amount: int) -> None:
        ch = cheque(self.world, drawer, self.acc[payee], amount)
        result = self.clients[payee].call("cheque/deposit", {"account": self.acc[payee], "cheque": ch})["result"]
        if self.model[drawer] >= amount:
            assert result["state"] == "paid", result
            self.model[drawer] -= amount
            self.model[payee] += amount
        else:
            assert result["state"] == "bounced", result

    @rule(payer=st.sampled_from(BUYERS), payee=st.sampled_from(SELLERS), amount=st.integers(1, 3_000))
    @counted
    def account_payment(self, payer: str, payee: str, amount: int) -> None:
        p = PaymentManager(self.ctx(payer), only=["setpay"])
        q = PaymentManager(self.ctx(payee), only=["setpay"])
        terms = Terms.new(amount, EUR, self.acc[payee], b"order %d" % amount, payee)
        q.expect(terms)
        try:
            rec = pay(p, terms, q.offer(), LocalPayee(q))
        except PaymentError:
            assert self.model[payer] < amount, "an account payment the payer could afford was refused"
            return
        assert self.model[payer] >= amount and rec.status is Status.CAPTURED, rec.status
        self.model[payer] -= amount
        self.model[payee] += amount
        self.captured.append({"manager": q, "payment_id": terms.payment_id, "payer": payer, "payee": payee,
                              "left": amount})

    @precondition(lambda self: self.captured)
    @rule(data=st.data())
    @counted
    def refund(self, data: st.DataObject) -> None:
        c = data.draw(st.sampled_from(self.captured))
        amount = data.draw(st.integers(1, c["left"] + 2))
        try:
            c["manager"].refund(c["payment_id"], amount)
        except PaymentError:
            assert amount > c["left"] or self.model[c["payee"]] < amount, "a refund within the capture was refused"
            return
        assert amount <= c["left"]
        c["left"] -= amount
        self.model[c["payee"]] -= amount
        self.model[c["payer"]] += amount

    @rule(who=st.sampled_from(BUYERS), data=st.data())
    @counted
    def withdraw(self, who: str, data: st.DataObject) -> None:
        denom = data.draw(st.sampled_from(self.denominations))
        key = next(k for k in self.b.bank.mint_keys.values() if k.denomination == denom and k.currency == EUR)
        serial = secrets.token_hex(32)
        blinded = blind.blind(key.public, formats.coin_message(key.key_id, serial))
        try:
            res = self.clients[who].call("mint/withdraw", {"account": self.acc[who], "coins": [
                {"key_id": key.key_id, "blinded": b64(blinded.blinded)}]})
        except PaymentError:
            assert self.model[who] < denom, "a withdrawal the account covers was refused"
            return
        sig = blind.finalize(key.public, blinded, unb64(res["result"]["signatures"][0], "signature", 1024))
        self.coins.append(({"key_id": key.key_id, "serial": serial, "signature": b64(sig)}, denom))
        self.model[who] -= denom

    @precondition(lambda self: self.coins)
    @rule(data=st.data(), payee=st.sampled_from(SELLERS))
    @counted
    def deposit(self, data: st.DataObject, payee: str) -> None:
        coin, denom = self.coins.pop(data.draw(st.integers(0, len(self.coins) - 1)))
        res = self.clients[payee].call("mint/deposit", {"account": self.acc[payee], "coins": [coin]})
        assert res["result"]["state"] == "deposited"
        self.model[payee] += denom
        self.spent.append(coin)

    @rule(amount=st.integers(1, 3_000))
    @counted
    def purse_load(self, amount: int) -> None:
        module = PurseModule(self.ctx("buyer", purse=self.purse, enter_pin=card_pin))
        fits = self.model["buyer"] >= amount and self.card_balance + amount <= CARD_MAX
        try:
            module.load(amount)
        except PaymentError:
            assert not fits, "a load the account and the card allow was refused"
            return
        assert fits
        self.model["buyer"] -= amount
        self.card_balance += amount

    @rule(amount=st.integers(1, 800))
    @counted
    def purse_purchase(self, amount: int) -> None:
        from semper.client.payment.card_purse import purchase
        try:
            purchase(self.purse, self.psam, amount, self.world.scheme.root_cert)
        except InsufficientFunds:
            assert self.card_balance < amount, "a purchase the card covers was refused"
            return
        assert self.card_balance >= amount
        self.card_balance -= amount
        self.psam_pending += amount

    @rule()
    @counted
    def purse_clear(self) -> None:
        cleared = PurseModule(self.ctx("seller", psam=self.psam)).clear()
        assert (cleared or {}).get("total", 0) == self.psam_pending
        self.model["seller"] += self.psam_pending
        self.psam_pending = 0

    # ---- what an attacker does ---------------------------------------------------------------------------
    def _refused(self, path: str, env: Any, ctype: str = "application/json") -> dict[str, Any]:
        """POST ``env``; it must be refused with a JSON error and leave the whole database as it was."""
        return refused_unchanged(self.b, path, dumps(env), ctype)

    @precondition(lambda self: self.b.accepted)
    @rule(data=st.data())
    @counted
    def replay(self, data: st.DataObject) -> None:
        path, env, _ = data.draw(st.sampled_from(self.b.accepted))
        assert self._refused(path, env)["error"] in ("replayed", "stale")

    @precondition(lambda self: self.b.accepted)
    @rule(data=st.data())
    @counted
    def tamper(self, data: st.DataObject) -> None:
        """Change what a signed request says without signing it again."""
        path, env, _ = data.draw(st.sampled_from(self.b.accepted))
        forged = copy.deepcopy(env)
        body = forged["body"]
        how = data.draw(st.sampled_from(("params", "key", "nonce", "time", "signature", "certificate")))
        if how == "params":
            p = body["params"]
            name = data.draw(st.sampled_from(sorted(p)))
            p[name] = data.draw(json_values(3).filter(lambda v: v != p[name]))
        elif how == "key":
            body["idempotency_key"] = secrets.token_hex(8)
        elif how == "nonce":
            body["nonce"] = secrets.token_hex(16)
        elif how == "time":
            body["time"] += data.draw(st.sampled_from((-1, 1, 299, -10_000)))
        elif how == "signature":
            sig = bytearray(unb64(forged["signature"], "signature"))
            # an index in a fixed range: the signature's length varies (DER), and hypothesis must draw the same
            # way when it replays a run
            sig[data.draw(st.integers(0, 63)) % len(sig)] ^= 1 << data.draw(st.integers(0, 7))
            forged["signature"] = b64(bytes(sig))
        else:
            other = data.draw(st.sampled_from(PARTIES))
            forged["certificate"] = b64(self.world.signers[other].certificate())
        self._refused(path, forged)

    @precondition(lambda self: self.b.accepted)
    @rule(data=st.data())
    @counted
    def resign_as_someone_else(self, data: st.DataObject) -> None:
        """What one customer sent, signed afresh by another (with its own nonce and key)."""
        path, env, _ = data.draw(st.sampled_from(self.b.accepted))
        signer = SignedJson.from_json(env).certificate
        others = [p for p in PARTIES if self.world.signers[p].certificate() != signer]
        who = data.draw(st.sampled_from(others))
        self._refused(path, envelope(self.b, who, env["body"]["op"], env["body"]["params"]))

    @precondition(lambda self: self.b.accepted)
    @rule(data=st.data())
    @counted
    def retry(self, data: st.DataObject) -> None:
        """A lost answer's retry: same idempotency key, new nonce and signature; the same answer, no money."""
        path, env, answer = data.draw(st.sampled_from(self.b.accepted))
        signer = SignedJson.from_json(env).certificate
        who = next(p for p in PARTIES if self.world.signers[p].certificate() == signer)
        before = self.b.ledger()
        again = envelope(self.b, who, env["body"]["op"], env["body"]["params"],
                         {"idempotency_key": env["body"]["idempotency_key"]})
        a = self.b.raw.post_json(path, again)
        assert a.status == 200, a.body[:300]
        assert a.json() == answer
        assert self.b.ledger() == before

    @rule(data=st.data())
    @counted
    def garbage(self, data: st.DataObject) -> None:
        op = data.draw(st.sampled_from(OPS))
        kind = data.draw(st.sampled_from(("raw", "signed", "ctype")))
        if kind == "raw":
            before = db_snapshot(self.b.bank.db)
            a = self.b.raw.send("POST", "/" + op, data.draw(garbage_bodies()), {"Content-Type": "application/json"})
            assert_sane(a)
            assert db_snapshot(self.b.bank.db) == before
        elif kind == "signed":
            params = data.draw(mutations(templates_cache(self.b)[op], kinds=("drop", "retype", "oversize")))
            self._refused("/" + op, envelope(self.b, data.draw(st.sampled_from(PARTIES)), op, params))
        else:
            env = envelope(self.b, "buyer", "accounts/balance", {"account": self.acc["buyer"]})
            self._refused("/accounts/balance", env, data.draw(st.sampled_from(CONTENT_TYPES)))

    @precondition(lambda self: self.spent)
    @rule(data=st.data(), payee=st.sampled_from(SELLERS))
    @counted
    def double_spend(self, data: st.DataObject, payee: str) -> None:
        coin = data.draw(st.sampled_from(self.spent))
        env = envelope(self.b, payee, "mint/deposit", {"account": self.acc[payee], "coins": [coin]})
        assert self._refused("/mint/deposit", env)["error"] == "double_spend"

    # ---- invariants --------------------------------------------------------------------------------------
    @invariant()
    def balances_are_what_the_model_says(self) -> None:
        now = self.b.balances()
        assert {p: now[self.acc[p]] for p in PARTIES} == self.model
        assert -now[f"external:{EUR}"] == self.issued

    @invariant()
    def the_card_holds_what_the_model_says(self) -> None:
        assert self.purse.info().balance == self.card_balance

    @invariant()
    def audit_finds_nothing(self) -> None:
        report = audit(self.b.bank.db, self.b.bank.scheme_root, signatures=False)
        assert report.violations == [], report.violations


BANK_WALK: list[Step] = [
    lambda m, d: m.some_business(),
    lambda m, d: m.cash_in(who=d.draw(st.sampled_from(BUYERS)), amount=d.draw(st.integers(1, 5_000))),
    lambda m, d: m.cheque(drawer=d.draw(st.sampled_from(BUYERS)), payee=d.draw(st.sampled_from(SELLERS)),
                          amount=d.draw(st.integers(1, 3_000))),
    lambda m, d: m.account_payment(payer=d.draw(st.sampled_from(BUYERS)), payee=d.draw(st.sampled_from(SELLERS)),
                                   amount=d.draw(st.integers(1, 3_000))),
    lambda m, d: m.refund(data=d),
    lambda m, d: m.withdraw(who=d.draw(st.sampled_from(BUYERS)), data=d),
    lambda m, d: m.deposit(data=d, payee=d.draw(st.sampled_from(SELLERS))),
    lambda m, d: m.purse_load(amount=d.draw(st.integers(1, 3_000))),
    lambda m, d: m.purse_purchase(amount=d.draw(st.integers(1, 800))),
    lambda m, d: m.purse_clear(),
    lambda m, d: m.replay(data=d),
    lambda m, d: m.tamper(data=d),
    lambda m, d: m.resign_as_someone_else(data=d),
    lambda m, d: m.retry(data=d),
    lambda m, d: m.garbage(data=d),
    lambda m, d: m.double_spend(data=d, payee=d.draw(st.sampled_from(SELLERS))),
]
BANK_INVARIANTS = ["balances_are_what_the_model_says", "the_card_holds_what_the_model_says", "audit_finds_nothing"]


def test_bank_state_machine(world: World, storage: Storage, template: Template, tmp_path: Path) -> None:
    """Money and refusals under a mix of business and attacks; on PostgreSQL with fewer examples (each
    starts from a copy of the template database, and the SQLite run covers the rules' variety). Every rule
    runs at least once in a walk through all of them (preconditions met by the business before it); the
    random rounds then interleave them."""
    BankMachine.world, BankMachine.storage, BankMachine.template, BankMachine.root = world, storage, template, tmp_path
    RAN.clear()
    rules = {name for name, v in vars(BankMachine).items() if getattr(v, "counted", False)}
    walk_every_rule(BankMachine, BANK_WALK, BANK_INVARIANTS)
    assert rules <= set(RAN), f"rules the walk did not run: {sorted(rules - set(RAN))}"
    examples = int(os.environ.get("SEMPER_FUZZ_EXAMPLES", "15"))
    if storage.is_postgres:
        examples = max(1, examples // 3)
    run_state_machine_as_test(BankMachine, settings=settings(
        max_examples=examples, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    print("bank state machine, steps per rule (the walk's included):", dict(RAN))
