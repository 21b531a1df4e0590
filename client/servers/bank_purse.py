"""The purse scheme at the bank: the issuer (loads, shadow balances) and the acquirer (clearing).

Every decision below is taken on a card-signed record that proves it, checked against the card's
certificate *as linked* (``semper bank link-card``): the same public key, not merely a certificate
under the scheme root naming the same card number, which whoever can have a key certified under
another card's number could present (issue 12, item 3).

Issuer. A load is paid from the card holder's account to the purse float when the issuer signs the
``LCM1`` for the card's signed ``LRQ2`` (made on the card after its PIN). Whether the card then
applied it is learned from the card itself: its ``LCF1`` confirmation, or its next ``LRQ2``. Every
request carries the card's load request *sequence number*; the card keeps one pending request and
INITIALIZE LOAD replaces it, so

* a request for a *higher* load counter proves the earlier load applied;
* a request for the *same* counter with a higher sequence number proves the card replaced the
  earlier request, whose command therefore can never apply: only then is the earlier load reversed
  (the money goes back to the account) and the request that proved it recorded with it;
* a request whose sequence number is not above every one seen from the card is refused
  (``stale_request``): the card has replaced it already. Before the sequence number, a holder could
  keep a small request back, have a large one applied, withhold the confirmation and present the
  small one, which reversed the large load while the card kept its value (item 1).

The shadow balance of a card is the loads not reversed minus the debits cleared.

Acquirer. A seller clears a closed PSAM batch: the PSAM-signed ``BAT1`` header and every entry
(card certificate, ``DPF1``, card signature). The batch as a whole must be what the PSAM signed
(header signature, PSAM id, entries digest, count, total, currency, a PSAM linked to the sender's
account); if not, it is refused and nothing is kept, so it can be sent again. Within an authentic
batch every proof is decided on its own: proofs that check (linked certificate, signature, PSAM,
currency, never cleared before, within the card's shadow balance) are paid, the others are *held*:
kept with their reason as evidence for the dispute and not paid. The batch is recorded either way,
so one bad proof never blocks the good ones and a batch is settled once (items 1 and 2).

``acquirer/clear_proof`` clears one proof on its own, with the PSAM-signed ``DRQ1`` it answers: for a
proof the PSAM can no longer take, e.g. the one the third party kept for the seller after the PSAM
evicted the request (item 10). Batches and single proofs are deduplicated by card and debit
counter, so a debit is paid at most once however it arrives.

Verification runs in threads (the ``cryptography`` library releases the GIL), card certificates are
checked once and cached, and so are the linked keys (a card is linked once and for good).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from msgspec import Meta

from semper.hardware import tlv
from semper.hardware.errors import TransportError
from semper.hardware.purse_records import (
    DEBIT_PROOF,
    DEBIT_REQUEST,
    LOAD_COMMAND_SIZE,
    BatchHeader,
    DebitRecord,
    LoadConfirmation,
    LoadRequest,
)

from ..payment.wire import b64, unb64
from ..support.db import Transaction
from ..support.scheme import ROLE_PSAM
from ..support.shapes import Shape
from . import bank_store as store
from .bank_store import AccountId, BankRefusal, Certificate, Op, Record, Signature

if TYPE_CHECKING:
    from .bank import Bank, Sender

MAX_BATCH = 5000
_ECDSA = ec.ECDSA(hashes.SHA256())
_pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="semper-clearing")


def _serial(cert: Any) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return str(attrs[0].value).upper() if attrs else ""


def _point(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))


def _card_signed(bank: Bank, cert_der: bytes, record: bytes, signature: bytes, card_number: bytes) -> bytes:
    """Check a card record against the certificate sent with it; returns the certificate's public point
    (compared with the linked certificate's in the ``apply`` phase, which reads the database)."""
    cert, key = bank.check_card_cert(cert_der)
    if _serial(cert) != card_number.hex().upper():
        raise BankRefusal("bad_certificate", "the card certificate is for another card", 401)
    try:
        key.verify(signature, record, _ECDSA)
    except (InvalidSignature, ValueError):
        raise BankRefusal("bad_signature", "the card's signature on its record does not verify", 401) from None
    return _point(key)


def linked_point(bank: Bank, tx: Transaction, card: str) -> bytes | None:
    """The public point of the certificate recorded when ``card`` was linked (None: not linked here).
    Cached: a card is linked once and never re-linked."""
    hit = bank.linked_points.get(card)
    if hit is None:
        row = tx.one("SELECT certificate FROM cards WHERE card = ?", (card,))
        if row is None:
            return None
        cert = x509.load_der_x509_certificate(unb64(row[0], "linked card certificate", 8192))
        hit = bank.linked_points[card] = _point(cert.public_key())
    return hit


def _not_linked(card: str) -> str:
    return (f"the certificate presented for card {card} is not the one linked to that card at this issuer "
            "(another key certified under its card number); refused")


def _require_linked(bank: Bank, tx: Transaction, card: str, point: bytes) -> None:
    linked = linked_point(bank, tx, card)
    if linked is None:
        raise BankRefusal("unknown_card", f"card {card} is not issued by this bank; link it first", 404)
    if linked != point:
        raise BankRefusal("certificate_not_linked", _not_linked(card), 401)


# ---- issuer: load -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadCheck:
    account: str
    request: LoadRequest
    blob: bytes
    cert: bytes
    point: bytes


class Load(Shape, frozen=True):
    """``issuer/load``: the card's signed LRQ2 and the account that pays for it."""

    account: AccountId
    request: Annotated[bytes, Meta(min_length=1, max_length=256)]
    signature: Signature
    card_certificate: Certificate


def check_load(bank: Bank, sender: Sender, p: Load) -> LoadCheck:
    account, record, sig, cert = p.account, p.request, p.signature, p.card_certificate
    try:
        req = LoadRequest.decode(record)
    except TransportError:
        raise BankRefusal("malformed", "the load request is not an LRQ2 record (a card signs LRQ2 since its "
                                       "requests carry a sequence number)") from None
    point = _card_signed(bank, cert, record, sig, req.card_number)
    if req.amount <= 0:
        raise BankRefusal("bad_amount", "the load amount must be positive")
    return LoadCheck(account, req, record + sig, cert, point)


def apply_load(bank: Bank, tx: Transaction, sender: Sender, c: LoadCheck) -> dict[str, Any]:
    r = c.request
    card = r.card_number.hex().upper()
    row = tx.one("SELECT account, currency FROM cards WHERE card = ?", (card,))
    if row is None:
        raise BankRefusal("unknown_card", f"card {card} is not issued by this bank; link it first", 404)
    _require_linked(bank, tx, card, c.point)
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
        return {"command": b64(cmd[:LOAD_COMMAND_SIZE]), "signature": b64(cmd[LOAD_COMMAND_SIZE:]), "card": card,
                "counter": r.load_counter}
    top = int((tx.one("SELECT MAX(sequence) FROM load_requests WHERE card = ?", (card,)) or (None,))[0] or 0)
    if r.sequence <= top:
        raise BankRefusal("stale_request", f"card {card} has signed a newer load request (number {top}) than this "
                                           f"one (number {r.sequence}); the card replaced this request, so its load "
                                           "could never apply. Start the load again on the card", 409)
    newer = tx.one("SELECT counter FROM loads WHERE card = ? AND (counter > ? OR (counter = ? AND state = "
                   "'confirmed'))", (card, r.load_counter, r.load_counter))
    if newer is not None:
        raise BankRefusal("stale_load", f"card {card} has already loaded with counter {newer[0]}; this request "
                                        "is old", 409)
    for counter, nonce, amount, _state, _entry in tx.all(
            "SELECT counter, nonce, amount, state, entry FROM loads WHERE card = ? AND state = 'pending'", (card,)):
        if counter < r.load_counter:           # the card moved past it: it applied
            tx.execute("UPDATE loads SET state = 'confirmed' WHERE card = ? AND counter = ? AND nonce = ?",
                       (card, counter, nonce))
            continue
        # same counter, and this request is newer (its sequence number is above every one seen): the
        # card replaced that request by this one, so its command can never apply; give the money back
        rev = store.post(tx, "purse-load-reversal", f"{card}/{counter}",
                         [(store.system_account("float", r.currency), -amount), (c.account, amount)],
                         f"card request {r.sequence} for the same load counter replaced this one on the card, "
                         "so the load never applied")
        tx.execute("UPDATE loads SET state = 'reversed', reversal = ? WHERE card = ? AND counter = ? AND nonce = ?",
                   (rev, card, counter, nonce))
        tx.execute("UPDATE load_requests SET replaced_by = ? WHERE card = ? AND counter = ? AND nonce = ?",
                   (r.nonce.hex(), card, counter, nonce))
        if tx.execute("UPDATE cards SET shadow = shadow - ? WHERE card = ? AND shadow >= ?",
                      (amount, card, amount)).rowcount != 1:
            raise BankRefusal("conservation", f"reversing load {card}#{counter} would take the card's shadow balance "
                                              "below zero: its value was spent, so it did apply", 409)
    entry = store.post(tx, "purse-load", f"{card}/{r.load_counter}",
                       [(c.account, -r.amount), (store.system_account("float", r.currency), r.amount)])
    command = r.command()
    signature = bank.keys.sign_digest(hashlib.sha256(command).digest())
    tx.execute("INSERT INTO loads (card, counter, nonce, amount, currency, state, request, command, confirmation, "
               "entry, reversal, at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, NULL, ?, NULL, ?)",
               (card, r.load_counter, r.nonce.hex(), r.amount, r.currency, c.blob.hex(), (command + signature).hex(),
                entry, store.now_iso()))
    tx.execute("INSERT INTO load_requests (card, counter, nonce, sequence, replaced_by) VALUES (?, ?, ?, ?, NULL)",
               (card, r.load_counter, r.nonce.hex(), r.sequence))
    tx.execute("UPDATE cards SET shadow = shadow + ? WHERE card = ?", (r.amount, card))
    return {"command": b64(command), "signature": b64(signature), "card": card, "counter": r.load_counter}


@dataclass(frozen=True)
class ConfirmCheck:
    confirmation: LoadConfirmation
    blob: bytes
    point: bytes


class Confirm(Shape, frozen=True):
    """``issuer/confirm``: the card's signed LCF1."""

    confirmation: Annotated[bytes, Meta(min_length=1, max_length=256)]
    signature: Signature
    card_certificate: Certificate


def check_confirm(bank: Bank, sender: Sender, p: Confirm) -> ConfirmCheck:
    record, sig, cert = p.confirmation, p.signature, p.card_certificate
    try:
        conf = LoadConfirmation.decode(record)
    except TransportError:
        raise BankRefusal("malformed", "the confirmation is not an LCF1 record") from None
    point = _card_signed(bank, cert, record, sig, conf.card_number)
    return ConfirmCheck(conf, record + sig, point)


def apply_confirm(bank: Bank, tx: Transaction, sender: Sender, c: ConfirmCheck) -> dict[str, Any]:
    conf = c.confirmation
    card = conf.card_number.hex().upper()
    row = tx.one("SELECT l.state, l.amount, k.account FROM loads l JOIN cards k ON k.card = l.card "
                 "WHERE l.card = ? AND l.counter = ? AND l.nonce = ?", (card, conf.load_counter, conf.nonce.hex()))
    if row is None:
        raise BankRefusal("unknown_load", "this issuer approved no such load", 404)
    _require_linked(bank, tx, card, c.point)
    bank.owned_account(tx, row[2], sender)
    if row[0] == "reversed":
        raise BankRefusal("load_reversed", "this load was reversed because the card replaced it; a confirmation "
                                           "for it means the card misbehaves", 409)
    tx.execute("UPDATE loads SET state = 'confirmed', confirmation = ? WHERE card = ? AND counter = ? AND nonce = ?",
               (c.blob.hex(), card, conf.load_counter, conf.nonce.hex()))
    return {"card": card, "counter": conf.load_counter, "state": "confirmed", "balance": conf.balance}


# ---- acquirer: clearing -------------------------------------------------------------------------
@dataclass
class Entry:
    """One batch entry as the acquirer judged it; ``fault`` = (code, reason) when it is not paid."""

    index: int
    cert: bytes
    record: bytes
    signature: bytes
    card: str = ""
    counter: int = -1
    amount: int = 0
    point: bytes = b""
    fault: tuple[str, str] | None = None

    @property
    def blob(self) -> bytes:
        return self.record + self.signature


@dataclass(frozen=True)
class ClearCheck:
    psam: str
    header: BatchHeader
    header_blob: bytes
    entries: list[Entry]


def batch_digest(entries: list[bytes]) -> bytes:
    d = bytes(32)
    for e in entries:
        d = hashlib.sha256(d + hashlib.sha256(e).digest()).digest()
    return d


def _psam_signed(bank: Bank, cert_der: bytes, record: bytes, signature: bytes, what: str) -> Any:
    cert, key = bank.check_card_cert(cert_der, ROLE_PSAM)
    try:
        key.verify(signature, record, _ECDSA)
    except (InvalidSignature, ValueError):
        raise BankRefusal("bad_signature", f"the PSAM's signature on the {what} does not verify", 401) from None
    return cert


class Clear(Shape, frozen=True):
    """``acquirer/clear``: a closed PSAM batch: the signed BAT1 header, each card certificate once, and the
    entries ``[certificate index, DPF1 proof, card signature]`` (none for an empty batch)."""

    codes = {"certificates": "malformed", "entries": "malformed"}
    psam_certificate: Certificate
    header: Record
    header_signature: Signature
    certificates: Annotated[list[Annotated[bytes, Meta(max_length=4096)]], Meta(max_length=MAX_BATCH)] = []
    entries: Annotated[list[tuple[int, Annotated[bytes, Meta(max_length=128)], Annotated[bytes, Meta(max_length=80)]]],
                       Meta(max_length=MAX_BATCH)] = []


def check_clear(bank: Bank, sender: Sender, p: Clear) -> ClearCheck:
    psam_cert, header_rec, header_sig = p.psam_certificate, p.header, p.header_signature
    cert = _psam_signed(bank, psam_cert, header_rec, header_sig, "batch header")
    try:
        header = BatchHeader.decode(header_rec)
    except TransportError:
        raise BankRefusal("malformed", "the batch header is not a BAT1 record") from None
    psam = header.psam_id.hex().upper()
    if _serial(cert) != psam:
        raise BankRefusal("bad_certificate", "the PSAM certificate is for another PSAM", 401)
    certs = p.certificates
    if len(p.entries) != header.count:
        raise BankRefusal("batch_mismatch", f"the header counts {header.count} entries, {len(p.entries)} were sent")
    entries: list[Entry] = []
    for i, (index, proof, signature) in enumerate(p.entries):
        if not 0 <= index < len(certs):
            raise BankRefusal("malformed", f"entry {i} names certificate {index}; {len(certs)} were sent")
        entries.append(Entry(i, certs[index], proof, signature))
    tlvs = [tlv.encode(0x01, e.cert) + tlv.encode(0x02, e.record) + tlv.encode(0x03, e.signature) for e in entries]
    if batch_digest(tlvs) != header.entries_digest:
        raise BankRefusal("batch_mismatch", "the entries do not hash to the digest the PSAM signed")
    # from here the entries are what the PSAM signed: a fault in one is that proof's, not the batch's
    keys: dict[bytes, Any] = {}
    for c in set(certs):                       # each card certificate once (cached for later batches)
        try:
            keys[c] = bank.check_card_cert(c)
        except BankRefusal as e:
            keys[c] = ("bad_certificate", str(e))
    chunks = [entries[i::2] for i in range(2)] if len(entries) > 64 else [entries]
    list(_pool.map(lambda ch: _verify_chunk(ch, header, keys), chunks))
    if sum(e.amount for e in entries) != header.total:
        raise BankRefusal("batch_mismatch", "the proofs do not add up to the batch total")
    return ClearCheck(psam, header, header_rec + header_sig, entries)


def _verify_chunk(chunk: list[Entry], header: BatchHeader, keys: dict[bytes, Any]) -> None:
    """Fill in each entry's fields, or its fault (a proof the PSAM signed into the batch but that does
    not check here is held, not paid; it does not stop the others)."""
    for e in chunk:
        try:
            proof = DebitRecord.decode(e.record, DEBIT_PROOF)
        except TransportError:
            e.fault = ("malformed", "the entry is not a DPF1 debit proof")
            continue
        e.card, e.counter, e.amount = proof.card_number.hex().upper(), proof.debit_counter, proof.amount
        hit = keys[e.cert]
        if isinstance(hit[0], str):
            e.fault = hit
            continue
        cert, key = hit
        if _serial(cert) != e.card:
            e.fault = ("bad_certificate", "the debit proof comes with another card's certificate")
        elif proof.psam_id != header.psam_id or proof.currency != header.currency or proof.amount <= 0:
            e.fault = ("batch_mismatch", "the debit proof is for another PSAM, currency, or no amount")
        else:
            try:
                key.verify(e.signature, e.record, _ECDSA)
                e.point = _point(key)
            except (InvalidSignature, ValueError):
                e.fault = ("bad_signature", f"the debit proof of card {e.card} #{e.counter} does not verify")


def _cleared_where(tx: Transaction, card: str, counter: int) -> str | None:
    row = tx.one("SELECT psam, batch FROM proofs WHERE card = ? AND counter = ?", (card, counter))
    if row is None:
        return None
    return f"alone, for PSAM {row[0]}" if int(row[1]) == 0 else f"in batch {row[1]} of PSAM {row[0]}"


class _Shadows:
    """What each card may still be paid in this transaction: its shadow balance less what was taken."""

    def __init__(self, bank: Bank, tx: Transaction, currency: int) -> None:
        self.bank, self.tx, self.currency = bank, tx, currency
        self.left: dict[str, int] = {}
        self.rows: dict[str, Any] = {}

    def fault(self, card: str, counter: int, amount: int, point: bytes, blob: bytes) -> tuple[str, str] | None:
        where = _cleared_where(self.tx, card, counter)
        if where is not None:
            return "proof_seen", f"the debit proof of card {card} #{counter} was cleared before ({where})"
        held = self.tx.one("SELECT psam, batch, code FROM held_proofs WHERE card = ? AND counter = ? AND proof = ?",
                           (card, counter, blob.hex()))
        if held is not None:                   # this very proof was settled: evidence, not payable later
            return "proof_held", (f"the debit proof of card {card} #{counter} was held in batch {held[1]} of PSAM "
                                  f"{held[0]} ({held[2]}); it is evidence for a dispute, not payable now")
        if card not in self.rows:
            self.rows[card] = self.tx.one("SELECT shadow, currency FROM cards WHERE card = ?", (card,))
        row = self.rows[card]
        if row is None:
            return "unknown_card", f"card {card} is not issued by this bank"
        if linked_point(self.bank, self.tx, card) != point:
            return "certificate_not_linked", _not_linked(card)
        if int(row[1]) != self.currency:
            return "currency_mismatch", f"card {card} holds another currency"
        left = self.left.setdefault(card, int(row[0]))
        if amount > left:
            return "exceeds_shadow", (f"card {card} paid {amount} (#{counter}) but its issuer loaded only {left} "
                                      "not yet cleared: value that was never loaded")
        self.left[card] = left - amount
        return None

    def take(self, tx: Transaction) -> None:
        for card, left in self.left.items():
            tx.execute("UPDATE cards SET shadow = ? WHERE card = ?", (left, card))


def apply_clear(bank: Bank, tx: Transaction, sender: Sender, c: ClearCheck) -> dict[str, Any]:
    row = tx.one("SELECT account, currency FROM psams WHERE psam = ?", (c.psam,))
    if row is None:
        raise BankRefusal("unknown_psam", f"PSAM {c.psam} is not registered with this acquirer", 404)
    acc = bank.owned_account(tx, row[0], sender)
    if c.header.currency != acc.currency:
        raise BankRefusal("currency_mismatch", "the batch's currency is not the seller account's", 422)
    if tx.one("SELECT number FROM batches WHERE psam = ? AND number = ?", (c.psam, c.header.batch_number)):
        raise BankRefusal("batch_seen", f"batch {c.header.batch_number} of PSAM {c.psam} was cleared before", 409)
    shadows = _Shadows(bank, tx, acc.currency)
    seen: set[tuple[str, int]] = set()
    paid: list[Entry] = []
    for e in sorted(c.entries, key=lambda e: (e.card, e.counter, e.index)):    # a card's proofs in counter order
        if e.fault is None and (e.card, e.counter) in seen:
            e.fault = ("proof_seen", f"the batch holds the debit proof of card {e.card} #{e.counter} twice")
        if e.fault is None:
            seen.add((e.card, e.counter))
            e.fault = shadows.fault(e.card, e.counter, e.amount, e.point, e.blob)
        if e.fault is None:
            paid.append(e)
    held = [e for e in c.entries if e.fault is not None]
    total = sum(e.amount for e in paid)
    entry = ""
    if total:
        entry = store.post(tx, "purse-clearing", f"{c.psam}/{c.header.batch_number}",
                           [(store.system_account("float", acc.currency), -total), (acc.id, total)])
    now = store.now_iso()
    tx.execute("INSERT INTO batches (psam, number, count, total, header, entry, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (c.psam, c.header.batch_number, c.header.count, c.header.total, c.header_blob.hex(), entry, now))
    for e in paid:
        tx.execute("INSERT INTO proofs (card, counter, psam, batch, amount, proof) VALUES (?, ?, ?, ?, ?, ?)",
                   (e.card, e.counter, c.psam, c.header.batch_number, e.amount, e.blob.hex()))
    for e in held:
        assert e.fault is not None
        tx.execute("INSERT INTO held_proofs (psam, batch, idx, card, counter, amount, code, reason, certificate, "
                   "proof, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (c.psam, c.header.batch_number, e.index, e.card, e.counter, e.amount, e.fault[0], e.fault[1],
                    b64(e.cert), e.blob.hex(), now))
    shadows.take(tx)
    return {"psam": c.psam, "batch": c.header.batch_number, "count": c.header.count, "total": total,
            "batch_total": c.header.total, "paid": len(paid), "account": acc.id,
            "held": [{"index": e.index, "card": e.card, "counter": e.counter, "amount": e.amount,
                      "code": e.fault[0], "reason": e.fault[1]} for e in held if e.fault is not None]}


# ---- acquirer: one proof on its own -------------------------------------------------------------
_SINGLE_STATUS = {"proof_seen": 409, "proof_held": 409, "exceeds_shadow": 409, "unknown_card": 422,
                  "certificate_not_linked": 401}


@dataclass(frozen=True)
class SingleCheck:
    psam: str
    psam_cert: bytes
    request: bytes                  # DRQ1 || PSAM signature
    proof: DebitRecord
    entry: Entry


class ClearProof(Shape, frozen=True):
    """``acquirer/clear_proof``: one card's DPF1 proof with the PSAM-signed DRQ1 it answers."""

    psam_certificate: Certificate
    request: Record
    request_signature: Signature
    card_certificate: Certificate
    proof: Record
    proof_signature: Signature


def check_clear_proof(bank: Bank, sender: Sender, p: ClearProof) -> SingleCheck:
    psam_cert, req, req_sig = p.psam_certificate, p.request, p.request_signature
    card_cert, record, sig = p.card_certificate, p.proof, p.proof_signature
    cert = _psam_signed(bank, psam_cert, req, req_sig, "debit request")
    try:
        drq = DebitRecord.decode(req, DEBIT_REQUEST)
        dpf = DebitRecord.decode(record, DEBIT_PROOF)
    except TransportError:
        raise BankRefusal("malformed", "expected the PSAM's DRQ1 request and the card's DPF1 proof") from None
    if _serial(cert) != drq.psam_id.hex().upper():
        raise BankRefusal("bad_certificate", "the PSAM certificate is for another PSAM", 401)
    if dpf.encode()[4:] != drq.encode()[4:]:
        raise BankRefusal("proof_mismatch", "the debit proof does not answer this PSAM request", 422)
    if dpf.amount <= 0:
        raise BankRefusal("bad_amount", "the debit proof is for no amount")
    point = _card_signed(bank, card_cert, record, sig, dpf.card_number)
    entry = Entry(0, card_cert, record, sig, dpf.card_number.hex().upper(), dpf.debit_counter, dpf.amount, point)
    return SingleCheck(drq.psam_id.hex().upper(), psam_cert, req + req_sig, dpf, entry)


def apply_clear_proof(bank: Bank, tx: Transaction, sender: Sender, c: SingleCheck) -> dict[str, Any]:
    row = tx.one("SELECT account, currency FROM psams WHERE psam = ?", (c.psam,))
    if row is None:
        raise BankRefusal("unknown_psam", f"PSAM {c.psam} is not registered with this acquirer", 404)
    acc = bank.owned_account(tx, row[0], sender)
    if c.proof.currency != acc.currency:
        raise BankRefusal("currency_mismatch", "the proof's currency is not the seller account's", 422)
    e = c.entry
    shadows = _Shadows(bank, tx, acc.currency)
    fault = shadows.fault(e.card, e.counter, e.amount, e.point, e.blob)
    if fault is not None:
        code, reason = fault
        raise BankRefusal(code, reason, _SINGLE_STATUS.get(code, 422))
    entry = store.post(tx, "purse-clearing", f"{c.psam}/proof/{e.card}/{e.counter}",
                       [(store.system_account("float", acc.currency), -e.amount), (acc.id, e.amount)])
    tx.execute("INSERT INTO proofs (card, counter, psam, batch, amount, proof) VALUES (?, ?, ?, 0, ?, ?)",
               (e.card, e.counter, c.psam, e.amount, e.blob.hex()))
    tx.execute("INSERT INTO single_clearings (card, counter, psam, request, psam_certificate, certificate, entry, at) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (e.card, e.counter, c.psam, c.request.hex(), b64(c.psam_cert),
                                                   b64(e.cert), entry, store.now_iso()))
    shadows.take(tx)
    return {"psam": c.psam, "card": e.card, "counter": e.counter, "total": e.amount, "account": acc.id}


OPS = [Op("issuer/load", Load, check_load, apply_load), Op("issuer/confirm", Confirm, check_confirm, apply_confirm),
       Op("acquirer/clear", Clear, check_clear, apply_clear),
       Op("acquirer/clear_proof", ClearProof, check_clear_proof, apply_clear_proof)]
