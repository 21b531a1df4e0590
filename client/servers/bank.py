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
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from semper.hardware.signer import Signer

from ..payment.errors import ProtocolError
from ..payment.wire import CertCache, SignedJson, b64, digest, key_hash, point_of, sign, unb64, verify
from ..support.db import Database, Transaction
from ..support.scheme import ROLE_PSAM, ROLE_PURSE_CARD
from . import bank_store as store
from .bank_store import BankRefusal, Op

MAX_SKEW_S = 300
MAX_AMOUNT = 2**31 - 1


@dataclass(frozen=True)
class Sender:
    key: str                       # SHA-256 of the signer's public point, hex: how accounts name owners
    cert: x509.Certificate
    der: bytes


class Params:
    """A request's parameters, read with types and limits; every violation is a 400 naming the field."""

    def __init__(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise BankRefusal("malformed", "params must be a JSON object")
        self.raw = raw

    def _get(self, name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in self.raw:
            raise BankRefusal("missing_field", f"the parameter {name!r} is missing")
        v = self.raw[name]
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise BankRefusal("wrong_type", f"the parameter {name!r} has the wrong type")
        return v

    def text(self, name: str, limit: int = 128) -> str:
        v = self._get(name, str)
        if not 0 < len(v) <= limit:
            raise BankRefusal("bad_value", f"the parameter {name!r} must have 1 to {limit} characters")
        return v

    def blob(self, name: str, limit: int = 8192) -> bytes:
        try:
            v = unb64(self._get(name, str), name, limit)
        except ProtocolError as e:
            raise BankRefusal("bad_value", str(e)) from None
        if not v:
            raise BankRefusal("bad_value", f"the parameter {name!r} is empty")
        return v

    def amount(self, name: str = "amount") -> int:
        v = self._get(name, int)
        if v <= 0:
            raise BankRefusal("bad_amount", f"the {name} must be positive, not {v}")
        if v > MAX_AMOUNT:
            raise BankRefusal("amount_too_large", f"the {name} {v} is above the limit of {MAX_AMOUNT} minor units")
        return int(v)

    def currency(self, name: str = "currency") -> int:
        v = self._get(name, int)
        if not 0 < v < 1000:
            raise BankRefusal("bad_currency", f"{v} is not an ISO 4217 currency number")
        return int(v)

    def items(self, name: str, limit: int) -> list[Any]:
        v = self._get(name, list)
        if not 0 < len(v) <= limit:
            raise BankRefusal("bad_value", f"the list {name!r} must have 1 to {limit} elements")
        return v

    def obj(self, name: str) -> dict[str, Any]:
        return dict(self._get(name, dict))


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
        from . import bank_mint, bank_purse, bank_setpay
        self.db = db
        self.keys = keys
        self.bank_id = bank_id
        self.scheme_root = scheme_root
        self.certs = CertCache(list(roots))
        self.scheme_certs = CertCache([scheme_root])
        self.linked_points: dict[str, bytes] = {}     # card -> public point of its linked certificate
        db.migrate(store.SCHEMA)
        self.ops: dict[str, Op] = {}
        for mod in (bank_purse, bank_setpay, bank_mint):
            for op in mod.OPS:
                self.ops[op.name] = op
        self.ops["accounts/balance"] = Op("accounts/balance", _check_balance, _apply_balance)
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
                               "public": k.public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()}
                              for k in sorted(self.mint_keys.values(), key=lambda k: (k.currency, k.denomination))],
                "operations": sorted(self.ops)}

    # ---- the front door ----------------------------------------------------------------------
    def handle(self, op_name: str, envelope: Any) -> dict[str, Any]:
        """Check, apply and answer one signed request (the answer is signed JSON)."""
        op = self.ops.get(op_name)
        if op is None:
            raise BankRefusal("unknown_operation", f"there is no operation {op_name!r}", 404)
        try:
            signed = SignedJson.from_json(envelope, "the request")
        except ProtocolError as e:
            raise BankRefusal("malformed", str(e)) from None
        body = signed.body
        for name, kind in (("op", str), ("params", dict), ("nonce", str), ("time", int), ("idempotency_key", str),
                           ("bank", str)):
            if not isinstance(body.get(name), kind) or isinstance(body.get(name), bool):
                raise BankRefusal("malformed", f"the request body needs {name!r} ({kind.__name__})")
        if set(body) != {"op", "params", "nonce", "time", "idempotency_key", "bank"}:
            raise BankRefusal("malformed", "the request body has unknown fields")
        if body["op"] != op_name:
            raise BankRefusal("malformed", f"the request is for {body['op']!r} but was sent to {op_name!r}")
        if body["bank"] != self.bank_id:
            raise BankRefusal("wrong_bank", "the request is addressed to another bank")
        if not 16 <= len(body["nonce"]) <= 64 or not 8 <= len(body["idempotency_key"]) <= 64:
            raise BankRefusal("malformed", "nonce and idempotency key must have 16-64 and 8-64 characters")
        if abs(int(time.time()) - body["time"]) > MAX_SKEW_S:          # integers: a 400-digit time is stale, not a 500
            raise BankRefusal("stale", f"the request's time is more than {MAX_SKEW_S} s from the bank's clock; "
                                       "check the clock and sign it again", 400)
        try:
            cert = verify(signed, self.certs)
        except ProtocolError as e:
            raise BankRefusal("bad_signature", f"the request's signature is not acceptable: {e}", 401) from None
        sender = Sender(key_hash(point_of(cert)), cert, signed.certificate)
        checked = op.check(self, sender, Params(body["params"]))
        request_digest = digest({"op": op_name, "params": body["params"]}).hex()

        def apply(tx: Transaction) -> dict[str, Any]:
            store.remember_nonce(tx, sender.key, body["nonce"])
            row = tx.one("SELECT op, digest, response FROM idempotency WHERE sender = ? AND ikey = ?",
                         (sender.key, body["idempotency_key"]))
            if row is not None:
                if (row[0], row[1]) != (op_name, request_digest):
                    raise BankRefusal("idempotency_conflict", "this idempotency key was used for another request; "
                                                              "use a new key for a new request", 409)
                return dict(json.loads(row[2]))
            result = op.apply(self, tx, sender, checked)
            answer = self.keys.sign_json({"op": op_name, "result": result, "request": request_digest,
                                          "idempotency_key": body["idempotency_key"], "time": int(time.time()),
                                          "bank": self.bank_id}).to_json()
            tx.execute("INSERT INTO idempotency (sender, ikey, op, digest, response, at) VALUES (?, ?, ?, ?, ?, ?)",
                       (sender.key, body["idempotency_key"], op_name, request_digest, json.dumps(answer),
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

    def currency(self, account_id: str) -> int:
        with self.db.transaction(write=False) as tx:
            acc = store.get_account(tx, account_id)
        if acc is None:
            raise BankRefusal("unknown_account", f"there is no account {account_id}", 404)
        return acc.currency

    def balance(self, account_id: str) -> int:
        with self.db.transaction(write=False) as tx:
            acc = store.get_account(tx, account_id)
        if acc is None:
            raise BankRefusal("unknown_account", f"there is no account {account_id}", 404)
        return acc.balance

    def shadow(self, card: str) -> int:
        with self.db.transaction(write=False) as tx:
            row = tx.one("SELECT shadow FROM cards WHERE card = ?", (card.upper(),))
        if row is None:
            raise BankRefusal("unknown_card", f"card {card} is not known to this issuer", 404)
        return int(row[0])


def _check_balance(bank: Bank, sender: Sender, p: Params) -> str:
    return p.text("account", 40)


def _apply_balance(bank: Bank, tx: Transaction, sender: Sender, account_id: str) -> dict[str, Any]:
    acc = bank.owned_account(tx, account_id, sender)
    return {"account": acc.id, "balance": acc.balance, "currency": acc.currency}
