"""What the bank does so that payments can be fairly exchanged: the third party's decisions count here.

Each payment module gets the exchange-enabling property it can honestly have (docs/exchange.md,
"Payments in fair exchanges"); this module is the bank's half of it. A payment made inside an
exchange names it: ``{"xid", "ttp"}`` (the exchange id and the third party's certificate id), and
the bank then honours the third party's *signed decision* for that exchange (a CMS statement from a
certificate under a root the bank trusts, whose id is the one the payment names):

* **SET-like account payments are revocable.** An instruction whose PI and OI carry the exchange
  clause is authorised (held) as usual, and the clause is recorded (``exchange_authorisations``).
  Such an authorisation is not captured on the payee's word: ``set/settle`` captures it against the
  third party's ``resolved`` decision, ``set/revoke`` gives the hold back to the payer against its
  ``revoked`` decision. The third party decides once, so one of the two happens, never both.
* **Cheques are generatable (and verifiable).** ``cheque/reserve``: the drawer has the bank hold the
  amount of a cheque that names the exchange; the bank's signed reservation is what the payee checks
  before giving anything. ``cheque/cash`` pays a reserved cheque to its payee against a *release*:
  the drawer's own signed release, or the third party's (its replacement when it resolves for the
  payee: that is the generated transfer). ``cheque/unreserve`` gives a *returnable* reservation back
  to the drawer against the third party's ``expired`` decision (the payee did not resolve before the
  cheque's ``valid_until``). A cheque given outright (not a commitment) is reserved not returnable.
* **E-cash is verifiable.** ``mint/deposit_for`` deposits coins into a named account for a named
  payment, by anyone (coins are bearer money: depositing them for someone is a gift). Depositing the
  same coins for the same account and payment again answers as before, without paying twice; for
  any other account or payment it is a double spend. So the third party verifies an e-cash payment
  by depositing it for the payee: if that succeeds the payee has the money, whether the payee
  deposited first or the third party did; if the payer spent the coins elsewhere, it is refused.

Tables are this module's own store (``bank-exchange``), beside the bank's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from msgspec import Meta

from ..payment import formats
from ..payment.errors import ProtocolError
from ..payment.modules.mandate import release_body
from ..payment.wire import SignedJson, key_hash, point_of, verify
from ..support.cms import EvidenceError
from ..support.db import Transaction
from ..support.migrations import Schema
from ..support.shapes import Shape, ShapeError, convert
from ..support.trust import TrustStore
from ..support.verify import verify_statement
from . import bank_mint
from . import bank_store as store
from .bank_store import AccountId, BankRefusal, Op

if TYPE_CHECKING:
    from .bank import Bank, Sender

SCHEMA = Schema.baseline("bank-exchange", [
    # SET authorisations made inside a fair exchange: captured or released only on the third party's decision
    "CREATE TABLE IF NOT EXISTS exchange_authorisations (authorisation TEXT PRIMARY KEY, xid TEXT NOT NULL, "
    "ttp TEXT NOT NULL, state TEXT NOT NULL, at TEXT NOT NULL)",
    # cheques reserved for an exchange: the amount is in holds until cashed or returned
    "CREATE TABLE IF NOT EXISTS cheque_reservations (drawer TEXT NOT NULL, number TEXT NOT NULL, "
    "payee TEXT NOT NULL, amount BIGINT NOT NULL, currency INTEGER NOT NULL, xid TEXT NOT NULL, ttp TEXT NOT NULL, "
    "valid_until BIGINT NOT NULL, returnable INTEGER NOT NULL, cheque TEXT NOT NULL, state TEXT NOT NULL, "
    "at TEXT NOT NULL, PRIMARY KEY (drawer, number))",
    # exchanges whose third party revoked them before the payee had the payment authorised: it never will be
    "CREATE TABLE IF NOT EXISTS revoked_exchanges (xid TEXT NOT NULL, ttp TEXT NOT NULL, at TEXT NOT NULL, "
    "PRIMARY KEY (xid, ttp))",
    # which payment each deposited coin paid (deposits that name one): a second deposit for the same is no spend
    "CREATE TABLE IF NOT EXISTS coin_payments (serial TEXT PRIMARY KEY, account TEXT NOT NULL, "
    "payment_id TEXT NOT NULL)",
], "payments in fair exchanges: SET clauses, reserved cheques, coins deposited for a payment")

Hex64 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
_MALFORMED = dict.fromkeys(("missing", "unknown", "type", "base64", "length", "range", "value", "json"), "malformed")


class Clause(Shape, frozen=True):
    """The exchange a payment belongs to (``Binding.exchange_clause``), with what a cheque adds."""

    xid: Hex64
    ttp: Hex64
    valid_until: int = 0            # cheques: until when the third party may release it for the payee
    returnable: bool = False        # cheques: a commitment the drawer gets back on the third party's 'expired'


class ExchangeCheque(formats.Cheque, frozen=True):
    """A cheque made for an exchange: a cheque plus the clause (the plain deposit, reading ``formats.Cheque``
    with unknown fields refused, refuses it)."""

    exchange: Clause




# ---- the third party's decisions ----------------------------------------------------------------------
def trust_of(bank: Bank) -> TrustStore:
    cached = getattr(bank, "_exchange_trust", None)
    if cached is None:
        cached = TrustStore(list(bank.certs.roots))
        bank._exchange_trust = cached          # type: ignore[attr-defined]  # a cache the exchange ops keep on the bank
    return cached


def ttp_statement(bank: Bank, der: bytes, ttp: str, what: str) -> dict[str, Any]:
    """The body of a statement signed by the third party ``ttp`` (certificate id), or a refusal."""
    from ..transfer.binding import cert_id
    try:
        vs = verify_statement(der, trust_of(bank))
    except EvidenceError as e:
        raise BankRefusal("bad_decision", f"the {what} does not verify: {e}", 401) from None
    if cert_id(vs.signer) != ttp:
        raise BankRefusal("bad_decision", f"the {what} is not signed by the third party the payment names", 401)
    return vs.body


def decision_for(bank: Bank, der: bytes, xid: str, ttp: str, outcome: str) -> dict[str, Any]:
    body = ttp_statement(bank, der, ttp, "third party's decision")
    if body.get("type") != "decision" or body.get("xid") != xid or body.get("final") is not True:
        raise BankRefusal("bad_decision", "the statement is not the third party's final decision for this exchange",
                          422)
    if body.get("outcome") != outcome:
        raise BankRefusal("wrong_decision", f"the third party decided {body.get('outcome')!r} for this exchange, "
                                            f"not {outcome!r}", 409)
    return body


# ---- SET: revocable ---------------------------------------------------------------------------------------
def record_clause(tx: Transaction, authorisation: str, pi: dict[str, Any]) -> None:
    """Called by set/authorise: an instruction made inside an exchange is held for the third party's word."""
    clause = pi.get("exchange")
    if clause is None:
        return
    try:
        c = convert(clause, Clause, "the instruction's exchange clause", _MALFORMED)
    except ShapeError as e:
        raise BankRefusal("bad_instruction", str(e)) from None
    if tx.one("SELECT at FROM revoked_exchanges WHERE xid = ? AND ttp = ?", (c.xid, c.ttp)):
        raise BankRefusal("exchange_revoked", "the third party revoked the exchange this payment was made in: it is "
                                              "void", 409)
    tx.execute("INSERT INTO exchange_authorisations (authorisation, xid, ttp, state, at) VALUES (?, ?, ?, 'open', ?)",
               (authorisation, c.xid, c.ttp, store.now_iso()))


def open_clause(tx: Transaction, authorisation: str) -> tuple[str, str, str] | None:
    row = tx.one("SELECT xid, ttp, state FROM exchange_authorisations WHERE authorisation = ?", (authorisation,))
    return None if row is None else (str(row[0]), str(row[1]), str(row[2]))


def refuse_plain_capture(tx: Transaction, authorisation: str) -> None:
    """Called by set/capture: the payee alone cannot make a revocable exchange payment final."""
    clause = open_clause(tx, authorisation)
    if clause is not None and clause[2] == "open":
        raise BankRefusal("exchange_open", "this authorisation belongs to a fair exchange: it is captured with the "
                                           "third party's resolution (set/settle), or released by its revocation", 409)


class Settle(Shape, frozen=True):
    """``set/settle``: an authorisation and the third party's decision (DER)."""

    authorisation: Annotated[str, Meta(min_length=1, max_length=40)]
    decision: Annotated[bytes, Meta(min_length=1, max_length=256 * 1024)]


class Revoke(Shape, frozen=True):
    """``set/revoke``: the payment (the payee's account and the payment id: all the payer knows) and the
    third party's decision (DER)."""

    payee: AccountId
    payment_id: Annotated[str, Meta(min_length=1, max_length=64)]
    decision: Annotated[bytes, Meta(min_length=1, max_length=256 * 1024)]


def check_settle(bank: Bank, sender: Sender, p: Settle | Revoke) -> Settle | Revoke:
    return p


def _exchange_auth(tx: Transaction, auth_id: str) -> tuple[tuple[Any, ...], tuple[str, str, str]]:
    row = tx.one("SELECT id, payer, payee, amount, currency, captured, released, refunded, payment_id FROM "
                 "authorisations WHERE id = ?", (auth_id,))
    clause = open_clause(tx, auth_id)
    if row is None or clause is None:
        raise BankRefusal("unknown_authorisation", f"there is no exchange authorisation {auth_id}", 404)
    return row, clause


def apply_settle(bank: Bank, tx: Transaction, sender: Sender, p: Settle) -> dict[str, Any]:
    row, (xid, ttp, state) = _exchange_auth(tx, p.authorisation)
    bank.owned_account(tx, row[2], sender)                       # the payee settles
    decision_for(bank, p.decision, xid, ttp, "resolved")
    if state == "settled":
        return {"authorisation": row[0], "state": "captured", "xid": xid, "before": True}
    if state != "open":
        raise BankRefusal("exchange_closed", f"this exchange authorisation is {state}", 409)
    left = int(row[3] - row[5] - row[6])
    if left > 0:
        store.post(tx, "set-settle", row[0], [(store.system_account("holds", row[4]), -left), (row[2], left)])
        tx.execute("UPDATE authorisations SET captured = captured + ? WHERE id = ?", (left, row[0]))
    tx.execute("UPDATE exchange_authorisations SET state = 'settled' WHERE authorisation = ?", (row[0],))
    return {"authorisation": row[0], "payment_id": row[8], "amount": row[3], "captured": row[5] + left, "xid": xid,
            "state": "captured"}


def apply_revoke(bank: Bank, tx: Transaction, sender: Sender, p: Revoke) -> dict[str, Any]:
    from ..transfer.binding import cert_id
    found = tx.one("SELECT id FROM authorisations WHERE payee = ? AND payment_id = ?", (p.payee, p.payment_id))
    if found is None:                  # not authorised (yet): remember the revocation, so it never will be
        try:
            vs = verify_statement(p.decision, trust_of(bank))
        except EvidenceError as e:
            raise BankRefusal("bad_decision", f"the third party's decision does not verify: {e}", 401) from None
        body = vs.body
        if (body.get("type"), body.get("outcome"), body.get("final")) != ("decision", "revoked", True) or \
                not isinstance(body.get("xid"), str):
            raise BankRefusal("wrong_decision", "the statement is not a third party's revocation", 409)
        if not tx.one("SELECT at FROM revoked_exchanges WHERE xid = ? AND ttp = ?", (body["xid"], cert_id(vs.signer))):
            tx.execute("INSERT INTO revoked_exchanges (xid, ttp, at) VALUES (?, ?, ?)",
                       (body["xid"], cert_id(vs.signer), store.now_iso()))
        return {"payment_id": p.payment_id, "xid": body["xid"], "state": "revoked", "authorised": False}
    row, (xid, ttp, state) = _exchange_auth(tx, str(found[0]))
    owners = {a.owner for a in (store.get_account(tx, row[1]), store.get_account(tx, row[2])) if a is not None}
    if sender.key not in owners:
        raise BankRefusal("not_owner", "only the payer or the payee of this authorisation may present the decision",
                          403)
    decision_for(bank, p.decision, xid, ttp, "revoked")
    if state == "revoked":
        return {"authorisation": row[0], "state": "released", "xid": xid, "before": True}
    if state != "open":
        raise BankRefusal("exchange_closed", f"this exchange authorisation is {state}", 409)
    left = int(row[3] - row[5] - row[6])
    if left > 0:
        store.post(tx, "set-revoke", row[0], [(store.system_account("holds", row[4]), -left), (row[1], left)])
        tx.execute("UPDATE authorisations SET released = released + ? WHERE id = ?", (left, row[0]))
    tx.execute("UPDATE exchange_authorisations SET state = 'revoked' WHERE authorisation = ?", (row[0],))
    return {"authorisation": row[0], "payment_id": row[8], "amount": row[3], "released": row[6] + left, "xid": xid,
            "state": "released"}


# ---- cheques: generatable --------------------------------------------------------------------------------
class Reserve(Shape, frozen=True):
    """``cheque/reserve``: the drawer's cheque for an exchange."""

    cheque: SignedJson


class Cash(Shape, frozen=True):
    """``cheque/cash``: the payee's account, the reserved cheque and its release (the drawer's signed one,
    or the third party's statement)."""

    account: AccountId
    cheque: SignedJson
    release: SignedJson | None = None
    release_statement: Annotated[bytes, Meta(min_length=1, max_length=64 * 1024)] | None = None


class Unreserve(Shape, frozen=True):
    """``cheque/unreserve``: the drawer's account and cheque number, and the third party's 'expired'."""

    drawer: AccountId
    number: Annotated[str, Meta(min_length=8, max_length=32)]
    decision: Annotated[bytes, Meta(min_length=1, max_length=256 * 1024)]


@dataclass(frozen=True)
class ChequeCheck:
    cheque: ExchangeCheque
    signer_key: str
    blob: str


def exchange_cheque(bank: Bank, signed: SignedJson) -> ChequeCheck:
    try:
        cert = verify(signed, bank.certs)
    except ProtocolError as e:
        raise BankRefusal("bad_signature", f"the cheque's signature is not acceptable: {e}", 401) from None
    try:
        cheque = convert(signed.body, ExchangeCheque, "the cheque", _MALFORMED)
    except ShapeError as e:
        raise BankRefusal(e.code, str(e)) from None
    if cheque.bank != bank.bank_id:
        raise BankRefusal("wrong_bank", "the cheque is drawn on another bank", 422)
    return ChequeCheck(cheque, key_hash(point_of(cert)), json.dumps(signed.to_json(), sort_keys=True))


def check_reserve(bank: Bank, sender: Sender, p: Reserve) -> ChequeCheck:
    c = exchange_cheque(bank, p.cheque)
    if c.cheque.exchange.returnable and c.cheque.exchange.valid_until <= 0:
        raise BankRefusal("bad_value", "a returnable cheque names until when the third party may release it")
    return c


def apply_reserve(bank: Bank, tx: Transaction, sender: Sender, c: ChequeCheck) -> dict[str, Any]:
    ch = c.cheque
    drawer = bank.owned_account(tx, ch.drawer, sender)
    if drawer.owner != c.signer_key:
        raise BankRefusal("not_owner", "the cheque is not signed by the holder of the drawer's account", 403)
    payee = bank.customer_account(tx, ch.payee)
    if drawer.currency != ch.currency or payee.currency != ch.currency:
        raise BankRefusal("currency_mismatch", "the cheque's currency is not the accounts' currency", 422)
    if tx.one("SELECT at FROM cheques WHERE drawer = ? AND number = ?", (drawer.id, ch.number)) or \
            tx.one("SELECT at FROM cheque_reservations WHERE drawer = ? AND number = ?", (drawer.id, ch.number)):
        raise BankRefusal("cheque_paid", f"cheque {ch.number} of account {drawer.id} was used before", 409)
    store.post(tx, "cheque-reserve", f"{drawer.id}/{ch.number}",
               [(drawer.id, -ch.amount), (store.system_account("holds", ch.currency), ch.amount)])
    tx.execute("INSERT INTO cheque_reservations (drawer, number, payee, amount, currency, xid, ttp, valid_until, "
               "returnable, cheque, state, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?)",
               (drawer.id, ch.number, ch.payee, ch.amount, ch.currency, ch.exchange.xid, ch.exchange.ttp,
                ch.exchange.valid_until, 1 if ch.exchange.returnable else 0, c.blob, store.now_iso()))
    return reservation_result(ch, SignedJson.from_json(json.loads(c.blob)))


def reservation_result(ch: ExchangeCheque, signed: SignedJson) -> dict[str, Any]:
    """What the bank's signed reservation says (the payee and the third party check it offline)."""
    return {"reservation": f"{ch.drawer}/{ch.number}", "drawer": ch.drawer, "number": ch.number, "payee": ch.payee,
            "amount": ch.amount, "currency": ch.currency, "xid": ch.exchange.xid, "ttp": ch.exchange.ttp,
            "valid_until": ch.exchange.valid_until, "returnable": ch.exchange.returnable,
            "cheque_sha256": signed.digest.hex(), "state": "reserved"}


def check_cash(bank: Bank, sender: Sender, p: Cash) -> tuple[ChequeCheck, str]:
    c = exchange_cheque(bank, p.cheque)
    ch = c.cheque
    wanted = release_body(ch.bank, ch.drawer, ch.number, ch.exchange.xid)
    if p.release is not None:
        try:
            cert = verify(p.release, bank.certs)
        except ProtocolError as e:
            raise BankRefusal("bad_signature", f"the release's signature is not acceptable: {e}", 401) from None
        if key_hash(point_of(cert)) != c.signer_key or p.release.body != wanted:
            raise BankRefusal("bad_release", "the release is not the drawer's release of this cheque", 422)
        how = "drawer"
    elif p.release_statement is not None:
        if ttp_statement(bank, p.release_statement, ch.exchange.ttp, "release") != wanted:
            raise BankRefusal("bad_release", "the third party's statement is not a release of this cheque", 422)
        how = "ttp"
    else:
        raise BankRefusal("missing_field", "a reserved cheque is cashed with its release")
    return c, how


def apply_cash(bank: Bank, tx: Transaction, sender: Sender, c: tuple[ChequeCheck, str]) -> dict[str, Any]:
    check, how = c
    ch = check.cheque
    payee = bank.owned_account(tx, ch.payee, sender)
    row = tx.one("SELECT state, cheque FROM cheque_reservations WHERE drawer = ? AND number = ?",
                 (ch.drawer, ch.number))
    if row is None:
        raise BankRefusal("not_reserved", "this cheque was never reserved: an exchange cheque is cashed only "
                                          "against its reservation", 404)
    if json.loads(row[1]) != json.loads(check.blob):
        raise BankRefusal("bad_release", "the cheque is not the one that was reserved", 422)
    if row[0] != "reserved":
        raise BankRefusal("cheque_paid" if row[0] == "paid" else "cheque_returned",
                          f"cheque {ch.number} of account {ch.drawer} is {row[0]}", 409)
    entry = store.post(tx, "cheque-cash", f"{ch.drawer}/{ch.number}",
                       [(store.system_account("holds", ch.currency), -ch.amount), (payee.id, ch.amount)])
    tx.execute("UPDATE cheque_reservations SET state = 'paid' WHERE drawer = ? AND number = ?", (ch.drawer, ch.number))
    tx.execute("INSERT INTO cheques (drawer, number, payee, amount, currency, cheque, entry, at) VALUES "
               "(?, ?, ?, ?, ?, ?, ?, ?)", (ch.drawer, ch.number, payee.id, ch.amount, ch.currency, check.blob, entry,
                                            store.now_iso()))
    return {"state": "paid", "number": ch.number, "amount": ch.amount, "drawer": ch.drawer, "released_by": how}


def check_unreserve(bank: Bank, sender: Sender, p: Unreserve) -> Unreserve:
    return p


def apply_unreserve(bank: Bank, tx: Transaction, sender: Sender, p: Unreserve) -> dict[str, Any]:
    drawer = bank.owned_account(tx, p.drawer, sender)
    row = tx.one("SELECT amount, currency, xid, ttp, returnable, state FROM cheque_reservations WHERE drawer = ? AND "
                 "number = ?", (drawer.id, p.number))
    if row is None:
        raise BankRefusal("not_reserved", f"cheque {p.number} of account {drawer.id} is not reserved", 404)
    amount, currency, xid, ttp, returnable, state = row
    if not returnable:
        raise BankRefusal("not_returnable", "this cheque was given outright, not committed: it is not returned", 409)
    decision_for(bank, p.decision, str(xid), str(ttp), "expired")
    if state != "reserved":
        raise BankRefusal("cheque_paid" if state == "paid" else "cheque_returned", f"the cheque is {state}", 409)
    store.post(tx, "cheque-return", f"{drawer.id}/{p.number}",
               [(store.system_account("holds", int(currency)), -int(amount)), (drawer.id, int(amount))])
    tx.execute("UPDATE cheque_reservations SET state = 'returned' WHERE drawer = ? AND number = ?",
               (drawer.id, p.number))
    return {"state": "returned", "number": p.number, "amount": amount, "drawer": drawer.id}


def open_reservations(tx: Transaction) -> dict[int, int]:
    """Per currency, what reserved cheques hold (the audit adds it to open authorisations); nothing in a
    database no bank of this version opened yet."""
    from ..support.migrations import current_version
    out: dict[int, int] = {}
    if current_version(tx, SCHEMA.store) < 1:
        return out
    for currency, amount in tx.all("SELECT currency, amount FROM cheque_reservations WHERE state = 'reserved'"):
        out[int(currency)] = out.get(int(currency), 0) + int(amount)
    return out


# ---- e-cash: verifiable by depositing for the payee --------------------------------------------------------
class DepositFor(Shape, frozen=True):
    """``mint/deposit_for``: coins for ``account``, paying ``payment_id``."""

    codes = {"coins": "malformed"}
    account: AccountId
    payment_id: Annotated[str, Meta(min_length=1, max_length=64)]
    coins: Annotated[list[formats.WireCoin], Meta(min_length=1, max_length=bank_mint.MAX_DEPOSIT)]


@dataclass(frozen=True)
class DepositForCheck:
    account: str
    payment_id: str
    coins: bank_mint.DepositCheck


def check_deposit_for(bank: Bank, sender: Sender, p: DepositFor) -> DepositForCheck:
    checked = bank_mint.check_deposit(bank, sender, bank_mint.Deposit(account=p.account, coins=p.coins))
    return DepositForCheck(p.account, p.payment_id, checked)


def apply_deposit_for(bank: Bank, tx: Transaction, sender: Sender, c: DepositForCheck) -> dict[str, Any]:
    acc = bank.customer_account(tx, c.account)
    currency = c.coins.coins[0][0].currency
    if acc.currency != currency:
        raise BankRefusal("currency_mismatch", f"account {acc.id} holds currency {acc.currency}", 422)
    fresh = []
    for k, serial, sig in c.coins.coins:
        if tx.one("SELECT at FROM spent_coins WHERE serial = ?", (serial,)) is None:
            fresh.append((k, serial, sig))
            continue
        paid = tx.one("SELECT account, payment_id FROM coin_payments WHERE serial = ?", (serial,))
        if paid is None or (str(paid[0]), str(paid[1])) != (acc.id, c.payment_id):
            raise BankRefusal("double_spend", f"coin {serial[:12]}... was deposited before for another payment: "
                                              "double spending is refused", 409)
    total = sum(k.denomination for k, _, _ in c.coins.coins)
    if fresh:
        amount = sum(k.denomination for k, _, _ in fresh)
        entry = store.post(tx, "ecash-deposit", f"payment/{c.payment_id}"[:64],
                           [(store.system_account("ecash", currency), -amount), (acc.id, amount)])
        for k, serial, sig in fresh:
            tx.execute("INSERT INTO spent_coins (serial, key_id, denomination, currency, signature, account, entry, "
                       "at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (serial, k.key_id, k.denomination, currency, sig.hex(),
                                                              acc.id, entry, store.now_iso()))
            tx.execute("INSERT INTO coin_payments (serial, account, payment_id) VALUES (?, ?, ?)",
                       (serial, acc.id, c.payment_id))
    return {"total": total, "currency": currency, "coins": len(c.coins.coins), "account": acc.id,
            "payment_id": c.payment_id, "state": "deposited", "before": not fresh}


OPS = [Op("set/settle", Settle, check_settle, apply_settle),
       Op("set/revoke", Revoke, check_settle, apply_revoke),
       Op("cheque/reserve", Reserve, check_reserve, apply_reserve),
       Op("cheque/cash", Cash, check_cash, apply_cash),
       Op("cheque/unreserve", Unreserve, check_unreserve, apply_unreserve),
       Op("mint/deposit_for", DepositFor, check_deposit_for, apply_deposit_for)]
