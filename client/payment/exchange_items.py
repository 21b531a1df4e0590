"""Payments in fair exchanges: each module with the exchange-enabling property it can honestly have.

The transfer layer fixes *which* property a protocol needs (gen-ver: the responder's item externally
verifiable, the originator's generatable; rev-rev: both revocable); this module says how each
payment system provides it, with the bank's half in ``client/servers/bank_exchange.py``. Every
payment made inside an exchange names it (``Binding.exchange_clause()``: the exchange id and the
third party's certificate id), so the third party's signed decision for that exchange, and nothing
else, changes what the bank does with it.

==============  ============================  ===========================================================
module          property                      how (the argument per fault: docs/exchange.md)
==============  ============================  ===========================================================
card-purse      externally verifiable         the card-signed DPF1 against the PSAM-signed DRQ1 (as before)
setpay (SET)    revocable                     the instruction names the exchange; the bank holds it until
                                              the third party's ``resolved`` (set/settle) or ``revoked``
                                              (set/revoke): one of the two, never both
cheque          verifiable and generatable    reserved at the bank first (the amount held, the bank's
                                              signed reservation); a commitment is released by the
                                              drawer, or by the third party in its place (its signed
                                              release is the generated transfer); the bank returns a
                                              *returnable* reservation only on the third party's
                                              ``expired`` (nobody resolved before the cheque's
                                              ``valid_until``, which the payee read before it gave
                                              anything)
ecash           externally verifiable         the mint's signatures, and the third party deposits the
                                              coins for the payee and this payment (mint/deposit_for):
                                              a coin spent elsewhere fails the check, one the payee
                                              deposited already answers as before
==============  ============================  ===========================================================

iKP is not offered inside exchanges: its payment is sealed to the acquirer, so nobody else can check
it, and SET already gives an account payment the revocability rev-rev needs.
"""
from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ..support.cms import EvidenceError
from ..support.trust import TrustStore
from ..support.verify import verify_statement
from ..transfer.binding import Binding
from ..transfer.errors import CommitmentFalse, ItemMismatch, MalformedItem
from ..transfer.statements import same_key
from . import formats
from .errors import PaymentError, ProtocolError
from .item import ItemVerifier, MintKeys, _same_terms, _terms, cheque_verifier, ecash_verifier
from .model import Terms
from .modules.ecash import EcashModule
from .modules.mandate import MandateModule, release_body
from .modules.setpay import SetPayModule
from .wire import CertCache, SignedJson, unb64, verify_digest

JsonDict = dict[str, Any]
MARGIN_S = 60            # a payee does not take a cheque commitment the third party may release for less long


def clause_of(b: Binding | None) -> dict[str, Any] | None:
    """The exchange clause a payment in ``b`` names; None outside a fair exchange (plain: no third party)."""
    if b is None or b.ttp is None:
        return None
    return dict(b.exchange_clause())


# ---- SET: revocable ---------------------------------------------------------------------------------------
class SetPayExchangeVerifier(ItemVerifier):
    """The dual-signed instruction, and inside a fair exchange its clause naming this exchange and its T."""

    def __init__(self, roots: list[x509.Certificate]) -> None:
        super().__init__(SetPayModule, lambda proof, terms: None)
        self.certs = CertCache(roots)

    def verify_bound(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int,
                     b: Binding | None) -> None:
        t = _terms(request)
        _same_terms(t, amount, currency)
        clause = clause_of(b)
        try:
            if proof.get("oi") != formats.order_information(t.order_hash, t.amount, t.currency, t.payment_id, t.payee,
                                                            clause):
                raise ItemMismatch("the order information does not match the requested terms"
                                   + (" and this exchange" if clause else ""))
            pi_hash = bytes.fromhex(str(proof.get("pi_hash")))
            key = self.certs.check(unb64(proof.get("payer_certificate"), "payer certificate", 4096))[1]
            verify_digest(key, formats.dual_digest(pi_hash, formats.h(proof["oi"])),
                          unb64(proof.get("dual_signature"), "dual signature", 80), "payer's dual signature")
        except ValueError:
            raise MalformedItem("the instruction's PI hash is not hex") from None
        except PaymentError as e:
            raise ItemMismatch(f"the setpay payment does not verify: {e}") from None

    def verify(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int) -> None:
        self.verify_bound(proof, request, amount, currency, None)


# ---- cheques: reserved, verifiable and generatable -----------------------------------------------------------
class ChequeExchangeVerifier(ItemVerifier):
    """Reserved cheques from public data: the drawer's and the bank's signatures (and a release by the
    drawer or by the exchange's third party). Without the bank's certificate only plain cheques check."""

    def __init__(self, roots: list[x509.Certificate], bank_certificate: bytes | None) -> None:
        self.plain = cheque_verifier(roots)
        super().__init__(MandateModule, lambda proof, terms: None)
        self.certs = CertCache(roots)
        self.trust = TrustStore(list(roots))
        self.bank_certificate = bank_certificate
        self.margin: float = MARGIN_S           # a payee's rule: how long a commitment must still be releasable

    # the pieces -------------------------------------------------------------------------------------------
    def _cheque(self, proof: Mapping[str, Any], t: Terms, b: Binding | None) -> tuple[SignedJson, x509.Certificate]:
        try:
            cheque = SignedJson.from_json(proof.get("cheque"), "the cheque")
            cert, key = self.certs.check(cheque.certificate)
            verify_digest(key, cheque.digest, cheque.signature, "drawer's signature")
        except PaymentError as e:
            raise ItemMismatch(f"the cheque does not verify: {e}") from None
        c = cheque.body
        if (c.get("payee"), c.get("amount"), c.get("currency"), c.get("order_hash")) != (t.payee, t.amount, t.currency,
                                                                                          t.order_hash):
            raise ItemMismatch("the cheque is not made out for the requested payee, amount, currency and order")
        clause = c.get("exchange")
        want = clause_of(b)
        if not isinstance(clause, Mapping) or (want is not None and (clause.get("xid"), clause.get("ttp")) != (
                want["xid"], want["ttp"])):
            raise ItemMismatch("the cheque does not name this exchange and its third party")
        self._reservation(proof, cheque)
        return cheque, cert

    def _reservation(self, proof: Mapping[str, Any], cheque: SignedJson) -> JsonDict:
        if self.bank_certificate is None:
            raise ItemMismatch("this party cannot check the bank's reservation (no bank certificate configured)")
        try:
            res = SignedJson.from_json(proof.get("reservation"), "the bank's reservation")
            if res.certificate != self.bank_certificate:
                raise ProtocolError("the reservation is not signed by the bank")
            key = x509.load_der_x509_certificate(res.certificate).public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)
            verify_digest(key, res.digest, res.signature, "bank's signature on the reservation")
        except PaymentError as e:
            raise ItemMismatch(f"the reservation does not verify: {e}") from None
        r = res.body.get("result") or {}
        c = cheque.body
        clause = c["exchange"]
        if (res.body.get("op"), r.get("drawer"), r.get("number"), r.get("amount"), r.get("payee"), r.get("xid"),
                r.get("ttp"), r.get("cheque_sha256"), r.get("returnable"), r.get("valid_until")) != (
                "cheque/reserve", c.get("drawer"), c.get("number"), c.get("amount"), c.get("payee"),
                clause.get("xid"), clause.get("ttp"), cheque.digest.hex(), bool(clause.get("returnable")),
                int(clause.get("valid_until", 0))):
            raise ItemMismatch("the bank's reservation is not for this cheque")
        return dict(r)

    def _release(self, proof: Mapping[str, Any], cheque: SignedJson, drawer: x509.Certificate,
                 b: Binding | None) -> None:
        c = cheque.body
        wanted = release_body(str(c["bank"]), str(c["drawer"]), str(c["number"]), str(c["exchange"]["xid"]))
        if proof.get("release") is not None:
            try:
                rel = SignedJson.from_json(proof.get("release"), "the release")
                cert, key = self.certs.check(rel.certificate)
                verify_digest(key, rel.digest, rel.signature, "drawer's release")
            except PaymentError as e:
                raise ItemMismatch(f"the release does not verify: {e}") from None
            if not same_key(cert, drawer) or rel.body != wanted:
                raise ItemMismatch("the release is not the drawer's release of this cheque")
            return
        if proof.get("release_statement") is not None:
            der = unb64(proof.get("release_statement"), "release statement", 64 * 1024)
            try:
                vs = verify_statement(der, self.trust)
            except EvidenceError as e:
                raise ItemMismatch(f"the third party's release does not verify: {e}") from None
            if b is None or b.ttp is None or not same_key(vs.signer, b.ttp) or vs.body != wanted:
                raise ItemMismatch("the release is not this exchange's third party's release of this cheque")
            return
        raise ItemMismatch("the cheque comes without its release: the payee could not cash it")

    # the item ---------------------------------------------------------------------------------------------
    def verify_bound(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int,
                     b: Binding | None) -> None:
        if proof.get("kind") != "reserved-cheque":              # a plain transfer's cheque, as before
            self.plain.verify(proof, request, amount, currency)
            return
        t = _terms(request)
        _same_terms(t, amount, currency)
        cheque, drawer = self._cheque(proof, t, b)
        self._release(proof, cheque, drawer, b)

    def verify(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int) -> None:
        self.verify_bound(proof, request, amount, currency, None)

    # generatable ----------------------------------------------------------------------------------------------
    def check_commitment(self, commitment: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int,
                         b: Binding, margin: float | None = None) -> None:
        t = _terms(request)
        _same_terms(t, amount, currency)
        if commitment.get("kind") != "reserved-cheque":
            raise ItemMismatch("a cheque commitment is a reserved cheque")
        cheque, _ = self._cheque(commitment, t, b)
        clause = cheque.body["exchange"]
        margin = self.margin if margin is None else margin
        if not clause.get("returnable") or int(clause.get("valid_until", 0)) < time.time() + margin:
            raise ItemMismatch("the cheque commitment may be released for too short a time (or for no time)")

    def deadline(self, commitment: Mapping[str, Any]) -> int | None:
        try:
            return int(commitment["cheque"]["body"]["exchange"]["valid_until"])
        except (KeyError, TypeError, ValueError):
            return None

    def check_release(self, proof: Mapping[str, Any], commitment: Mapping[str, Any], request: Mapping[str, Any],
                      amount: int, currency: int, b: Binding) -> None:
        if proof.get("cheque") != commitment.get("cheque") or proof.get("reservation") != commitment.get("reservation"):
            raise ItemMismatch("the released cheque is not the committed one")
        self.verify_bound(proof, request, amount, currency, b)

    def generate(self, commitment: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int,
                 b: Binding, sign: Callable[[Mapping[str, Any]], bytes]) -> JsonDict:
        """The third party's release in the drawer's place (the commitment checked again, without margin)."""
        try:
            self.check_commitment(commitment, request, amount, currency, b, margin=0)
        except (ItemMismatch, MalformedItem) as e:
            raise CommitmentFalse(f"the cheque commitment does not hold: {e}") from None
        c = commitment["cheque"]["body"]
        der = sign(release_body(str(c["bank"]), str(c["drawer"]), str(c["number"]), str(c["exchange"]["xid"])))
        return {"release_statement": base64.b64encode(der).decode()}

    def replacement_proof(self, replacement: Mapping[str, Any], commitment: Mapping[str, Any],
                          request: Mapping[str, Any], amount: int, currency: int, b: Binding) -> JsonDict:
        proof = {**dict(commitment), "release_statement": replacement.get("release_statement")}
        self.verify_bound(proof, request, amount, currency, b)
        return proof


# ---- e-cash: verifiable by depositing for the payee -------------------------------------------------------
class EcashExchangeVerifier(ItemVerifier):
    """The mint's signatures; at the third party also the deposit for the payee and this payment, so a
    coin spent elsewhere fails here (``deposit``: the third party's bank call, None elsewhere)."""

    def __init__(self, mint_keys: MintKeys, deposit: Callable[[Terms, list[Any]], None] | None = None) -> None:
        self.public = ecash_verifier(mint_keys)
        super().__init__(EcashModule, lambda proof, terms: None)
        self.deposit = deposit

    def verify_bound(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int,
                     b: Binding | None) -> None:
        self.public.verify(proof, request, amount, currency)
        if self.deposit is not None:
            try:
                self.deposit(_terms(request), list(proof.get("coins") or []))
            except PaymentError as e:
                raise ItemMismatch(f"the e-cash payment cannot be deposited for the payee: {e}") from None

    def verify(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int) -> None:
        self.verify_bound(proof, request, amount, currency, None)


def bank_deposit(bank: Any) -> Callable[[Terms, list[Any]], None]:
    """``deposit`` for :class:`EcashExchangeVerifier` through a bank client (the third party's)."""
    def deposit(terms: Terms, coins: list[Any]) -> None:
        bank.call("mint/deposit_for", {"account": terms.payee, "payment_id": terms.payment_id, "coins": coins},
                  idempotency_key=f"deposit-for-{terms.payment_id}"[:64])
    return deposit


__all__ = ["ChequeExchangeVerifier", "EcashExchangeVerifier", "MARGIN_S", "SetPayExchangeVerifier", "bank_deposit",
           "clause_of"]
