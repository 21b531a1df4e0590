"""Account payments (SET / iKP) and cheques (Mandate) at the bank.

SET: the seller asks for an authorisation with the sealed payment instruction, the order
information's hash and the payer's dual signature; the bank opens the PI with its token key,
checks the dual signature with the payer's certificate, that the PI's account belongs to that key
and names this seller, amount and payment; then holds the amount (payer -> holds). Capture moves
held money to the seller, release gives what is not captured back, refund returns captured money
(from the seller's account). The bank never sees the order, only its hash.

Cheque: the payee deposits a cheque the drawer signed; the bank checks the signature and that the
drawer's account belongs to that key, then pays it (drawer -> payee) or bounces it when the
account holds too little. A cheque number is paid at most once per drawer account (primary key).
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from cryptography import x509
from msgspec import Meta

from semper.hsm.rsa import TokenKeyError

from ..payment import formats
from ..payment.errors import ProtocolError
from ..payment.sealed import open_sealed
from ..payment.wire import SignedJson, key_hash, point_of, verify, verify_digest
from ..support.db import Transaction
from ..support.shapes import Shape, ShapeError, convert
from . import bank_exchange
from . import bank_store as store
from .bank_store import AMOUNT_CODES, AccountId, Amount, BankRefusal, Certificate, Currency, Op, Signature

if TYPE_CHECKING:
    from .bank import Bank, Sender

AuthorisationId = Annotated[str, Meta(min_length=1, max_length=40)]


class Authorise(Shape, frozen=True):
    """``set/authorise``: the seller asks for the payer's sealed instruction to be honoured."""

    codes = AMOUNT_CODES
    account: AccountId
    payment_id: Annotated[str, Meta(min_length=1, max_length=64)]
    amount: Amount
    currency: Currency
    oi_hash: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
    sealed_pi: dict[str, Any]                   # opened with the bank's token key (payment/sealed.py)
    dual_signature: Signature
    payer_certificate: Certificate


class Capture(Shape, frozen=True):
    """``set/capture`` and ``set/refund``."""

    codes = AMOUNT_CODES
    authorisation: AuthorisationId
    amount: Amount


class AuthorisationRef(Shape, frozen=True):
    """``set/release`` and ``set/status``."""

    authorisation: AuthorisationId


class DepositCheque(Shape, frozen=True):
    """``cheque/deposit``: the payee's account and the cheque the drawer signed."""

    account: AccountId
    cheque: SignedJson


class ChequeRef(Shape, frozen=True):
    """``cheque/status``."""

    drawer: AccountId
    number: Annotated[str, Meta(min_length=1, max_length=32)]


@dataclass(frozen=True)
class AuthCheck:
    account: str
    payment_id: str
    amount: int
    currency: int
    oi_hash: str
    pi: dict[str, Any]
    payer: x509.Certificate
    evidence: dict[str, Any]


def check_authorise(bank: Bank, sender: Sender, p: Authorise) -> AuthCheck:
    account, payment_id, amount, currency, oi_hash = p.account, p.payment_id, p.amount, p.currency, p.oi_hash
    ds, payer_der, sealed = p.dual_signature, p.payer_certificate, p.sealed_pi
    try:
        payer, key = bank.certs.check(payer_der)
    except ProtocolError as e:
        raise BankRefusal("bad_certificate", f"the payer's certificate is not acceptable: {e}", 401) from None
    try:
        plain = open_sealed(lambda w: bank.keys.rsa.decrypt(bank.keys.pi_key_id, w), sealed, oi_hash.encode())
        pi = json.loads(plain)
    except (ProtocolError, TokenKeyError, ValueError, UnicodeDecodeError) as e:   # TokenKeyError: not for our key
        raise BankRefusal("bad_instruction", f"the payment instruction cannot be opened: {e}") from None
    if not isinstance(pi, dict) or pi.get("type") != "set-pi":
        raise BankRefusal("bad_instruction", "the sealed data is not a payment instruction")
    try:
        verify_digest(key, formats.dual_digest(formats.h(pi), bytes.fromhex(oi_hash)), ds, "dual signature")
    except ProtocolError as e:
        raise BankRefusal("bad_signature", str(e), 401) from None
    if (pi.get("payee"), pi.get("amount"), pi.get("currency"), pi.get("payment_id")) != (account, amount, currency,
                                                                                         payment_id):
        raise BankRefusal("instruction_mismatch", "the payer's instruction names another payee, amount, currency "
                                                  "or payment", 422)
    evidence = {"sealed_pi": sealed, "dual_signature": ds.hex(), "payer_certificate": payer_der.hex(),
                "oi_hash": oi_hash}
    return AuthCheck(account, payment_id, amount, currency, oi_hash, pi, payer, evidence)


def apply_authorise(bank: Bank, tx: Transaction, sender: Sender, c: AuthCheck) -> dict[str, Any]:
    payee = bank.owned_account(tx, c.account, sender)
    payer_id = c.pi.get("account")
    if not isinstance(payer_id, str):
        raise BankRefusal("bad_instruction", "the instruction names no account")
    payer = bank.customer_account(tx, payer_id)
    if payer.owner != key_hash(point_of(c.payer)):
        raise BankRefusal("not_owner", "the account in the instruction does not belong to the payer who signed", 403)
    if payer.currency != c.currency or payee.currency != c.currency:
        raise BankRefusal("currency_mismatch", "the accounts do not hold the payment's currency", 422)
    if tx.one("SELECT id FROM authorisations WHERE payee = ? AND payment_id = ?", (payee.id, c.payment_id)):
        raise BankRefusal("already_authorised", f"payment {c.payment_id} was authorised before", 409)
    store.post(tx, "set-authorise", c.payment_id, [(payer.id, -c.amount), (store.system_account("holds", c.currency),
                                                                          c.amount)])
    auth_id = "AU" + secrets.token_hex(8).upper()
    tx.execute("INSERT INTO authorisations (id, payer, payee, amount, currency, captured, released, refunded, oi_hash, "
               "payment_id, evidence, at) VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?, ?)",
               (auth_id, payer.id, payee.id, c.amount, c.currency, c.oi_hash, c.payment_id, json.dumps(c.evidence),
                store.now_iso()))
    bank_exchange.record_clause(tx, auth_id, c.pi)          # made inside a fair exchange: revocable by its T
    out = {"authorisation": auth_id, "payment_id": c.payment_id, "amount": c.amount, "currency": c.currency,
           "oi_hash": c.oi_hash, "state": "authorised"}
    if c.pi.get("exchange") is not None:
        out["exchange"] = c.pi["exchange"]
    return out


def _auth(tx: Transaction, bank: Bank, sender: Sender, auth_id: str) -> tuple[Any, ...]:
    row = tx.one("SELECT id, payer, payee, amount, currency, captured, released, refunded, payment_id FROM "
                 "authorisations WHERE id = ?", (auth_id,))
    if row is None:
        raise BankRefusal("unknown_authorisation", f"there is no authorisation {auth_id}", 404)
    bank.owned_account(tx, row[2], sender)
    return row


def _state(row: tuple[Any, ...]) -> dict[str, Any]:
    _, _, _, amount, currency, captured, released, refunded, pid = row
    state = ("refunded" if refunded and refunded == captured else "captured" if captured else
             "released" if released == amount else "authorised")
    return {"authorisation": row[0], "payment_id": pid, "amount": amount, "currency": currency, "captured": captured,
            "released": released, "refunded": refunded, "state": state}


def check_capture(bank: Bank, sender: Sender, p: Capture) -> tuple[str, int]:
    return p.authorisation, p.amount


def apply_capture(bank: Bank, tx: Transaction, sender: Sender, c: tuple[str, int]) -> dict[str, Any]:
    row = _auth(tx, bank, sender, c[0])
    bank_exchange.refuse_plain_capture(tx, row[0])
    left = row[3] - row[5] - row[6]
    if c[1] > left:
        raise BankRefusal("exceeds_authorisation", f"only {left} of the authorisation is left to capture", 422)
    store.post(tx, "set-capture", row[0], [(store.system_account("holds", row[4]), -c[1]), (row[2], c[1])])
    tx.execute("UPDATE authorisations SET captured = captured + ? WHERE id = ?", (c[1], row[0]))
    return _state(_auth(tx, bank, sender, row[0]))


def check_release(bank: Bank, sender: Sender, p: AuthorisationRef) -> str:
    return p.authorisation


def apply_release(bank: Bank, tx: Transaction, sender: Sender, auth_id: str) -> dict[str, Any]:
    row = _auth(tx, bank, sender, auth_id)
    left = row[3] - row[5] - row[6]
    if left <= 0:
        raise BankRefusal("nothing_to_release", "nothing of this authorisation is left to release", 409)
    store.post(tx, "set-release", row[0], [(store.system_account("holds", row[4]), -left), (row[1], left)])
    tx.execute("UPDATE authorisations SET released = released + ? WHERE id = ?", (left, row[0]))
    return _state(_auth(tx, bank, sender, row[0]))


def apply_refund(bank: Bank, tx: Transaction, sender: Sender, c: tuple[str, int]) -> dict[str, Any]:
    row = _auth(tx, bank, sender, c[0])
    left = row[5] - row[7]
    if c[1] > left:
        raise BankRefusal("exceeds_capture", f"only {left} of the captured amount is left to refund", 422)
    store.post(tx, "set-refund", row[0], [(row[2], -c[1]), (row[1], c[1])])
    tx.execute("UPDATE authorisations SET refunded = refunded + ? WHERE id = ?", (c[1], row[0]))
    return _state(_auth(tx, bank, sender, row[0]))


def apply_auth_status(bank: Bank, tx: Transaction, sender: Sender, auth_id: str) -> dict[str, Any]:
    return _state(_auth(tx, bank, sender, auth_id))


# ---- cheques ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChequeCheck:
    account: str
    cheque: dict[str, Any]
    drawer_key: str
    blob: str


_CHEQUE_CODES = dict.fromkeys(("missing", "unknown", "type", "base64", "length", "range", "value", "json"),
                              "malformed")


def parse_cheque(bank: Bank, signed: SignedJson) -> tuple[dict[str, Any], str, SignedJson]:
    try:
        cert = verify(signed, bank.certs)
    except ProtocolError as e:
        raise BankRefusal("bad_signature", f"the cheque's signature is not acceptable: {e}", 401) from None
    try:
        cheque = convert(signed.body, formats.Cheque, "the cheque", _CHEQUE_CODES)
    except ShapeError as e:
        raise BankRefusal(e.code, str(e)) from None
    if cheque.bank != bank.bank_id:
        raise BankRefusal("wrong_bank", "the cheque is drawn on another bank", 422)
    return signed.body, key_hash(point_of(cert)), signed


def check_deposit_cheque(bank: Bank, sender: Sender, p: DepositCheque) -> ChequeCheck:
    body, drawer_key, signed = parse_cheque(bank, p.cheque)
    return ChequeCheck(p.account, body, drawer_key, json.dumps(signed.to_json(), sort_keys=True))


def apply_deposit_cheque(bank: Bank, tx: Transaction, sender: Sender, c: ChequeCheck) -> dict[str, Any]:
    ch = c.cheque
    payee = bank.owned_account(tx, c.account, sender)
    if ch["payee"] != payee.id:
        raise BankRefusal("wrong_payee", "the cheque is made out to another account", 403)
    drawer = bank.customer_account(tx, ch["drawer"])
    if drawer.owner != c.drawer_key:
        raise BankRefusal("not_owner", "the cheque is not signed by the holder of the drawer's account", 403)
    if drawer.currency != ch["currency"] or payee.currency != ch["currency"]:
        raise BankRefusal("currency_mismatch", "the cheque's currency is not the accounts' currency", 422)
    if tx.one("SELECT at FROM cheques WHERE drawer = ? AND number = ?", (drawer.id, ch["number"])):
        raise BankRefusal("cheque_paid", f"cheque {ch['number']} of account {drawer.id} was paid before; a cheque "
                                         "is paid once", 409)
    if drawer.balance < ch["amount"]:
        tx.execute("INSERT INTO cheque_bounces (drawer, number, reason, at) VALUES (?, ?, ?, ?)",
                   (drawer.id, ch["number"], "insufficient funds", store.now_iso()))
        return {"state": "bounced", "reason": "the drawer's account holds too little", "number": ch["number"],
                "amount": ch["amount"]}
    entry = store.post(tx, "cheque", f"{drawer.id}/{ch['number']}",
                       [(drawer.id, -ch["amount"]), (payee.id, ch["amount"])])
    tx.execute("INSERT INTO cheques (drawer, number, payee, amount, currency, cheque, entry, at) VALUES "
               "(?, ?, ?, ?, ?, ?, ?, ?)", (drawer.id, ch["number"], payee.id, ch["amount"], ch["currency"], c.blob,
                                            entry, store.now_iso()))
    return {"state": "paid", "number": ch["number"], "amount": ch["amount"], "drawer": drawer.id}


def check_cheque_status(bank: Bank, sender: Sender, p: ChequeRef) -> tuple[str, str]:
    return p.drawer, p.number


def apply_cheque_status(bank: Bank, tx: Transaction, sender: Sender, c: tuple[str, str]) -> dict[str, Any]:
    row = tx.one("SELECT payee, amount FROM cheques WHERE drawer = ? AND number = ?", c)
    if row is not None:
        acc = store.get_account(tx, c[0])
        payee = store.get_account(tx, row[0]) or acc
        if sender.key not in (payee.owner if payee else None, acc.owner if acc else None):
            raise BankRefusal("not_owner", "only the drawer or the payee may ask about this cheque", 403)
        return {"state": "paid", "number": c[1], "amount": row[1]}
    bounced = tx.one("SELECT COUNT(*) FROM cheque_bounces WHERE drawer = ? AND number = ?", c)
    return {"state": "bounced" if bounced and bounced[0] else "unknown", "number": c[1]}


OPS = [Op("set/authorise", Authorise, check_authorise, apply_authorise),
       Op("set/capture", Capture, check_capture, apply_capture),
       Op("set/release", AuthorisationRef, check_release, apply_release),
       Op("set/refund", Capture, check_capture, apply_refund),
       Op("set/status", AuthorisationRef, check_release, apply_auth_status),
       Op("cheque/deposit", DepositCheque, check_deposit_cheque, apply_deposit_cheque),
       Op("cheque/status", ChequeRef, check_cheque_status, apply_cheque_status)]
