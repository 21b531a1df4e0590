"""``semper audit``: recompute every balance from the ledger and the evidence, check conservation.

What is checked, and what a violation means:

* every entry balances (its postings add up to zero): otherwise money was created or destroyed;
* every account's stored balance equals the sum of its postings: otherwise a balance was edited;
* no account but ``external`` is below zero;
* per currency, customer accounts + purse float + e-cash outstanding + holds = money issued
  (cash in minus cash out, which is minus the ``external`` balance);
* the purse float equals the sum of the cards' shadow balances recomputed from the evidence
  (loads not reversed, minus cleared debit proofs); every shadow balance is >= 0 and equals the
  issuer's cached one; every load request and debit proof carries a valid signature of the card's
  *linked* certificate; every reversed load names the newer request of the same card and load
  counter that proved it never applied; every cleared batch's paid and held proofs add up to the
  total its PSAM signed, and its ledger entry pays exactly the paid ones;
* e-cash outstanding equals coins withdrawn minus coins deposited, and every deposited coin's
  signature verifies with its mint key; no serial appears twice;
* holds equal what is authorised and neither captured nor released, plus cheques reserved for fair
  exchanges and neither cashed nor returned;
* every paid cheque carries a valid drawer signature and matches its ledger entry.

Each violation names its cause so an operator knows where to look.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from semper.hardware.purse_records import LEGACY_LOAD_REQUEST, LOAD_REQUEST_SIZE, LOAD_SIZE, DebitRecord

from ..payment import blind, formats
from ..payment.errors import ProtocolError
from ..payment.wire import SignedJson, unb64
from ..support.db import Database


@dataclass(frozen=True)
class Violation:
    cause: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"cause": self.cause, "detail": self.detail}


@dataclass
class AuditReport:
    violations: list[Violation] = field(default_factory=list)
    totals: dict[int, dict[str, int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, cause: str, detail: str) -> None:
        self.violations.append(Violation(cause, detail))

    def as_dict(self) -> dict[str, Any]:
        return {"clean": not self.violations, "violations": [v.as_dict() for v in self.violations],
                "totals": {str(k): v for k, v in self.totals.items()}, "counts": self.counts}


_ECDSA = ec.ECDSA(hashes.SHA256())


def _verify(cert_der: bytes, record: bytes, sig: bytes, cache: dict[bytes, Any]) -> bool:
    key = cache.get(cert_der)
    if key is None:
        key = cache[cert_der] = x509.load_der_x509_certificate(cert_der).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):      # a card's key is P-256: anything else cannot sign
        return False
    try:
        key.verify(sig, record, _ECDSA)
        return True
    except (InvalidSignature, ValueError):
        return False


def audit(db: Database, scheme_root: x509.Certificate | None = None, *, signatures: bool = True) -> AuditReport:
    r = AuditReport()
    with db.transaction(write=False) as tx:  # one consistent snapshot of the whole ledger
        accounts = {row[0]: row for row in tx.all("SELECT id, kind, currency, balance FROM accounts")}
        sums: dict[str, int] = defaultdict(int)
        for entry, total, n in tx.all("SELECT entry, SUM(amount), COUNT(*) FROM postings GROUP BY entry"):
            if total != 0 or n < 2:
                r.add("unbalanced_entry", f"entry {entry} has {n} postings adding up to {total}")
        for acc, total in tx.all("SELECT account, SUM(amount) FROM postings GROUP BY account"):
            sums[acc] = int(total)
        r.counts["entries"] = int((tx.one("SELECT COUNT(*) FROM entries") or (0,))[0])
        for acc, (_, kind, _cur, bal) in accounts.items():
            if sums.get(acc, 0) != bal:
                r.add("balance_mismatch", f"account {acc} says {bal} but its postings add up to {sums.get(acc, 0)}")
            if kind != "external" and sums.get(acc, 0) < 0:
                r.add("negative_balance", f"{kind} account {acc} is at {sums.get(acc, 0)}")
        by_cur: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for acc, (_, kind, cur, _) in accounts.items():
            by_cur[cur]["customers" if kind == "customer" else kind] += sums.get(acc, 0)
        cash = tx.all("SELECT e.kind, a.currency, SUM(p.amount) FROM entries e JOIN postings p ON p.entry = e.id "
                      "JOIN accounts a ON a.id = p.account WHERE a.kind = 'external' GROUP BY e.kind, a.currency")
        issued: dict[int, int] = defaultdict(int)
        for kind, cur, total in cash:
            if kind not in ("cash-in", "cash-out"):
                r.add("external_moved", f"a {kind} entry touched the external account ({total})")
            issued[cur] -= int(total)
        for cur, t in by_cur.items():
            held = t["customers"] + t["float"] + t["ecash"] + t["holds"]
            r.totals[cur] = {"issued": issued[cur], "customers": t["customers"], "purse_float": t["float"],
                             "ecash_outstanding": t["ecash"], "holds": t["holds"]}
            if held != issued[cur]:
                r.add("conservation", f"currency {cur}: accounts {t['customers']} + float {t['float']} + e-cash "
                                      f"{t['ecash']} + holds {t['holds']} = {held}, but {issued[cur]} was issued")
        _purse(tx, r, by_cur, signatures)
        _ecash(tx, r, by_cur, signatures)
        _holds(tx, r, by_cur)
        _cheques(tx, r, signatures)
    return r


def _purse(tx: Any, r: AuditReport, by_cur: dict[int, dict[str, int]], signatures: bool) -> None:
    certs: dict[str, bytes] = {}
    cached: dict[str, int] = {}
    cur_of: dict[str, int] = {}
    for card, cert, recorded, cur in tx.all("SELECT card, certificate, shadow, currency FROM cards"):
        certs[card] = unb64(cert, "card certificate")
        cached[card] = int(recorded)
        cur_of[card] = int(cur)
    shadow: dict[str, int] = defaultdict(int)
    keys: dict[bytes, Any] = {}
    loads = tx.all("SELECT card, counter, nonce, amount, state, request, reversal FROM loads")
    r.counts["loads"] = len(loads)
    sequence = {(card, counter, nonce): int(q) for card, counter, nonce, q in
                tx.all("SELECT card, counter, nonce, sequence FROM load_requests")}
    replaced_by = {(card, counter, nonce): by for card, counter, nonce, by in
                   tx.all("SELECT card, counter, nonce, replaced_by FROM load_requests")}
    for card, counter, nonce, amount, state, request, reversal in loads:
        if state != "reversed":
            shadow[card] += int(amount)
        else:
            if not reversal:
                r.add("reversal_missing", f"load {card}#{counter} is marked reversed without a reversal entry")
            _reversal_proven(r, card, counter, nonce, sequence, replaced_by)
        if signatures:
            blob = bytes.fromhex(request)
            size = LOAD_SIZE if blob[:4] == LEGACY_LOAD_REQUEST else LOAD_REQUEST_SIZE
            if card not in certs or not _verify(certs[card], blob[:size], blob[size:], keys):
                r.add("bad_evidence", f"the load request {card}#{counter} has no valid card signature")
    proofs = tx.all("SELECT card, counter, amount, proof FROM proofs")
    r.counts["debit_proofs"] = len(proofs)
    for card, counter, amount, proof in proofs:
        shadow[card] -= int(amount)
        if signatures:
            blob = bytes.fromhex(proof)
            if card not in certs or not _verify(certs[card], blob[:DebitRecord.SIZE], blob[DebitRecord.SIZE:], keys):
                r.add("bad_evidence", f"the debit proof {card}#{counter} has no valid card signature")
    _batches(tx, r)
    per_cur: dict[int, int] = defaultdict(int)
    for card in set(shadow) | set(cached):
        s = shadow.get(card, 0)
        per_cur[cur_of.get(card, 0)] += s
        if s < 0:
            r.add("negative_shadow", f"card {card}: cleared debits exceed its loads by {-s}")
        if s != cached.get(card, 0):
            r.add("shadow_mismatch", f"card {card}: the issuer's shadow balance says {cached.get(card, 0)}, the "
                                     f"evidence {s}")
    for cur, t in by_cur.items():
        if t["float"] != per_cur.get(cur, 0):
            r.add("float_mismatch", f"currency {cur}: the purse float is {t['float']}, the shadow balances add up "
                                    f"to {per_cur.get(cur, 0)}")


def _reversal_proven(r: AuditReport, card: str, counter: int, nonce: str, sequence: dict[tuple[str, int, str], int],
                     replaced_by: dict[tuple[str, int, str], str | None]) -> None:
    """A reversed load must name the card's newer request for the same load counter (a higher sequence
    number): the card's own word that it replaced the reversed request. Loads from before sequence
    numbers (LRQ1, no row in load_requests) are not judged."""
    key = (card, counter, nonce)
    if key not in sequence:
        return
    by = replaced_by.get(key)
    if by is None or sequence.get((card, counter, by), -1) <= sequence[key]:
        r.add("reversal_unproven", f"load {card}#{counter} was reversed without a newer request of the card for "
                                   "the same load counter")


def _batches(tx: Any, r: AuditReport) -> None:
    """Each cleared batch: paid + held proofs = what its PSAM signed; the ledger paid the paid ones."""
    paid = {(psam, int(b)): int(t) for psam, b, t in
            tx.all("SELECT psam, batch, SUM(amount) FROM proofs WHERE batch > 0 GROUP BY psam, batch")}
    held = {(psam, int(b)): int(t) for psam, b, t in
            tx.all("SELECT psam, batch, SUM(amount) FROM held_proofs GROUP BY psam, batch")}
    posted = {entry: int(t) for entry, t in tx.all("SELECT p.entry, SUM(p.amount) FROM postings p JOIN accounts a ON "
                                                   "a.id = p.account WHERE a.kind = 'customer' GROUP BY p.entry")}
    batches = tx.all("SELECT psam, number, total, entry FROM batches")
    r.counts["batches"] = len(batches)
    for psam, number, total, entry in batches:
        key = (psam, int(number))
        p, h = paid.get(key, 0), held.get(key, 0)
        if p + h != int(total):
            r.add("batch_mismatch", f"batch {number} of PSAM {psam}: paid {p} + held {h}, but its PSAM signed {total}")
        if posted.get(entry, 0) != p:
            r.add("batch_mismatch", f"batch {number} of PSAM {psam}: the ledger paid {posted.get(entry, 0)} for "
                                    f"proofs worth {p}")
    singles = tx.all("SELECT p.card, p.counter, p.amount, s.entry FROM proofs p LEFT JOIN single_clearings s ON "
                     "s.card = p.card AND s.counter = p.counter WHERE p.batch = 0")
    for card, counter, amount, entry in singles:
        if entry is None or posted.get(entry, 0) != int(amount):
            r.add("bad_evidence", f"the debit proof {card}#{counter} was cleared alone without its request or "
                                  "ledger entry")


def _ecash(tx: Any, r: AuditReport, by_cur: dict[int, dict[str, int]], signatures: bool) -> None:
    out: dict[int, int] = defaultdict(int)
    for cur, total in tx.all("SELECT currency, SUM(total) FROM withdrawals GROUP BY currency"):
        out[cur] += int(total)
    keys: dict[str, tuple[int, rsa.RSAPublicKey]] = {}
    for kid, denom, pem in tx.all("SELECT key_id, denomination, public_pem FROM mint_keys"):
        pub = load_pem_public_key(pem.encode())
        assert isinstance(pub, rsa.RSAPublicKey)
        keys[kid] = (int(denom), pub)
    coins = tx.all("SELECT serial, key_id, denomination, currency, signature FROM spent_coins")
    r.counts["coins_deposited"] = len(coins)
    for serial, kid, denom, cur, sig in coins:
        out[cur] -= int(denom)
        if kid not in keys or keys[kid][0] != denom:
            r.add("bad_evidence", f"coin {serial[:12]}... names an unknown key or the wrong denomination")
        elif signatures:
            try:
                blind.verify(keys[kid][1], formats.coin_message(kid, serial), bytes.fromhex(sig))
            except ProtocolError:
                r.add("bad_evidence", f"coin {serial[:12]}... was credited without a valid mint signature")
    for cur, t in by_cur.items():
        if t["ecash"] != out.get(cur, 0):
            r.add("ecash_mismatch", f"currency {cur}: e-cash outstanding is {t['ecash']}, withdrawals minus deposits "
                                    f"{out.get(cur, 0)}")


def _holds(tx: Any, r: AuditReport, by_cur: dict[int, dict[str, int]]) -> None:
    held: dict[int, int] = defaultdict(int)
    for aid, amount, captured, released, refunded, cur in tx.all(
            "SELECT id, amount, captured, released, refunded, currency FROM authorisations"):
        if captured + released > amount or refunded > captured:
            r.add("authorisation_overrun", f"authorisation {aid}: captured {captured} + released {released} of "
                                           f"{amount}, refunded {refunded}")
        held[cur] += int(amount - captured - released)
    from .bank_exchange import open_reservations
    for cur, reserved in open_reservations(tx).items():        # cheques reserved for fair exchanges
        held[cur] += reserved
    for cur, t in by_cur.items():
        if t["holds"] != held.get(cur, 0):
            r.add("holds_mismatch", f"currency {cur}: holds are {t['holds']}, open authorisations and reserved "
                                    f"cheques {held.get(cur, 0)}")


def _cheques(tx: Any, r: AuditReport, signatures: bool) -> None:
    rows = tx.all("SELECT c.drawer, c.number, c.amount, c.cheque, p.amount FROM cheques c JOIN postings p ON "
                  "p.entry = c.entry AND p.account = c.drawer")
    r.counts["cheques_paid"] = len(rows)
    for drawer, number, amount, blob, posted in rows:
        if -int(posted) != int(amount):
            r.add("cheque_mismatch", f"cheque {drawer}/{number} for {amount} was posted as {-posted}")
        if signatures:
            try:
                signed = SignedJson.from_json(json.loads(blob))
                key = x509.load_der_x509_certificate(signed.certificate).public_key()
                assert isinstance(key, ec.EllipticCurvePublicKey)
                key.verify(signed.signature, signed.digest, ec.ECDSA(
                    __import__("cryptography.hazmat.primitives.asymmetric.utils", fromlist=["Prehashed"]).Prehashed(
                        hashes.SHA256())))
                if signed.body.get("amount") != amount or signed.body.get("number") != number:
                    raise ProtocolError("fields differ")
            except (ProtocolError, ValueError, InvalidSignature, AssertionError):
                r.add("bad_evidence", f"cheque {drawer}/{number} was paid without a valid drawer signature")
