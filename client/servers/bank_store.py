"""The bank's tables and its double-entry ledger (SQL that SQLite and PostgreSQL both run).

Why double entry: every movement of money is one *entry* whose *postings* add up to zero, so money
can only move, never appear or vanish; ``semper audit`` recomputes every balance from the postings
and checks them against the evidence tables (load requests, debit proofs, coins, cheques).

System accounts, one per currency ``C``:

* ``external:C``   the world outside the bank; its balance is minus the money issued (cash in);
* ``float:C``      the purse float: what purse cards hold, per card in the issuer's shadow balances;
* ``ecash:C``      e-cash outstanding: coins withdrawn and not yet deposited;
* ``holds:C``      authorised account payments not yet captured or released.

Customer accounts never go below zero; neither do float, e-cash and holds. The cached ``balance``
column is updated in the same transaction as the postings (the audit checks that it agrees).
"""
from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from msgspec import Meta

from semper.hardware.errors import SemperError

from ..payment.model import MAX_AMOUNT
from ..support.db import IntegrityError, Transaction
from ..support.migrations import Schema
from ..support.shapes import Shape, ShapeError, convert

SYSTEM_KINDS = ("external", "float", "ecash", "holds")

_VERSION_1 = [
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, kind TEXT NOT NULL, currency INTEGER NOT NULL, "
    "owner TEXT, name TEXT NOT NULL, balance BIGINT NOT NULL DEFAULT 0, created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, seq BIGINT NOT NULL UNIQUE, at TEXT NOT NULL, "
    "kind TEXT NOT NULL, ref TEXT NOT NULL, memo TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE IF NOT EXISTS postings (entry TEXT NOT NULL REFERENCES entries(id), "
    "account TEXT NOT NULL REFERENCES accounts(id), amount BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS postings_account ON postings (account)",
    "CREATE TABLE IF NOT EXISTS nonces (sender TEXT NOT NULL, nonce TEXT NOT NULL, at TEXT NOT NULL, "
    "PRIMARY KEY (sender, nonce))",
    "CREATE TABLE IF NOT EXISTS idempotency (sender TEXT NOT NULL, ikey TEXT NOT NULL, op TEXT NOT NULL, "
    "digest TEXT NOT NULL, response TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (sender, ikey))",
    # issuer: cards (the certificate linked), their funding account, loads (LRQ2 evidence), shadow cache
    "CREATE TABLE IF NOT EXISTS cards (card TEXT PRIMARY KEY, account TEXT NOT NULL REFERENCES accounts(id), "
    "currency INTEGER NOT NULL, certificate TEXT NOT NULL, shadow BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS loads (card TEXT NOT NULL, counter BIGINT NOT NULL, nonce TEXT NOT NULL, "
    "amount BIGINT NOT NULL, currency INTEGER NOT NULL, state TEXT NOT NULL, request TEXT NOT NULL, "
    "command TEXT NOT NULL, confirmation TEXT, entry TEXT NOT NULL, reversal TEXT, at TEXT NOT NULL, "
    "PRIMARY KEY (card, counter, nonce))",
    # issuer: every load request's sequence number (the card's order of its requests), and the newer
    # request that proved a reversed load never applied
    "CREATE TABLE IF NOT EXISTS load_requests (card TEXT NOT NULL, counter BIGINT NOT NULL, nonce TEXT NOT NULL, "
    "sequence BIGINT NOT NULL, replaced_by TEXT, PRIMARY KEY (card, counter, nonce))",
    "CREATE INDEX IF NOT EXISTS load_requests_sequence ON load_requests (card, sequence)",
    # acquirer: PSAMs, cleared batches and every debit proof ever cleared
    "CREATE TABLE IF NOT EXISTS psams (psam TEXT PRIMARY KEY, account TEXT NOT NULL REFERENCES accounts(id), "
    "currency INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS batches (psam TEXT NOT NULL, number BIGINT NOT NULL, count BIGINT NOT NULL, "
    "total BIGINT NOT NULL, header TEXT NOT NULL, entry TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (psam, number))",
    "CREATE TABLE IF NOT EXISTS proofs (card TEXT NOT NULL, counter BIGINT NOT NULL, psam TEXT NOT NULL, "
    "batch BIGINT NOT NULL, amount BIGINT NOT NULL, proof TEXT NOT NULL, PRIMARY KEY (card, counter))",
    # proofs of a settled batch that were not paid, with the reason (evidence for the dispute); batch
    # 0 in proofs = cleared on its own, with the PSAM-signed request it answers kept here
    "CREATE TABLE IF NOT EXISTS held_proofs (psam TEXT NOT NULL, batch BIGINT NOT NULL, idx BIGINT NOT NULL, "
    "card TEXT NOT NULL, counter BIGINT NOT NULL, amount BIGINT NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL, "
    "certificate TEXT NOT NULL, proof TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (psam, batch, idx))",
    "CREATE INDEX IF NOT EXISTS held_proofs_card ON held_proofs (card, counter)",
    "CREATE TABLE IF NOT EXISTS single_clearings (card TEXT NOT NULL, counter BIGINT NOT NULL, psam TEXT NOT NULL, "
    "request TEXT NOT NULL, psam_certificate TEXT NOT NULL, certificate TEXT NOT NULL, entry TEXT NOT NULL, "
    "at TEXT NOT NULL, PRIMARY KEY (card, counter))",
    # account payments (SET / iKP)
    "CREATE TABLE IF NOT EXISTS authorisations (id TEXT PRIMARY KEY, payer TEXT NOT NULL, payee TEXT NOT NULL, "
    "amount BIGINT NOT NULL, currency INTEGER NOT NULL, captured BIGINT NOT NULL DEFAULT 0, "
    "released BIGINT NOT NULL DEFAULT 0, refunded BIGINT NOT NULL DEFAULT 0, oi_hash TEXT NOT NULL, "
    "payment_id TEXT NOT NULL, evidence TEXT NOT NULL, at TEXT NOT NULL, UNIQUE (payee, payment_id))",
    # cheques: one row per cheque paid (never twice), bounces kept as events
    "CREATE TABLE IF NOT EXISTS cheques (drawer TEXT NOT NULL, number TEXT NOT NULL, payee TEXT NOT NULL, "
    "amount BIGINT NOT NULL, currency INTEGER NOT NULL, cheque TEXT NOT NULL, entry TEXT NOT NULL, "
    "at TEXT NOT NULL, PRIMARY KEY (drawer, number))",
    "CREATE TABLE IF NOT EXISTS cheque_bounces (drawer TEXT NOT NULL, number TEXT NOT NULL, reason TEXT NOT NULL, "
    "at TEXT NOT NULL)",
    # mint
    "CREATE TABLE IF NOT EXISTS mint_keys (key_id TEXT PRIMARY KEY, currency INTEGER NOT NULL, "
    "denomination BIGINT NOT NULL, public_pem TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS withdrawals (id TEXT PRIMARY KEY, account TEXT NOT NULL, currency INTEGER NOT NULL, "
    "total BIGINT NOT NULL, coins BIGINT NOT NULL, entry TEXT NOT NULL, at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS spent_coins (serial TEXT PRIMARY KEY, key_id TEXT NOT NULL, "
    "denomination BIGINT NOT NULL, currency INTEGER NOT NULL, signature TEXT NOT NULL, account TEXT NOT NULL, "
    "entry TEXT NOT NULL, at TEXT NOT NULL)",
]

# The bank's schema history (client/support/migrations.py): add a Migration(2, ...) to change it.
SCHEMA = Schema.baseline("bank", _VERSION_1)


class BankRefusal(SemperError):
    """The bank refuses a request: HTTP status, a stable code, a sentence for people. Nothing changed."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = status


@dataclass(frozen=True)
class Op:
    """One bank operation: its parameters' shape, ``check(bank, sender, params)`` (the parameters read
    as that shape) without the database's write lock, then ``apply(bank, tx, sender, checked)`` inside
    one transaction; returns the answer's result."""

    name: str
    params: type[Shape]
    check: Callable[..., Any]
    apply: Callable[..., dict[str, Any]]


# ---- what the operations' parameters are made of (each operation declares its shape beside it) ----------
AccountId = Annotated[str, Meta(min_length=1, max_length=40)]
Amount = Annotated[int, Meta(ge=1, le=MAX_AMOUNT)]          # minor units; codes: bad_amount, amount_too_large
Currency = Annotated[int, Meta(gt=0, lt=1000)]              # ISO 4217 number; code: bad_currency
Certificate = Annotated[bytes, Meta(min_length=1, max_length=8192)]       # DER, base64 on the wire
Signature = Annotated[bytes, Meta(min_length=1, max_length=80)]           # DER ECDSA P-256
Record = Annotated[bytes, Meta(min_length=1, max_length=128)]             # a card's or PSAM's record
AMOUNT_CODES = {"amount<": "bad_amount", "amount>": "amount_too_large", "currency": "bad_currency"}
# a parameter that is there and typed but out of its limits is a bad value (missing, unknown and
# mistyped parameters keep their own codes)
PARAM_CODES = {"length": "bad_value", "base64": "bad_value", "range": "bad_value", "value": "bad_value",
               "json": "malformed"}


def read_params(op: Op, raw: Any) -> Any:
    """A request's parameters as the operation's shape; a 400 naming the parameter otherwise."""
    try:
        return convert(raw, op.params, "the parameters", PARAM_CODES)
    except ShapeError as e:
        raise BankRefusal(e.code, str(e)) from None


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def system_account(kind: str, currency: int) -> str:
    return f"{kind}:{currency}"


@dataclass(frozen=True)
class Account:
    id: str
    kind: str
    currency: int
    owner: str | None
    name: str
    balance: int


def get_account(tx: Transaction, account_id: str) -> Account | None:
    row = tx.one("SELECT id, kind, currency, owner, name, balance FROM accounts WHERE id = ?", (account_id,))
    return Account(*row) if row else None


def ensure_system_accounts(tx: Transaction, currency: int) -> None:
    for kind in SYSTEM_KINDS:
        if get_account(tx, system_account(kind, currency)) is None:
            tx.execute("INSERT INTO accounts (id, kind, currency, owner, name, balance, created_at) "
                       "VALUES (?, ?, ?, NULL, ?, 0, ?)",
                       (system_account(kind, currency), kind, currency, f"{kind} ({currency})", now_iso()))


def open_account(tx: Transaction, name: str, currency: int, owner: str) -> str:
    ensure_system_accounts(tx, currency)
    account_id = "A" + secrets.token_hex(8).upper()
    tx.execute("INSERT INTO accounts (id, kind, currency, owner, name, balance, created_at) VALUES (?, 'customer', ?, "
               "?, ?, 0, ?)",
               (account_id, currency, owner, name, now_iso()))
    return account_id


def post(tx: Transaction, kind: str, ref: str, postings: list[tuple[str, int]], memo: str = "") -> str:
    """One balanced entry; refuses (and so rolls back) anything that would break an invariant."""
    if sum(a for _, a in postings) != 0:
        raise AssertionError(f"unbalanced entry {kind} {ref}: {postings}")
    accounts = {}
    for acc_id, _ in postings:
        acc = get_account(tx, acc_id)
        if acc is None:
            raise BankRefusal("unknown_account", f"there is no account {acc_id} at this bank", 404)
        accounts[acc_id] = acc
    if len({a.currency for a in accounts.values()}) != 1:
        raise BankRefusal("currency_mismatch", "the accounts of this payment hold different currencies", 422)
    entry_id = secrets.token_hex(12)
    seq_row = tx.one("SELECT COALESCE(MAX(seq), 0) + 1 FROM entries")
    assert seq_row is not None
    tx.execute("INSERT INTO entries (id, seq, at, kind, ref, memo) VALUES (?, ?, ?, ?, ?, ?)",
               (entry_id, seq_row[0], now_iso(), kind, ref, memo))
    for acc_id, amount in postings:
        acc = accounts[acc_id]
        tx.execute("INSERT INTO postings (entry, account, amount) VALUES (?, ?, ?)", (entry_id, acc_id, amount))
        cur = tx.execute("UPDATE accounts SET balance = balance + ? WHERE id = ? AND (kind = 'external' OR "
                         "balance + ? >= 0)", (amount, acc_id, amount))
        if cur.rowcount != 1:
            if acc.kind == "customer":
                raise BankRefusal("insufficient_funds", f"account {acc_id} holds too little for this", 422)
            raise BankRefusal("conservation", f"this would take the {acc.kind} account of currency "
                                              f"{acc.currency} below zero: money that was never issued", 409)
    return entry_id


def remember_nonce(tx: Transaction, sender: str, nonce: str) -> None:
    try:
        tx.execute("INSERT INTO nonces (sender, nonce, at) VALUES (?, ?, ?)", (sender, nonce, now_iso()))
    except IntegrityError:
        raise BankRefusal("replayed", "this request was sent before (same nonce); a replay is refused. To retry, "
                                      "sign it again with the same idempotency key", 409) from None


def get_meta(tx: Transaction, name: str) -> str | None:
    row = tx.one("SELECT value FROM meta WHERE name = ?", (name,))
    return row[0] if row else None


def set_meta(tx: Transaction, name: str, value: str) -> None:
    tx.execute("DELETE FROM meta WHERE name = ?", (name,))
    tx.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (name, value))


def rows(tx: Transaction, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return tx.all(sql, params)
