"""The card purse as a payment module (Chipper / GeldKarte style), the first externally verifiable one.

The payee's PSAM signs a debit request (DRQ1: PSAM id and sequence, the buyer's card number and
next debit counter, amount, currency, a fresh challenge); the buyer's card debits and signs a
debit proof (DPF1) with the same fields. Anyone holding the scheme root certificate can verify
the proof: the card's certificate is issued by the root for the purse-card role, the record is
signed by the card's key, and its fields equal the request's. Because the request is in the
exchange's description, and the description in its id, a proof made for one exchange cannot pass
as payment in another. The purse is *not* revocable: money once debited moves only by clearing.

Until the payment manager of issue 6 provides modules, this adapter wraps the card sessions of
``client/payment/card_purse.py``; the layers above see only the module interface.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from semper.hardware import errors as hw
from semper.hardware.purse_records import DEBIT_PROOF, DEBIT_REQUEST, DebitRecord, Signed

from ..support.scheme import ROLE_PSAM, ROLE_PURSE_CARD
from .errors import ItemMismatch, MalformedItem, PaymentFailed
from .items import b64d, b64e
from .properties import Properties

if TYPE_CHECKING:
    from semper.hardware.psam import PsamSession
    from semper.hardware.purse import PurseSession

NAME = "card-purse"


def _signed(obj: Mapping[str, Any], what: str) -> tuple[x509.Certificate, bytes, bytes]:
    if not isinstance(obj, Mapping):
        raise MalformedItem(f"the {what} must be a JSON object")
    try:
        cert = x509.load_der_x509_certificate(b64d(obj.get("certificate"), f"{what}.certificate", 4096))
    except ValueError:
        raise ItemMismatch(f"the {what}'s certificate is not X.509") from None
    return cert, b64d(obj.get("record"), f"{what}.record", 256), b64d(obj.get("signature"), f"{what}.signature", 128)


class CardPurseVerifier:
    """Verifies requests and proofs against the scheme root certificate (what the third party runs)."""

    name = NAME

    def __init__(self, root: x509.Certificate) -> None:
        self.root = root

    def properties(self) -> Properties:
        return Properties(verifiable=True, generatable=False, revocable=False)

    def _check_signed(self, cert: x509.Certificate, record: bytes, signature: bytes, role: x509.ObjectIdentifier,
                      what: str) -> str:
        try:
            cert.verify_directly_issued_by(self.root)
        except (ValueError, TypeError, InvalidSignature):
            raise ItemMismatch(f"the {what} certificate is not issued by the purse scheme root") from None
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or role not in eku:
            raise ItemMismatch(f"the {what} certificate is not issued for that role")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ItemMismatch(f"the {what} certificate holds no EC key")
        try:
            key.verify(signature, record, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ItemMismatch(f"the {what} signature does not verify: forged or altered") from None
        serial = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        return str(serial[0].value) if serial else ""

    def decode_request(self, request: Mapping[str, Any]) -> DebitRecord:
        cert, record, signature = _signed(request, "payment request")
        psam_serial = self._check_signed(cert, record, signature, ROLE_PSAM, "PSAM")
        try:
            drq = DebitRecord.decode(record, DEBIT_REQUEST)
        except hw.TransportError:
            raise ItemMismatch("the payment request is not a DRQ1 debit request") from None
        if psam_serial != drq.psam_id.hex().upper():
            raise ItemMismatch("the debit request is signed by another PSAM than the one it names")
        return drq

    def verify(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int) -> None:
        drq = self.decode_request(request)
        cert, record, signature = _signed(proof, "debit proof")
        card_serial = self._check_signed(cert, record, signature, ROLE_PURSE_CARD, "purse card")
        try:
            dpf = DebitRecord.decode(record, DEBIT_PROOF)
        except hw.TransportError:
            raise ItemMismatch("the payment proof is not a DPF1 debit proof") from None
        if card_serial != dpf.card_number.hex().upper():
            raise ItemMismatch("the debit proof is signed by another card than the one it names")
        if (dpf.psam_id, dpf.psam_sequence, dpf.card_number, dpf.debit_counter, dpf.amount, dpf.currency,
                dpf.challenge) != (drq.psam_id, drq.psam_sequence, drq.card_number, drq.debit_counter, drq.amount,
                                   drq.currency, drq.challenge):
            raise ItemMismatch("the debit proof answers another request than the one agreed in this exchange")
        if (dpf.amount, dpf.currency) != (amount, currency):
            raise ItemMismatch(f"the debit proof is for {dpf.amount} (currency {dpf.currency}), "
                               f"the exchange is for {amount} (currency {currency})")


class CardPursePayer(CardPurseVerifier):
    """The buyer's side: the card in a reader (or in process), one debit at a time."""

    def __init__(self, root: x509.Certificate, purse: PurseSession) -> None:
        super().__init__(root)
        self.purse = purse
        self._lock = threading.Lock()

    def payer_hint(self) -> dict[str, Any]:
        with self._lock:
            info = self.purse.info()
        return {"card_number": info.card_id, "next_counter": info.debit_counter + 1, "currency": info.currency}

    def check_request(self, request: Mapping[str, Any], amount: int, currency: int) -> None:
        drq = self.decode_request(request)
        with self._lock:
            info = self.purse.info()
        if drq.card_number != info.card_number:
            raise ItemMismatch("the payment request is for another card")
        if (drq.amount, drq.currency) != (amount, currency):
            raise ItemMismatch(f"the payment request is for {drq.amount} (currency {drq.currency}), "
                               f"not the agreed {amount} (currency {currency})")

    def pay(self, request: Mapping[str, Any], amount: int, currency: int) -> dict[str, Any]:
        self.check_request(request, amount, currency)
        cert, record, signature = _signed(request, "payment request")
        drq = DebitRecord.decode(record, DEBIT_REQUEST)
        from cryptography.hazmat.primitives.serialization import Encoding
        with self._lock:
            try:
                _proof, signed = self.purse.debit(cert.public_bytes(Encoding.DER), Signed(record, signature))
            except hw.TransportError:
                found = self.purse.find_debit_proof(drq)          # the answer was lost, maybe not the debit
                if found is None:
                    raise PaymentFailed("the card did not answer the debit and its log shows no such debit; "
                                        "nothing was paid") from None
                _proof, signed = found
            except hw.InsufficientFundsError:
                raise PaymentFailed("the purse holds less than the amount; load it first (nothing was paid)") from None
            except hw.HardwareError as e:
                raise PaymentFailed(f"the card refused the debit: {e} (nothing was paid)") from None
            card_cert = self.purse.certificate()
        return {"certificate": b64e(card_cert), "record": b64e(signed.record), "signature": b64e(signed.signature)}


Acquirer = Callable[[bytes, Signed, bytes, Signed], bool]
"""(PSAM certificate, DRQ1, card certificate, DPF1) -> cleared now (False: cleared before)."""


class CardPursePayee(CardPurseVerifier):
    """The seller's side: the PSAM signs requests and takes proofs into its batch.

    ``acquirer`` clears a proof alone with the request it answers (``PurseModule.clear_proof``
    behind the bank's ``acquirer/clear_proof``), for a proof whose request the PSAM evicted while the
    buyer waited (16 are kept open); without one such a proof is refused here, never dropped as if
    deposited, and it stays in the party's evidence to be cleared that way.
    """

    def __init__(self, root: x509.Certificate, psam: PsamSession, acquirer: Acquirer | None = None) -> None:
        super().__init__(root)
        self.psam = psam
        self.acquirer = acquirer
        self._lock = threading.Lock()

    def request(self, hint: Mapping[str, Any], amount: int, currency: int) -> dict[str, Any]:
        try:
            card_number = bytes.fromhex(str(hint.get("card_number")))
            counter = int(hint.get("next_counter"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise MalformedItem("the payer's hint needs 'card_number' (hex) and 'next_counter'") from None
        if len(card_number) != 8 or not 0 < counter < 2**32:
            raise MalformedItem("the payer's hint has a bad card number or counter")
        with self._lock:
            try:
                _drq, signed = self.psam.begin_debit(card_number, counter, amount, currency)
                cert = self.psam.certificate()
            except hw.HardwareError as e:
                raise PaymentFailed(f"the PSAM refused to request the payment: {e}") from None
        return {"certificate": b64e(cert), "record": b64e(signed.record), "signature": b64e(signed.signature)}

    def deposit(self, proof: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
        cert, record, signature = _signed(proof, "debit proof")
        from cryptography.hazmat.primitives.serialization import Encoding
        card_cert = cert.public_bytes(Encoding.DER)
        with self._lock:
            try:
                self.psam.complete_debit(card_cert, Signed(record, signature))
                return True
            except hw.ReplayError:                     # no outstanding request: taken before, or evicted
                if self.psam.find_proof(record) is not None:
                    return False
        psam_cert, req_record, req_signature = _signed(request, "payment request")
        if self.acquirer is None:
            raise PaymentFailed("the PSAM no longer holds the request this proof answers (evicted while the buyer "
                                "waited) and its batch does not hold the proof: clear it alone at the acquirer with "
                                "its request (acquirer/clear_proof)")
        return self.acquirer(psam_cert.public_bytes(Encoding.DER), Signed(req_record, req_signature), card_cert,
                             Signed(record, signature))
