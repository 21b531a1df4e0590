"""The arbiter for a commerce deal: who owes what, from an exported evidence bundle alone.

Why from the bundle alone: a dispute is decided by someone who trusts neither party. The bundle
(``semper archive export DEAL``) is checked first as evidence (hash chain up to a signed checkpoint,
every statement's signature and certificate chain, against the judge's own CA root); then the
documents are followed link by link:

* the seller's **offer** (signed by a seller's certificate) fixes items, total, account and PSAM;
* the buyer's **order** covers the offer's digest and names the deal (the offer's, or for a *standing*
  offer, which names no deal, the bundle's); its ``confirmation`` digest must be the digest of
  the text archived as shown, and that text must re-render identically from the signed offer and
  the order (what-you-see-is-what-you-sign);
* the **payment** must prove itself: a card-signed debit proof (DPF1) to the offer's PSAM for the
  offer's total (with the purse scheme root), or the bank's signed answer for the order's terms;
* the seller's **confirmation** and **delivery note** (or registration) must be for this order; a
  delivery note listing other goods, information with another digest, or no delivery after a
  proven payment make the seller the party that owes. The confirmation is a statement of its own
  (``order-confirmation``), or the delivery note (registration) itself when it states the payment
  (one statement for both: what a shop that ships in its payment step signs); either way it counts
  only when it confirms this order's payment: the payment's id and the offer's total and currency.

Fair exchanges (information, contracts) are ruled on by the exchange layer's judge over the
exchange's own bundle; a deal bundle holding the exchange's outcome and the third party's signed
decision says so.
"""
from __future__ import annotations

import base64
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ..support.archive import verify_bundle
from ..support.cms import EvidenceError
from ..support.money import format_amount
from ..support.trust import TrustStore
from ..support.verify import VerifiedStatement, verify_statement
from ..tinguin.confirmation import digest as text_digest
from ..tinguin.confirmation import render
from ..tinguin.model import Action, ConfirmationRequest, LineItem, OfferError, Party, PaymentOption, VerifiedOffer
from ..transfer.statements import same_key
from . import documents as docs
from .deal import DealAttributes


@dataclass
class DealRuling:
    deal: str
    bundle_ok: bool
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    seller_owes: list[str] = field(default_factory=list)
    buyer_owes: list[str] = field(default_factory=list)
    ruling: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"deal": self.deal, "bundle": {"ok": self.bundle_ok, "problems": self.problems}, "facts": self.facts,
                "seller_owes": self.seller_owes, "buyer_owes": self.buyer_owes, "ruling": self.ruling}


def is_deal_bundle(path: Path) -> bool:
    """A commerce deal's bundle holds an offer statement and no exchange proposal."""
    try:
        with zipfile.ZipFile(path) as z:
            kinds = [e["kind"] for e in json.loads(z.read("manifest.json"))["entries"]]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return "statement:offer" in kinds and "statement:xchg-proposal" not in kinds


def _entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
        return [(str(e["kind"]), z.read(e["file"])) for e in manifest["entries"]]


def judge_deal(path: Path, trust: TrustStore, purse_root: x509.Certificate | None = None) -> DealRuling:
    report = verify_bundle(Path(path), trust)
    r = DealRuling(report.deal, report.ok, [p.message for p in report.problems])
    entries = _entries(Path(path))
    statements: dict[str, list[VerifiedStatement]] = {}
    blobs: dict[str, list[bytes]] = {}
    for kind, content in entries:
        if kind.startswith("statement:"):
            try:
                vs = verify_statement(content, trust)
                statements.setdefault(vs.type, []).append(vs)
            except EvidenceError as e:
                r.problems.append(f"a {kind} entry does not verify: {e}")
        else:
            blobs.setdefault(kind, []).append(content)
    for kind, label in (("offer", "offers"), ("order", "orders")):
        distinct = {vs.statement.der for vs in statements.get(kind, [])}
        if kind == "order":
            distinct |= set(blobs.get("order:unsigned", []))          # an anonymous deal's order
        if len(distinct) > 1:
            # one deal, one offer and one order: the first is ruled on, and a second is named, not passed over
            # (an order that lost the race for a deal id was archived beside the winner's before 2026-12-07)
            r.problems.append(f"the bundle holds {len(distinct)} different {label} for this deal: the first is "
                              "ruled on")
    offer_vs = next(iter(statements.get("offer", [])), None)
    if offer_vs is None or not docs.has_role(offer_vs.signer, "seller"):
        r.ruling = "no offer signed by a seller: there is no deal to rule on"
        return r
    offer = offer_vs.body
    seller = offer_vs.signer
    total, currency = int(offer["total"]), int(offer["currency"])
    r.facts["offer"] = {"seller": seller.subject.rfc4514_string(), "total": format_amount(total, currency),
                        "items": [{"sku": i["sku"], "quantity": i["quantity"]} for i in offer["items"]],
                        "workflow": offer.get("workflow")}
    offer_digest = docs.sha256_hex(offer_vs.statement.der)

    # the order, signed (or unsigned in an anonymous deal), for this offer
    order_body, order_bytes, buyer = _order(statements, blobs)
    if order_body is None or order_bytes is None:
        r.ruling = "the seller made an offer; no order followed: nobody owes anything"
        return r
    order_digest = docs.sha256_hex(order_bytes)
    r.facts["order"] = {"signed_by": buyer.subject.rfc4514_string() if buyer else "nobody (anonymous deal)",
                        "covers_offer": order_body.get("offer_sha256") == offer_digest,
                        "sha256": order_digest}
    if order_body.get("offer_sha256") != offer_digest:
        r.problems.append("the order is for another offer than the one in the bundle")
    # the deal: the one the offer was signed for, or, on a standing offer (which names none), the one the
    # order names; either way the bundle's. A standing offer serves many deals: the order ties it to this one
    standing = docs.is_standing(offer)
    deal_id = order_body.get("deal") if standing else offer.get("deal")
    r.facts["offer"]["standing"] = standing
    r.facts["order"]["names_deal"] = order_body.get("deal") == deal_id == r.deal
    if not r.facts["order"]["names_deal"]:
        r.problems.append("the order names another deal than its offer or its bundle")
    r.facts["what_you_see_is_what_you_sign"] = _wysiwys(offer_vs, str(deal_id), order_body, buyer, blobs)

    # the payment
    paid, how = _payment(blobs, offer, order_digest, purse_root)
    r.facts["payment"] = how
    refusals = [json.loads(b) for b in blobs.get("decision", []) if json.loads(b).get("verdict") == "refused"]
    if not paid:
        r.ruling = "nothing was paid under this order (or the payment does not prove itself): nobody owes anything"
        if refusals:
            r.facts["buyer_refused"] = [f"{d['step']}: {d['reason']}" for d in refusals]
        return r

    # the seller's side: confirmation and delivery (the note confirms the payment too when it states one)
    kind = "registration" if offer.get("workflow") == "registration" else "delivery"
    for_order = [vs for vs in statements.get(kind, []) if same_key(vs.signer, seller)
                 and vs.body.get("order_sha256") == order_digest]
    confirms = _confirmations(r, [*statements.get("order-confirmation", []), *for_order], seller, offer,
                              str(deal_id), order_digest, how)
    r.facts["seller_confirmed"] = bool(confirms)
    if confirms:
        r.facts["confirmed_in"] = confirms[0].type
    amount = format_amount(total, currency)
    if offer.get("workflow") in ("information", "contract"):
        r.facts["exchange"] = [json.loads(b) for b in blobs.get("exchange", [])]
        receipts = statements.get("receipt", []) + statements.get("replacement", [])
        if receipts:
            r.ruling = "the payment was exchanged fairly for the seller's item (receipt in the bundle): both fulfilled"
        else:
            r.seller_owes.append(f"its item for the payment of {amount}: rule on the exchange's own bundle")
            r.ruling = "paid in a fair exchange whose outcome is not settled here: judge the exchange bundle"
        return r
    if not for_order:
        r.seller_owes.append(f"the ordered goods (or {amount} back): it was paid and delivered nothing")
        r.ruling = "the buyer paid; the seller delivered nothing: the seller owes the goods or the money"
        return r
    wrong: list[str] = []
    notes = len({vs.statement.der for vs in for_order})
    if notes > 1:
        # one deal, one note: a seller that signed two (one confirming, one shipping other goods) is judged by
        # every one of them, not by the first archived (review of 2026-12-07)
        r.problems.append(f"the seller signed {notes} different {kind} statements for this order")
    if kind == "delivery":
        want = [{"sku": i["sku"], "quantity": i["quantity"], **({"sha256": i["sha256"]} if i.get("sha256") else {})}
                for i in offer["items"]]
        for vs in for_order:
            listed = f"its signed delivery note lists {vs.body.get('items')}, the order was for {want}"
            if vs.body.get("items") != want and listed not in wrong:
                wrong.append(listed)
        info = [i for i in offer["items"] if i.get("sha256")]
        got = blobs.get("delivered-content", [])
        if info and (not got or docs.sha256_hex(got[-1]) != info[0]["sha256"]):
            wrong.append("the information delivered does not have the digest the seller signed in its offer")
    if wrong:
        r.seller_owes += [f"the goods ordered (or {amount} back): " + w for w in wrong]
        r.ruling = "the buyer paid; the seller delivered other goods than ordered: the seller owes"
        return r
    r.ruling = "the buyer paid and the seller delivered what was ordered: both fulfilled"
    return r


def _confirmations(r: DealRuling, candidates: list[VerifiedStatement], seller: x509.Certificate,
                   offer: Mapping[str, Any], deal_id: str, order_digest: str, how: Mapping[str, Any]
                   ) -> list[VerifiedStatement]:
    """The seller's statements that confirm this order's payment: an order confirmation, or a delivery note
    (registration) stating the payment, for this deal (the offer's, or on a standing offer the order's) and
    order, whose payment is the offer's total in its currency, under the id of the payment proven (``how``).
    One that states another payment is not a confirmation: it goes in the problems (a note that states one is
    still judged for what it ships)."""
    out = []
    for vs in candidates:
        if not same_key(vs.signer, seller):
            continue
        payment = docs.confirmed_payment(vs.body, deal_id, order_digest)
        if payment is None:
            continue
        why = docs.payment_mismatch(payment, payment_id=how.get("payment_id"), amount=offer["total"],
                                    currency=offer["currency"], module=how.get("module"))
        if why is not None:
            r.problems.append(f"the seller's {vs.type} statement confirms another payment than this order's "
                              f"({why}); it is no confirmation")
            continue
        out.append(vs)
    return out


def _order(statements: Mapping[str, list[VerifiedStatement]], blobs: Mapping[str, list[bytes]]
           ) -> tuple[dict[str, Any] | None, bytes | None, x509.Certificate | None]:
    signed = [vs for vs in statements.get("order", []) if docs.has_role(vs.signer, "person")]
    if signed:
        vs = signed[0]
        return vs.body, vs.statement.der, vs.signer
    unsigned = blobs.get("order:unsigned", [])
    if unsigned:
        try:
            return json.loads(unsigned[0]), unsigned[0], None
        except ValueError:
            return None, None, None
    return None, None, None


def _wysiwys(offer_vs: VerifiedStatement, deal_id: str, order: Mapping[str, Any], buyer: x509.Certificate | None,
             blobs: Mapping[str, list[bytes]]) -> str:
    conf = order.get("confirmation") or {}
    shown = blobs.get("confirmation-text", [])
    if not shown:
        return "no confirmation text archived: cannot say what the buyer saw"
    text = shown[-1].decode("utf-8", "replace")
    if text_digest(text).hex() != conf.get("sha256"):
        return "the archived text does not have the digest the order signs: it is not what was confirmed"
    try:
        o = offer_vs.body
        module, label = str(order.get("payment")), str(conf.get("payment_label", ""))
        vo = VerifiedOffer.from_statement(
            offer_vs, offer_id=deal_id, items=[LineItem(i["description"], i["quantity"], i["unit_price"])
                                                      for i in o["items"]],
            currency=int(o["currency"]), stated_total=int(o["total"]), payment_options=[PaymentOption(module, label)],
            valid_until=docs.parse_time(o["valid_until"], "validity"))
        attrs = DealAttributes.from_dict(order.get("attributes") or {})
        request = ConfirmationRequest(vo, PaymentOption(module, label), deal_id, Action[str(conf["action"])],
                                      signer=Party.from_certificate(buyer) if buyer is not None else None,
                                      attributes=attrs.labels(),
                                      details=tuple((str(a), str(b)) for a, b in conf.get("details", [])))
        again = render(request)
    except (KeyError, ValueError, TypeError, OfferError) as e:
        return f"the digest matches the archived text; re-rendering failed ({e})"
    if again == text:
        return "the archived text re-renders identically from the signed offer and order, and its digest is signed"
    return ("the digest matches the archived text, which differs from a re-rendering now (verification facts such "
            "as revocation or time-stamps may differ)")


def _payment(blobs: Mapping[str, list[bytes]], offer: Mapping[str, Any], order_digest: str,
             purse_root: x509.Certificate | None) -> tuple[bool, dict[str, Any]]:
    for raw in blobs.get("payment", []):
        try:
            ev = json.loads(raw)
            rec = ev.get("record", ev)
            terms = rec["terms"]
        except (ValueError, KeyError, TypeError):
            continue
        out: dict[str, Any] = {"module": rec.get("module"), "status": rec.get("status"),
                               "amount": terms.get("amount"), "payment_id": terms.get("payment_id"),
                               "for_this_order": terms.get("order_hash") == order_digest}
        if terms.get("amount") != offer["total"] or terms.get("order_hash") != order_digest:
            out["proof"] = "the recorded terms are not the offer's total for this order"
            continue
        evidence = rec.get("evidence") or {}
        if rec.get("module") == "card-purse":
            ok, why = _purse_proof(evidence, ev.get("card_certificate"), offer, purse_root)
        else:
            ok, why = _bank_answer(evidence, terms)
        out["proof"] = why
        if ok:
            return True, out
        return False, out
    return False, {"proof": "no payment record"}


def _purse_proof(evidence: Mapping[str, Any], card_cert_b64: Any, offer: Mapping[str, Any],
                 purse_root: x509.Certificate | None) -> tuple[bool, str]:
    from semper.hardware.purse_records import DEBIT_PROOF, DebitRecord
    try:
        record = base64.b64decode(evidence["proof"])
        signature = base64.b64decode(evidence["proof_signature"])
        cert = x509.load_der_x509_certificate(base64.b64decode(card_cert_b64))
        dpf = DebitRecord.decode(record, DEBIT_PROOF)
    except Exception as e:                       # any malformation: the proof does not prove
        return False, f"the debit proof is incomplete or malformed ({type(e).__name__})"
    key = cert.public_key()
    try:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(signature, record, ec.ECDSA(hashes.SHA256()))
    except (AssertionError, InvalidSignature):
        return False, "the debit proof's signature does not verify with the card's certificate"
    if purse_root is not None:
        try:
            cert.verify_directly_issued_by(purse_root)
        except (ValueError, TypeError, InvalidSignature):
            return False, "the card's certificate is not issued by the purse scheme root"
    if dpf.amount != offer["total"] or (offer.get("psam") and dpf.psam_id.hex().upper() != offer["psam"]):
        return False, "the debit proof pays another amount or another PSAM than the offer names"
    checked = "scheme root checked" if purse_root is not None else "scheme root NOT checked (none given)"
    return True, f"card-signed debit proof for {dpf.amount} to the offer's PSAM {offer.get('psam')} ({checked})"


def _bank_answer(evidence: Mapping[str, Any], terms: Mapping[str, Any]) -> tuple[bool, str]:
    from ..payment.errors import PaymentError
    from ..payment.wire import SignedJson, verify_digest
    answer = evidence.get("bank_answer")
    if answer is None:
        return False, "no signed answer of the bank"
    try:
        signed = SignedJson.from_json(answer, "the bank's answer")
        key = x509.load_der_x509_certificate(signed.certificate).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        verify_digest(key, signed.digest, signed.signature, "bank's signature")
    except (PaymentError, ValueError, AssertionError) as e:
        return False, f"the bank's answer does not verify ({e})"
    result = signed.body.get("result") or {}
    state = result.get("state") or ("paid" if result.get("total") == terms.get("amount") else None)
    if state in ("paid", "captured", "authorised") or result.get("total") == terms.get("amount"):
        return True, f"the bank's signed answer: {state or 'deposited'}"
    return False, f"the bank's signed answer says {state!r}"
