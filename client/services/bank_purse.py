"""The purse scheme at the bank: the issuer (loads, shadow balances) and the acquirer (clearing).

Issuer. A load is paid from the card holder's account to the purse float when the issuer signs
the ``LCM1`` for the card's signed ``LRQ1`` (made on the card after its PIN). Whether the card then
applied it is learned from the card itself: its ``LCF1`` confirmation, or its next ``LRQ1``. A
next request for a *higher* load counter proves the earlier load applied; one for the *same*
counter (a new nonce) proves it never did, since the card replaced its pending request, so the old
command can no longer apply: the issuer then reverses it, and the money goes back to the account.
The shadow balance of a card is the loads not reversed minus the debits cleared.

Acquirer. A seller clears a closed PSAM batch: the PSAM-signed ``BAT1`` header and every entry
(card certificate, ``DPF1``, card signature). Every proof is checked (certificate against the
scheme root, signature, PSAM id, currency), the entries digest is recomputed, count and total
must match; a batch or a proof seen before is refused, as is a proof that would take a card's
shadow balance below zero (value the issuer never loaded). Verification runs in threads (the
``cryptography`` library releases the GIL), card certificates are checked once and cached.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hardware import tlv
from hardware.errors import TransportError
from hardware.purse_records import DEBIT_PROOF, LOAD_COMMAND_SIZE, BatchHeader, DebitRecord, LoadConfirmation, LoadRequest

from ..payment.wire import b64
from ..support.scheme import ROLE_PSAM
from . import bank_store as store
from .bank_store import BankRefusal, Op
from .db import Transaction

if TYPE_CHECKING:
    from .bank import Bank, Params, Sender

MAX_BATCH = 5000
_ECDSA = ec.ECDSA(hashes.SHA256())
_pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="semper-clearing")


def _serial(cert: Any) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return str(attrs[0].value).upper() if attrs else ""


def _card_signed(bank: Bank, cert_der: bytes, record: bytes, signature: bytes, card_number: bytes) -> None:
    cert, key = bank.check_card_cert(cert_der)
    if _serial(cert) != card_number.hex().upper():
        raise BankRefusal("bad_certificate", "the card certificate is for another card", 401)
    try:
        key.verify(signature, record, _ECDSA)
    except (InvalidSignature, ValueError):
        raise BankRefusal("bad_signature", "the card's signature on its record does not verify", 401) from None


# ---- issuer: load -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadCheck:
    account: str
    request: LoadRequest
    blob: bytes
    cert: bytes


def check_load(bank: Bank, sender: Sender, p: Params) -> LoadCheck:
    account, record, sig, cert = p.text("account", 40), p.blob("request", 256), p.blob("signature", 80), p.blob("card_certificate")
    try:
        req = LoadRequest.decode(record)
    except TransportError:
        raise BankRefusal("malformed", "the load request is not an LRQ1 record") from None
    _card_signed(bank, cert, record, sig, req.card_number)
    if req.amount <= 0:
        raise BankRefusal("bad_amount", "the load amount must be positive")
    return LoadCheck(account, req, record + sig, cert)


def apply_load(bank: Bank, tx: Transaction, sender: Sender, c: LoadCheck) -> dict[str, Any]:
    r = c.request
    card = r.card_number.hex().upper()
    row = tx.one("SELECT account, currency FROM cards WHERE card = ?", (card,))
    if row is None:
        raise BankRefusal("unknown_card", f"card {card} is not issued by this bank; link it first", 404)
    if row[0] != c.account:
        raise BankRefusal("wrong_account", f"card {card} is not paid from account {c.account}", 403)
    acc = bank.owned_account(tx, c.account, sender)
    if r.currency != row[1] or r.currency != acc.currency:
        raise BankRefusal("currency_mismatch", f"the card and account {c.account} hold currency {acc.currency}, "
                                               f"the request asks for {r.currency}", 422)
    same = tx.one("SELECT command, state FROM loads WHERE card = ? AND counter = ? AND nonce = ?",
                  (card, r.load_counter, r.nonce.hex()))
    if same is not None:                       # the same card request again: the same answer, no new money
        if same[1] == "reversed":
            raise BankRefusal("load_reversed", "this load request was superseded by a newer one", 409)
        cmd = bytes.fromhex(same[0])
        return {"command": b64(cmd[:LOAD_COMMAND_SIZE]), "signature": b64(cmd[LOAD_COMMAND_SIZE:]), "card": card, "counter": r.load_counter}
    newer = tx.one("SELECT counter FROM loads WHERE card = ? AND counter > ? AND state != 'reversed'",
                   (card, r.load_counter))
    if newer is not None:
        raise BankRefusal("stale_load", f"card {card} has already loaded with counter {newer[0]}; this request "
                                        "is old", 409)
    for counter, nonce, amount, state, entry in tx.all(
            "SELECT counter, nonce, amount, state, entry FROM loads WHERE card = ? AND state = 'pending'", (card,)):
        if counter < r.load_counter:           # the card moved past it: it applied
            tx.execute("UPDATE loads SET state = 'confirmed' WHERE card = ? AND counter = ? AND nonce = ?",
                       (card, counter, nonce))
        else:                                  # same counter, new nonce: it never applied; give it back
            rev = store.post(tx, "purse-load-reversal", f"{card}/{counter}",
                             [(store.system_account("float", r.currency), -amount), (c.account, amount)],
                             "the card replaced this load request, so the load never applied")
            tx.execute("UPDATE loads SET state = 'reversed', reversal = ? WHERE card = ? AND counter = ? AND nonce = ?",
                       (rev, card, counter, nonce))
            tx.execute("UPDATE cards SET shadow = shadow - ? WHERE card = ?", (amount, card))
    entry = store.post(tx, "purse-load", f"{card}/{r.load_counter}",
                       [(c.account, -r.amount), (store.system_account("float", r.currency), r.amount)])
    command = r.command()
    signature = bank.keys.sign_digest(hashlib.sha256(command).digest())
    tx.execute("INSERT INTO loads (card, counter, nonce, amount, currency, state, request, command, confirmation, "
               "entry, reversal, at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, NULL, ?, NULL, ?)",
               (card, r.load_counter, r.nonce.hex(), r.amount, r.currency, c.blob.hex(), (command + signature).hex(),
                entry, store.now_iso()))
    tx.execute("UPDATE cards SET shadow = shadow + ? WHERE card = ?", (r.amount, card))
    return {"command": b64(command), "signature": b64(signature), "card": card, "counter": r.load_counter}


@dataclass(frozen=True)
class ConfirmCheck:
    confirmation: LoadConfirmation
    blob: bytes


def check_confirm(bank: Bank, sender: Sender, p: Params) -> ConfirmCheck:
    record, sig, cert = p.blob("confirmation", 256), p.blob("signature", 80), p.blob("card_certificate")
    try:
        conf = LoadConfirmation.decode(record)
    except TransportError:
        raise BankRefusal("malformed", "the confirmation is not an LCF1 record") from None
    _card_signed(bank, cert, record, sig, conf.card_number)
    return ConfirmCheck(conf, record + sig)


def apply_confirm(bank: Bank, tx: Transaction, sender: Sender, c: ConfirmCheck) -> dict[str, Any]:
    conf = c.confirmation
    card = conf.card_number.hex().upper()
    row = tx.one("SELECT l.state, l.amount, k.account FROM loads l JOIN cards k ON k.card = l.card "
                 "WHERE l.card = ? AND l.counter = ? AND l.nonce = ?", (card, conf.load_counter, conf.nonce.hex()))
    if row is None:
        raise BankRefusal("unknown_load", "this issuer approved no such load", 404)
    bank.owned_account(tx, row[2], sender)
    if row[0] == "reversed":
        raise BankRefusal("load_reversed", "this load was reversed because the card replaced it; a confirmation "
                                           "for it means the card misbehaves", 409)
    tx.execute("UPDATE loads SET state = 'confirmed', confirmation = ? WHERE card = ? AND counter = ? AND nonce = ?",
               (c.blob.hex(), card, conf.load_counter, conf.nonce.hex()))
    return {"card": card, "counter": conf.load_counter, "state": "confirmed", "balance": conf.balance}


# ---- acquirer: clearing -------------------------------------------------------------------------
@dataclass(frozen=True)
class ClearCheck:
    psam: str
    header: BatchHeader
    header_blob: bytes
    proofs: list[tuple[str, int, int, bytes]]       # card, counter, amount, record||signature


def batch_digest(entries: list[bytes]) -> bytes:
    d = bytes(32)
    for e in entries:
        d = hashlib.sha256(d + hashlib.sha256(e).digest()).digest()
    return d


def check_clear(bank: Bank, sender: Sender, p: Params) -> ClearCheck:
    psam_cert, header_rec, header_sig = p.blob("psam_certificate"), p.blob("header", 128), p.blob("header_signature", 80)
    cert, key = bank.check_card_cert(psam_cert, ROLE_PSAM)
    try:
        key.verify(header_sig, header_rec, _ECDSA)
        header = BatchHeader.decode(header_rec)
    except (InvalidSignature, ValueError):
        raise BankRefusal("bad_signature", "the PSAM's signature on the batch header does not verify", 401) from None
    except TransportError:
        raise BankRefusal("malformed", "the batch header is not a BAT1 record") from None
    psam = header.psam_id.hex().upper()
    if _serial(cert) != psam:
        raise BankRefusal("bad_certificate", "the PSAM certificate is for another PSAM", 401)
    certs = [_unb64(c, "certificate", 4096) for c in p.items("certificates", MAX_BATCH)] if header.count else []
    raw_entries = p.items("entries", MAX_BATCH) if header.count else []
    if len(raw_entries) != header.count:
        raise BankRefusal("batch_mismatch", f"the header counts {header.count} entries, {len(raw_entries)} were sent")
    entries: list[tuple[bytes, bytes, bytes]] = []
    for e in raw_entries:
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], int) and not isinstance(e[0], bool)
                and 0 <= e[0] < len(certs)):
            raise BankRefusal("malformed", "each entry is [certificate index, proof, signature]")
        entries.append((certs[e[0]], _unb64(e[1], "proof", 128), _unb64(e[2], "signature", 80)))
    tlvs = [tlv.encode(0x01, c) + tlv.encode(0x02, r) + tlv.encode(0x03, s) for c, r, s in entries]
    if batch_digest(tlvs) != header.entries_digest:
        raise BankRefusal("batch_mismatch", "the entries do not hash to the digest the PSAM signed")
    for c in set(certs):                       # each card certificate once (cached for later batches)
        bank.check_card_cert(c)
    chunks = [entries[i::2] for i in range(2)] if len(entries) > 64 else [entries]
    results = list(_pool.map(lambda ch: _verify_chunk(bank, ch, header), chunks))
    proofs = [x for chunk in results for x in chunk]
    if sum(x[2] for x in proofs) != header.total:
        raise BankRefusal("batch_mismatch", "the proofs do not add up to the batch total")
    if len({(x[0], x[1]) for x in proofs}) != len(proofs):
        raise BankRefusal("proof_seen", "the batch holds the same debit proof twice", 409)
    return ClearCheck(psam, header, header_rec + header_sig, proofs)


def _unb64(v: Any, what: str, limit: int) -> bytes:
    from ..payment.errors import ProtocolError
    from ..payment.wire import unb64
    try:
        return unb64(v, what, limit)
    except ProtocolError as e:
        raise BankRefusal("malformed", str(e)) from None


def _verify_chunk(bank: Bank, chunk: list[tuple[bytes, bytes, bytes]], header: BatchHeader
                  ) -> list[tuple[str, int, int, bytes]]:
    out = []
    for cert_der, record, sig in chunk:
        try:
            proof = DebitRecord.decode(record, DEBIT_PROOF)
        except TransportError:
            raise BankRefusal("malformed", "an entry is not a DPF1 debit proof") from None
        cert, key = bank.check_card_cert(cert_der)          # cached: a dictionary look-up
        if _serial(cert) != proof.card_number.hex().upper():
            raise BankRefusal("bad_certificate", "a debit proof comes with another card's certificate", 401)
        if proof.psam_id != header.psam_id or proof.currency != header.currency or proof.amount <= 0:
            raise BankRefusal("batch_mismatch", "a debit proof is for another PSAM, currency, or no amount")
        try:
            key.verify(sig, record, _ECDSA)
        except (InvalidSignature, ValueError):
            raise BankRefusal("bad_signature", f"the debit proof of card {proof.card_number.hex().upper()} "
                                               f"#{proof.debit_counter} does not verify", 401) from None
        out.append((proof.card_number.hex().upper(), proof.debit_counter, proof.amount, record + sig))
    return out


def apply_clear(bank: Bank, tx: Transaction, sender: Sender, c: ClearCheck) -> dict[str, Any]:
    row = tx.one("SELECT account, currency FROM psams WHERE psam = ?", (c.psam,))
    if row is None:
        raise BankRefusal("unknown_psam", f"PSAM {c.psam} is not registered with this acquirer", 404)
    acc = bank.owned_account(tx, row[0], sender)
    if c.header.currency != acc.currency:
        raise BankRefusal("currency_mismatch", "the batch's currency is not the seller account's", 422)
    if tx.one("SELECT number FROM batches WHERE psam = ? AND number = ?", (c.psam, c.header.batch_number)):
        raise BankRefusal("batch_seen", f"batch {c.header.batch_number} of PSAM {c.psam} was cleared before", 409)
    per_card: dict[str, int] = {}
    for card, counter, amount, _ in c.proofs:
        if tx.one("SELECT batch FROM proofs WHERE card = ? AND counter = ?", (card, counter)):
            raise BankRefusal("proof_seen", f"the debit proof of card {card} #{counter} was cleared before", 409)
        per_card[card] = per_card.get(card, 0) + amount
    for card, amount in per_card.items():
        shadow = tx.one("SELECT shadow, currency FROM cards WHERE card = ?", (card,))
        if shadow is None:
            raise BankRefusal("unknown_card", f"card {card} in the batch is not issued by this bank", 422)
        if shadow[0] < amount:
            raise BankRefusal("exceeds_shadow", f"card {card} paid {amount} but its issuer loaded only {shadow[0]} "
                                                "not yet cleared: value that was never loaded", 409)
    entry = ""
    if c.header.total:
        entry = store.post(tx, "purse-clearing", f"{c.psam}/{c.header.batch_number}",
                           [(store.system_account("float", acc.currency), -c.header.total), (acc.id, c.header.total)])
    tx.execute("INSERT INTO batches (psam, number, count, total, header, entry, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (c.psam, c.header.batch_number, c.header.count, c.header.total, c.header_blob.hex(), entry,
                store.now_iso()))
    for card, counter, amount, blob in c.proofs:
        tx.execute("INSERT INTO proofs (card, counter, psam, batch, amount, proof) VALUES (?, ?, ?, ?, ?, ?)",
                   (card, counter, c.psam, c.header.batch_number, amount, blob.hex()))
    for card, amount in per_card.items():
        tx.execute("UPDATE cards SET shadow = shadow - ? WHERE card = ?", (amount, card))
    return {"psam": c.psam, "batch": c.header.batch_number, "count": c.header.count, "total": c.header.total,
            "account": acc.id}


OPS = [Op("issuer/load", check_load, apply_load), Op("issuer/confirm", check_confirm, apply_confirm),
       Op("acquirer/clear", check_clear, apply_clear)]
