"""iKP at the acquirer: account codes for 1KP/2KP, and the authorisation of a 1KP, 2KP or 3KP payment.

``ikp/enrol`` (by the account's owner): the account code 1KP and 2KP payments carry, sealed to the
bank's key; the bank keeps a salted scrypt of it (``ikp_codes``), never the code. Five wrong codes
block the account's 1KP/2KP payments until its owner enrols again (a guessed code is the one attack
on 1KP the acquirer can see).

``ikp/authorise`` (by the merchant, whose signed request is its part of Auth-Request): the bank
recomputes ``H(Common)``, opens the slip with its key (associated data ``H(Common)``: a slip for
another Common does not open), checks ``ID_C = H(R_C, BAN)``, the merchant's ``Sig_M`` (2KP, 3KP:
by the key that signs the request) and the buyer's ``Sig_C`` (3KP: by the owner of the account in
the slip) or the account code (1KP, 2KP), then holds the amount exactly as a SET authorisation
does: the row goes into ``authorisations`` (its ``oi_hash`` is ``H(Common)``), so capture, release,
refund, status and the audit are SET's own operations. The answer is the bank's signature over the
result naming ``H(Common)``: iKP's ``Sig_A``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from cryptography import x509
from msgspec import Meta

from semper.hsm.rsa import TokenKeyError

from ..payment import ikp_formats as f
from ..payment.errors import ProtocolError
from ..payment.sealed import open_sealed
from ..payment.wire import key_hash, point_of, verify_digest
from ..support.db import Transaction
from ..support.migrations import Schema
from ..support.shapes import Shape, ShapeError, convert
from . import bank_store as store
from .bank_store import AccountId, Amount, BankRefusal, Certificate, Currency, Op, Signature

if TYPE_CHECKING:
    from .bank import Bank, Sender

SCHEMA = Schema.baseline("bank-ikp", [
    "CREATE TABLE IF NOT EXISTS ikp_codes (account TEXT PRIMARY KEY, salt TEXT NOT NULL, hash TEXT NOT NULL, "
    "failures INTEGER NOT NULL DEFAULT 0, at TEXT NOT NULL)",
], "iKP account codes (1KP, 2KP)")
MAX_FAILURES = 5
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


class Common(Shape, frozen=True):
    """``Common`` as the bank reads it (ikp_formats.common writes it)."""

    codes = {"price<": "bad_amount", "price>": "amount_too_large", "currency": "bad_currency"}
    type: Literal["ikp-common"]
    level: Annotated[int, Meta(ge=1, le=3)]
    price: Amount
    currency: Currency
    id_m: AccountId
    tid_m: Annotated[str, Meta(min_length=1, max_length=64)]
    date: int
    nonce_m: Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
    id_c: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
    desc_hash: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class Slip(Shape, frozen=True):
    type: Literal["ikp-slip"]
    price: int
    currency: int
    common_hash: str
    ban: AccountId
    r_c: Annotated[str, Meta(min_length=16, max_length=64)]
    code: Annotated[str, Meta(min_length=8, max_length=64)] | None = None


class Authorise(Shape, frozen=True):
    """``ikp/authorise``: Auth-Request."""

    account: AccountId
    common: dict[str, Any]
    enc_slip: dict[str, Any]
    sig_m: Signature | None = None
    merchant_certificate: Certificate | None = None
    sig_c: Signature | None = None
    payer_certificate: Certificate | None = None


class Enrol(Shape, frozen=True):
    """``ikp/enrol``: the account code, sealed to the bank's key."""

    account: AccountId
    sealed_code: dict[str, Any]


_MALFORMED = dict.fromkeys(("missing", "unknown", "type", "base64", "length", "range", "value", "json"), "malformed")


def _scrypt(code: str, salt: str) -> str:
    return hashlib.scrypt(code.encode(), salt=bytes.fromhex(salt), **_SCRYPT).hex()


def _open(bank: Bank, sealed: dict[str, Any], aad: bytes, what: str) -> bytes:
    try:
        return open_sealed(lambda w: bank.keys.rsa.decrypt(bank.keys.pi_key_id, w), sealed, aad)
    except (ProtocolError, TokenKeyError) as e:
        raise BankRefusal("bad_instruction", f"the {what} cannot be opened: {e}") from None


# ---- enrolment ----------------------------------------------------------------------------------------
def check_enrol(bank: Bank, sender: Sender, p: Enrol) -> tuple[str, str, str]:
    try:
        code = _open(bank, p.sealed_code, f.code_aad(p.account), "account code").decode()
    except UnicodeDecodeError:
        raise BankRefusal("bad_instruction", "the account code is not text") from None
    if not 8 <= len(code) <= 64:
        raise BankRefusal("bad_value", "an iKP account code has 8 to 64 characters")
    salt = secrets.token_hex(16)
    return p.account, salt, _scrypt(code, salt)


def apply_enrol(bank: Bank, tx: Transaction, sender: Sender, c: tuple[str, str, str]) -> dict[str, Any]:
    account, salt, digest = c
    bank.owned_account(tx, account, sender)
    tx.execute("DELETE FROM ikp_codes WHERE account = ?", (account,))
    tx.execute("INSERT INTO ikp_codes (account, salt, hash, failures, at) VALUES (?, ?, ?, 0, ?)",
               (account, salt, digest, store.now_iso()))
    return {"account": account, "enrolled": True, "levels": [1, 2, 3]}


# ---- authorisation ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuthCheck:
    common: dict[str, Any]
    common_hash: str
    level: int
    slip: Slip
    payer: x509.Certificate | None
    evidence: dict[str, Any]


def _code_ok(bank: Bank, account: str, code: str | None) -> None:
    """The slip's code against the enrolled one; a wrong one is counted in a transaction of its own (the
    refusal rolls the authorisation's back), and from MAX_FAILURES on the account's 1KP/2KP is blocked."""
    with bank.db.transaction(write=False) as tx:
        row = tx.one("SELECT salt, hash, failures FROM ikp_codes WHERE account = ?", (account,))
    if row is None:
        raise BankRefusal("not_enrolled", "the account is not enrolled for 1KP/2KP payments; its owner enrols it, "
                                          "or pays with 3KP (signed on the card)", 403)
    salt, digest, failures = row
    if int(failures) >= MAX_FAILURES:
        raise BankRefusal("code_blocked", "too many wrong iKP account codes: the owner must enrol the account "
                                          "again", 403)
    if code is not None and hmac.compare_digest(_scrypt(code, salt), digest):
        if failures:
            bank.db.run(lambda tx: tx.execute("UPDATE ikp_codes SET failures = 0 WHERE account = ?", (account,)))
        return
    bank.db.run(lambda tx: tx.execute("UPDATE ikp_codes SET failures = failures + 1 WHERE account = ?", (account,)))
    raise BankRefusal("bad_code", "the iKP account code in the slip is wrong", 401)


def check_authorise(bank: Bank, sender: Sender, p: Authorise) -> AuthCheck:
    try:
        common: Common = convert(p.common, Common, "Common", _MALFORMED)
    except ShapeError as e:
        raise BankRefusal(e.code, str(e)) from None
    if common.id_m != p.account:
        raise BankRefusal("instruction_mismatch", "Common names another merchant account than the request", 422)
    common_hash = f.h(p.common)
    try:
        slip = convert(json.loads(_open(bank, p.enc_slip, common_hash.hex().encode(), "slip")), Slip, "the slip",
                       _MALFORMED)
    except (ValueError, UnicodeDecodeError):
        raise BankRefusal("bad_instruction", "the slip is not JSON") from None
    except ShapeError as e:
        raise BankRefusal("bad_instruction", f"the slip is malformed: {e}") from None
    if (slip.price, slip.currency, slip.common_hash) != (common.price, common.currency, common_hash.hex()):
        raise BankRefusal("instruction_mismatch", "the slip names another price, currency or Common", 422)
    if f.buyer_id(slip.r_c, slip.ban) != common.id_c:
        raise BankRefusal("instruction_mismatch", "ID_C in Common is not the slip's account", 422)
    evidence: dict[str, Any] = {"level": common.level, "common": p.common, "enc_slip_sha256": f.h(p.enc_slip).hex()}
    if common.level >= 2:
        if p.sig_m is None or p.merchant_certificate is None:
            raise BankRefusal("bad_signature", f"a {common.level}KP authorisation needs the merchant's signature", 401)
        try:
            merchant, mkey = bank.certs.check(p.merchant_certificate)
            verify_digest(mkey, f.merchant_digest(common_hash), p.sig_m, "merchant's signature")
        except ProtocolError as e:
            raise BankRefusal("bad_signature", f"the merchant's signature is not acceptable: {e}", 401) from None
        if key_hash(point_of(merchant)) != sender.key:
            raise BankRefusal("bad_signature", "Sig_M is not by the merchant who sends the request", 401)
        evidence["sig_m"] = p.sig_m.hex()
    payer = None
    if common.level == 3:
        if p.sig_c is None or p.payer_certificate is None:
            raise BankRefusal("bad_signature", "a 3KP authorisation needs the buyer's signature", 401)
        try:
            payer, ckey = bank.certs.check(p.payer_certificate)
            verify_digest(ckey, f.customer_digest(p.enc_slip, common_hash), p.sig_c, "buyer's signature")
        except ProtocolError as e:
            raise BankRefusal("bad_signature", f"the buyer's signature is not acceptable: {e}", 401) from None
        evidence.update(sig_c=p.sig_c.hex(), payer_certificate=p.payer_certificate.hex())
    else:
        _code_ok(bank, slip.ban, slip.code)
    return AuthCheck(dict(p.common), common_hash.hex(), common.level, slip, payer, evidence)


def apply_authorise(bank: Bank, tx: Transaction, sender: Sender, c: AuthCheck) -> dict[str, Any]:
    common = c.common
    payee = bank.owned_account(tx, common["id_m"], sender)
    payer = bank.customer_account(tx, c.slip.ban)
    if c.payer is not None and payer.owner != key_hash(point_of(c.payer)):
        raise BankRefusal("not_owner", "the account in the slip does not belong to the buyer who signed", 403)
    amount, currency, payment_id = int(common["price"]), int(common["currency"]), str(common["tid_m"])
    if payer.currency != currency or payee.currency != currency:
        raise BankRefusal("currency_mismatch", "the accounts do not hold the payment's currency", 422)
    if tx.one("SELECT id FROM authorisations WHERE payee = ? AND payment_id = ?", (payee.id, payment_id)):
        raise BankRefusal("already_authorised", f"payment {payment_id} was authorised before", 409)
    store.post(tx, "ikp-authorise", payment_id, [(payer.id, -amount), (store.system_account("holds", currency),
                                                                       amount)])
    auth_id = "AU" + secrets.token_hex(8).upper()
    tx.execute("INSERT INTO authorisations (id, payer, payee, amount, currency, captured, released, refunded, oi_hash, "
               "payment_id, evidence, at) VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?, ?)",
               (auth_id, payer.id, payee.id, amount, currency, c.common_hash, payment_id, json.dumps(c.evidence),
                store.now_iso()))
    return {"authorisation": auth_id, "payment_id": payment_id, "amount": amount, "currency": currency,
            "common_hash": c.common_hash, "level": c.level, "state": "authorised"}


OPS = [Op("ikp/enrol", Enrol, check_enrol, apply_enrol),
       Op("ikp/authorise", Authorise, check_authorise, apply_authorise)]
