"""Two writers racing, on both back ends: a registration key burns once, a coin is spent once, a PSAM
batch clears once.

The racers call the services directly (``CertificationAuthority.register``, ``Bank.handle``) from two
threads, over a second service object on the same database as the one under test. On PostgreSQL the
database object holds each racer's first write transaction until both have begun and taken their
snapshots (:class:`Rendezvous`), so the two truly overlap, both see the registration unused, the coin
unspent, the batch uncleared, and the database itself must refuse one of them (a serialization
failure, retried by ``Database.run``, which then sees the winner's row). SQLite's writers queue at
``BEGIN IMMEDIATE``, so there the second simply runs after the first.
"""
from __future__ import annotations

import base64
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from postgres import Storage, storages
from test_ca_support import CA_PIN, SoftwareSigner, Tokens, request_body, start_ca, tokens
from test_payment_support import CARD_PIN, EUR, World, card_pin, world

from semper.client.payment import blind, formats
from semper.client.payment.card_purse import purchase
from semper.client.payment.manager import PaymentManager
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.purse import clearing_request
from semper.client.payment.wire import b64, unb64
from semper.client.servers.bank import Bank
from semper.client.servers.bank_audit import audit
from semper.client.servers.bank_store import BankRefusal
from semper.client.servers.ca import CaRefusal, CertificationAuthority
from semper.client.support import regkeys
from semper.client.support.db import Database, Transaction
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card

pytestmark = storages()


class Rendezvous(Database):
    """A database whose racing threads' first write transactions wait for each other once begun (and
    their snapshots taken), on PostgreSQL; on SQLite a writer holding BEGIN IMMEDIATE would wait for
    one that cannot begin, so there they are not held."""

    def __init__(self, url: str, racers: int = 2) -> None:
        super().__init__(url)
        self.barrier = threading.Barrier(racers, timeout=30) if self.backend == "postgresql" else None
        self.racers: set[int] = set()
        self._met = threading.local()

    @contextmanager
    def transaction(self, *, write: bool = True, exclusive: bool = False) -> Iterator[Transaction]:
        with super().transaction(write=write, exclusive=exclusive) as tx:
            if (write and self.barrier is not None and threading.get_ident() in self.racers
                    and not getattr(self._met, "done", False)):
                self._met.done = True
                tx.one("SELECT 1")                  # the transaction's snapshot is taken here
                self.barrier.wait()
            yield tx


def race(db: Rendezvous, *calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at once, one thread each; each one's result or the exception it raised."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls), timeout=30)

    def run(i: int) -> None:
        db.racers.add(threading.get_ident())
        start.wait()
        try:
            results[i] = calls[i]()
        except Exception as e:                     # the loser's refusal is a result here
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a racer hung"
    return results


def _url(db: Database) -> str:
    return db.dsn.target if db.backend == "postgresql" else f"sqlite:///{db.dsn.target}"


def _check_retried(db: Rendezvous) -> None:
    """On PostgreSQL the overlap must have produced a conflict that Database.run retried."""
    if db.backend == "postgresql":
        assert db.retries >= 1, "the two transactions did not conflict: the race was not run"


# ---- the CA ---------------------------------------------------------------------------------------------
def test_a_registration_key_burns_once(tmp_path: Path, tokens: Tokens, storage: Storage) -> None:
    rc = start_ca(tmp_path / "ca", tokens, db_url=storage.url("ca") if storage.is_postgres else None)
    try:
        db = Rendezvous(_url(rc.ca.db))
        ca = CertificationAuthority(db, rc.ca.signer)
        key = rc.add_person()
        bodies = [request_body(SoftwareSigner(), key) for _ in range(2)]      # two holders of one key

        def register(body: dict[str, str]) -> Callable[[], Any]:
            return lambda: ca.register(body["registration_id"], base64.b64decode(body["csr"]),
                                       base64.b64decode(body["mac"]))
        results = race(db, *(register(b) for b in bodies))
        issued = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, CaRefusal)]
        assert len(issued) == 1 and len(refused) == 1, results
        assert refused[0].code == "registration_key_used"
        reg_id = regkeys.registration_id(regkeys.parse_key(key))
        assert rc.registration(key)["serial"] == issued[0].serial
        assert [c["serial"] for c in rc.issued()] == [issued[0].serial]        # one certificate, not two
        assert rc.registration(key)["reg_id"] == reg_id
        _check_retried(db)
        db.close()
    finally:
        rc.runner.stop()
        rc.home.close()


# ---- the bank ---------------------------------------------------------------------------------------------
def _racing_bank(w: World) -> tuple[Bank, Rendezvous]:
    db = Rendezvous(_url(w.bank.db))
    return Bank(db, w.bank.keys, w.home.roots(), bank_id=w.bank.bank_id, scheme_root=w.bank.scheme_root), db


def _balances(w: World) -> dict[str, int]:
    with w.bank.db.transaction(write=False) as tx:
        return {r[0]: int(r[1]) for r in tx.all("SELECT id, balance FROM accounts")}


def _clean(w: World) -> None:
    report = audit(w.bank.db, w.bank.scheme_root)
    assert report.violations == [], report.violations


def test_a_coin_is_spent_once(world: World) -> None:
    bank, db = _racing_bank(world)
    buyer, buyer_acc = world.party("buyer")
    world.bank.cash_in(buyer_acc, 1_000)
    key = next(k for k in world.bank.mint_keys.values() if k.currency == EUR and k.denomination == 500)
    serial = secrets.token_hex(32)
    blinded = blind.blind(key.public, formats.coin_message(key.key_id, serial))
    res = world.client(buyer).call("mint/withdraw", {"account": buyer_acc, "coins": [
        {"key_id": key.key_id, "blinded": b64(blinded.blinded)}]})
    signature = blind.finalize(key.public, blinded, unb64(res["result"]["signatures"][0], "signature", 1024))
    coin = {"key_id": key.key_id, "serial": serial, "signature": b64(signature)}
    before = _balances(world)

    def deposit(payee: str) -> Callable[[], Any]:
        signer, account = world.party(payee)
        env = world.client(signer).envelope("mint/deposit", {"account": account, "coins": [coin]},
                                            secrets.token_hex(8))
        return lambda: bank.handle("mint/deposit", env)
    results = race(db, deposit("seller"), deposit("seller2"))
    paid = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, BankRefusal)]
    assert len(paid) == 1 and len(refused) == 1, results
    assert refused[0].code == "double_spend"
    after = _balances(world)
    gained = {p: after[world.accounts[p]] - before[world.accounts[p]] for p in ("seller", "seller2")}
    assert sorted(gained.values()) == [0, 500]                               # paid once, to one of them
    assert after[f"ecash:{EUR}"] == before[f"ecash:{EUR}"] - 500
    _check_retried(db)
    _clean(world)
    db.close()


def test_a_batch_clears_once(world: World, tmp_path: Path) -> None:
    bank, db = _racing_bank(world)
    buyer_img, psam_img = world.cards(tmp_path)
    buyer, buyer_acc = world.party("buyer")
    seller, seller_acc = world.party("seller")
    world.bank.cash_in(buyer_acc, 5_000)
    with open_card(buyer_img, sync=False) as bc, open_card(psam_img, sync=False) as pc:
        purse, psam = PurseSession(bc), PsamSession(pc)
        ctx = PartyContext(bank=world.client(buyer), signer=buyer, account=buyer_acc, currency=EUR, purse=purse,
                           enter_pin=card_pin)
        PaymentManager(ctx, only=["card-purse"]).module("card-purse").load(3_000)
        purse.verify_pin(CARD_PIN)
        for amount in (700, 250, 1):
            purchase(purse, psam, amount, world.scheme.root_cert)
        header, _ = psam.close_batch()
        _, signed = psam.batch_header(header.batch_number)
        params = clearing_request(psam.certificate(), signed, psam.batch_entries(header.batch_number))
    before = _balances(world)
    client = world.client(seller)

    def clear() -> Callable[[], Any]:
        env = client.envelope("acquirer/clear", params, secrets.token_hex(8))    # another request each time
        return lambda: bank.handle("acquirer/clear", env)
    results = race(db, clear(), clear())
    paid = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, BankRefusal)]
    assert len(paid) == 1 and len(refused) == 1, results
    assert refused[0].code == "batch_seen"
    after = _balances(world)
    assert after[seller_acc] - before[seller_acc] == 951
    assert after[f"float:{EUR}"] == before[f"float:{EUR}"] - 951
    _check_retried(db)
    _clean(world)
    db.close()

