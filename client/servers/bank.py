"""``semper serve bank``: issuer, acquirer, accounts and mint behind one signed-request front door.

Every request is a signed JSON body (``client.payment.wire``) naming the operation, its
parameters, a nonce, the time and an idempotency key, signed on the sender's card or token with a
certificate from a root the bank trusts (the purse scheme root, the semper CA). Handling is in two
phases so that expensive checks never hold the database's write lock:

1. ``check``: formats, certificates, signatures (thousands of debit proofs for a clearing batch);
2. ``apply``: one database transaction that records the nonce (a replay fails here), answers a
   known idempotency key with the stored answer (a retry never pays twice), checks the state
   (balances, cheques paid, coins spent, batches seen) and posts the ledger entries.

A refusal raises :class:`BankRefusal` inside the transaction, so nothing of it remains. The answer
is signed with the bank's key in its token and stored with the idempotency key.

Operator actions (open an account, cash in, link a card or PSAM to an account) are methods here
and ``semper bank`` commands, not network endpoints.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from msgspec import Meta

from semper.hardware.signer import Signer

from ..payment.errors import ProtocolError
from ..payment.wire import CertCache, SignedJson, b64, digest, key_hash, point_of, sign, verify
from ..support.db import Database, Transaction
from ..support.scheme import ROLE_PSAM, ROLE_PURSE_CARD
from ..support.shapes import Shape, ShapeError, convert
from . import bank_store as store
from .bank_store import MAX_AMOUNT, AccountId, BankRefusal, Op, read_params

MAX_SKEW_S = 300


@dataclass(frozen=True)
class Sender:
    key: str                       # SHA-256 of the signer's public point, hex: how accounts name owners
    cert: x509.Certificate
    der: bytes


class Request(Shape, frozen=True):
    """The signed body of every request: what it is for, to whom, when, and how it is retried. Any
    deviation is ``malformed`` (a 400), whatever the field."""

    op: str
    params: dict[str, Any]                  # the operation's own shape reads these (Op.params)
    nonce: Annotated[str, Meta(min_length=16, max_length=64)]
    time: int                               # any integer: one far from the bank's clock is stale, not a 500
    idempotency_key: Annotated[str, Meta(min_length=8, max_length=64)]
    bank: str


_MALFORMED = dict.fromkeys(("missing", "unknown", "type", "base64", "length", "range", "value", "json"), "malformed")


@dataclass
class MintKey:
    key_id: str
    currency: int
    denomination: int
    public: rsa.RSAPublicKey


class BankKeys:
    """The bank's keys, all in its token: EC (issuer; signs load commands and answers), RSA (PI, mint)."""

    def __init__(self, signer: Signer, certificate: bytes, rsa_keys: Any, pi_key_id: bytes,
                 pi_public: rsa.RSAPublicKey) -> None:
        self.signer = signer
        self.certificate = certificate
        self.rsa = rsa_keys
        self.pi_key_id = pi_key_id
        self.pi_public = pi_public
        self.lock = threading.Lock()             # one EC signature on the token session at a time

    def sign_digest(self, d: bytes) -> bytes:
        with self.lock:
            return self.signer.sign_digest(d)

    def sign_json(self, body: dict[str, Any]) -> SignedJson:
        with self.lock:
            return sign(self.signer, body)


class Bank:
    """One bank over one database; thread-safe (the HTTP service calls it from a thread pool)."""

    def __init__(self, db: Database, keys: BankKeys, roots: Iterable[x509.Certificate], *, bank_id: str,
                 scheme_root: x509.Certificate) -> None:
        from . import bank_exchange, bank_ikp, bank_mint, bank_purse, bank_setpay
        self.db = db
        self.keys = keys
        self.bank_id = bank_id
        self.scheme_root = scheme_root
        self.certs = CertCache(list(roots))
        self.scheme_certs = CertCache([scheme_root])
        self.linked_points: dict[str, bytes] = {}     # card -> public point of its linked certificate
        db.migrate(store.SCHEMA)
        self.ops: dict[str, Op] = {}
        for mod in (bank_purse, bank_setpay, bank_mint, bank_ikp, bank_exchange):
            schema = getattr(mod, "SCHEMA", None)          # an operation family with tables of its own
            if schema is not None:
                db.migrate(schema)
            for op in mod.OPS:
                self.ops[op.name] = op
        self.ops["accounts/balance"] = Op("accounts/balance", Balance, _check_balance, _apply_balance)
        self.mint_keys: dict[str, MintKey] = {}
        self.reload_mint_keys()

    # ---- public data -------------------------------------------------------------------------
    def reload_mint_keys(self) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        with self.db.transaction(write=False) as tx:
            for key_id, cur, denom, pem in tx.all("SELECT key_id, currency, denomination, public_pem FROM mint_keys"):
                pub = load_pem_public_key(pem.encode())
                assert isinstance(pub, rsa.RSAPublicKey)
                self.mint_keys[key_id] = MintKey(key_id, cur, denom, pub)

    def info(self) -> dict[str, Any]:
        return {"bank_id": self.bank_id, "certificate": b64(self.keys.certificate),
                "scheme_root": b64(self.scheme_root.public_bytes(Encoding.DER)),
                "pi_key": self.keys.pi_public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode(),
                "mint_keys": [{"key_id": k.key_id, "currency": k.currency, "denomination": k.denomination,
                               "public": k.public.public_bytes(Encoding.PEM,
                                                               PublicFormat.SubjectPublicKeyInfo).decode()}
                              for k in sorted(self.mint_keys.values(), key=lambda k: (k.currency, k.denomination))],
                "operations": sorted(self.ops)}

    # ---- the front door ----------------------------------------------------------------------
    def handle(self, op_name: str, envelope: Any) -> dict[str, Any]:
        """Check, apply and answer one signed request (the answer is signed JSON)."""
        op = self.ops.get(op_name)
        if op is None:
            raise BankRefusal("unknown_operation", f"there is no operation {op_name!r}", 404)
        try:
            signed = envelope if isinstance(envelope, SignedJson) else SignedJson.from_json(envelope, "the request")
        except ProtocolError as e:
            raise BankRefusal("malformed", str(e)) from None
        try:
            request = convert(signed.body, Request, "the request body", _MALFORMED)
        except ShapeError as e:
            raise BankRefusal("malformed", str(e)) from None
        if request.op != op_name:
            raise BankRefusal("malformed", f"the request is for {request.op!r} but was sent to {op_name!r}")
        if request.bank != self.bank_id:
            raise BankRefusal("wrong_bank", "the request is addressed to another bank")
        if abs(int(time.time()) - request.time) > MAX_SKEW_S:          # integers: a 400-digit time is stale, not a 500
            raise BankRefusal("stale", f"the request's time is more than {MAX_SKEW_S} s from the bank's clock; "
                                       "check the clock and sign it again", 400)
        try:
            cert = verify(signed, self.certs)
        except ProtocolError as e:
            raise BankRefusal("bad_signature", f"the request's signature is not acceptable: {e}", 401) from None
        sender = Sender(key_hash(point_of(cert)), cert, signed.certificate)
        checked = op.check(self, sender, read_params(op, request.params))
        request_digest = digest({"op": op_name, "params": signed.body["params"]}).hex()

        def apply(tx: Transaction) -> dict[str, Any]:
            store.remember_nonce(tx, sender.key, request.nonce)
            row = tx.one("SELECT op, digest, response FROM idempotency WHERE sender = ? AND ikey = ?",
                         (sender.key, request.idempotency_key))
            if row is not None:
                if (row[0], row[1]) != (op_name, request_digest):
                    raise BankRefusal("idempotency_conflict", "this idempotency key was used for another request; "
                                                              "use a new key for a new request", 409)
                return dict(json.loads(row[2]))
            result = op.apply(self, tx, sender, checked)
            answer = self.keys.sign_json({"op": op_name, "result": result, "request": request_digest,
                                          "idempotency_key": request.idempotency_key, "time": int(time.time()),
                                          "bank": self.bank_id}).to_json()
            tx.execute("INSERT INTO idempotency (sender, ikey, op, digest, response, at) VALUES (?, ?, ?, ?, ?, ?)",
                       (sender.key, request.idempotency_key, op_name, request_digest, json.dumps(answer),
                        store.now_iso()))
            return answer

        return self.db.run(apply)       # a serialization conflict runs it again: op.apply touches only tx

    # ---- helpers for the operations ----------------------------------------------------------
    def owned_account(self, tx: Transaction, account_id: str, sender: Sender) -> store.Account:
        acc = store.get_account(tx, account_id)
        if acc is None or acc.kind != "customer":
            raise BankRefusal("unknown_account", f"there is no customer account {account_id} at this bank", 404)
        if acc.owner != sender.key:
            raise BankRefusal("not_owner", f"account {account_id} does not belong to the key that signed", 403)
        return acc

    def customer_account(self, tx: Transaction, account_id: str) -> store.Account:
        acc = store.get_account(tx, account_id)
        if acc is None or acc.kind != "customer":
            raise BankRefusal("unknown_account", f"there is no customer account {account_id} at this bank", 404)
        return acc

    def check_card_cert(self, der: bytes, role: x509.ObjectIdentifier = ROLE_PURSE_CARD) -> tuple[Any, Any]:
        try:
            return self.scheme_certs.check(der, role=role)
        except ProtocolError as e:
            raise BankRefusal("bad_certificate", str(e), 401) from None

    # ---- operator ----------------------------------------------------------------------------
    def open_account(self, name: str, currency: int, owner_cert: bytes | x509.Certificate) -> str:
        cert = owner_cert if isinstance(owner_cert, x509.Certificate) else x509.load_der_x509_certificate(owner_cert)
        try:
            self.certs.check(cert.public_bytes(Encoding.DER))
        except ProtocolError as e:
            raise BankRefusal("bad_certificate", f"the owner's certificate is not acceptable: {e}") from None
        return self.db.run(lambda tx: store.open_account(tx, name, currency, key_hash(point_of(cert))))

    def cash_in(self, account_id: str, amount: int, memo: str = "cash in") -> str:
        """Money enters the bank from outside (the only way the total issued grows)."""
        if not 0 < amount <= MAX_AMOUNT:
            raise BankRefusal("bad_amount", f"the amount must be 1 to {MAX_AMOUNT}")

        def cash(tx: Transaction) -> str:
            acc = self.customer_account(tx, account_id)
            return store.post(tx, "cash-in", account_id, [(store.system_account("external", acc.currency), -amount),
                                                         (account_id, amount)], memo)

        return self.db.run(cash)

    def cash_out(self, account_id: str, amount: int, memo: str = "cash out") -> str:
        if not 0 < amount <= MAX_AMOUNT:
            raise BankRefusal("bad_amount", f"the amount must be 1 to {MAX_AMOUNT}")

        def cash(tx: Transaction) -> str:
            acc = self.customer_account(tx, account_id)
            external = store.system_account("external", acc.currency)
            return store.post(tx, "cash-out", account_id, [(account_id, -amount), (external, amount)], memo)

        return self.db.run(cash)

    def link_card(self, card_cert: bytes, account_id: str) -> str:
        """The issuer records a purse card and the account its loads are paid from."""
        cert, _ = self.check_card_cert(card_cert)
        from cryptography.x509.oid import NameOID
        serial = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        if not serial:
            raise BankRefusal("bad_certificate", "the card certificate names no card number")
        card = str(serial[0].value).upper()

        def link(tx: Transaction) -> None:
            acc = self.customer_account(tx, account_id)
            if tx.one("SELECT card FROM cards WHERE card = ?", (card,)):
                raise BankRefusal("card_known", f"card {card} is already linked", 409)
            tx.execute("INSERT INTO cards (card, account, currency, certificate, shadow) VALUES (?, ?, ?, ?, 0)",
                       (card, account_id, acc.currency, b64(card_cert)))

        self.db.run(link)
        return card

    def link_psam(self, psam_cert: bytes, account_id: str) -> str:
        cert, _ = self.check_card_cert(psam_cert, ROLE_PSAM)
        from cryptography.x509.oid import NameOID
        psam = str(cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value).upper()

        def link(tx: Transaction) -> None:
            acc = self.customer_account(tx, account_id)
            if tx.one("SELECT psam FROM psams WHERE psam = ?", (psam,)):
                raise BankRefusal("psam_known", f"PSAM {psam} is already linked", 409)
            tx.execute("INSERT INTO psams (psam, account, currency) VALUES (?, ?, ?)", (psam, account_id, acc.currency))

        self.db.run(link)
        return psam

    def account(self, account_id: str) -> store.Account:
        with self.db.transaction(write=False) as tx:
            acc = store.get_account(tx, account_id)
        if acc is None:
            raise BankRefusal("unknown_account", f"there is no account {account_id}", 404)
        return acc

    def currency(self, account_id: str) -> int:
        return self.account(account_id).currency

    def balance(self, account_id: str) -> int:
        return self.account(account_id).balance

    def shadow(self, card: str) -> int:
        with self.db.transaction(write=False) as tx:
            row = tx.one("SELECT shadow FROM cards WHERE card = ?", (card.upper(),))
        if row is None:
            raise BankRefusal("unknown_card", f"card {card} is not known to this issuer", 404)
        return int(row[0])


class Balance(Shape, frozen=True):
    account: AccountId


def _check_balance(bank: Bank, sender: Sender, p: Balance) -> str:
    return p.account


def _apply_balance(bank: Bank, tx: Transaction, sender: Sender, account_id: str) -> dict[str, Any]:
    acc = bank.owned_account(tx, account_id, sender)
    return {"account": acc.id, "balance": acc.balance, "currency": acc.currency}
