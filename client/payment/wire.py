"""Signed JSON: how payment messages and bank requests carry their sender's signature.

Why not CMS here: bank requests, debit-proof batches and dual signatures are checked thousands of
times a second at the acquirer; a canonical JSON body with a DER ECDSA signature over its SHA-256
and the signer's X.509 certificate is checked with one verification and no ASN.1 parsing beyond
the certificate (cached). It is still externally verifiable: anyone with the issuing root checks
it. The canonical form (UTF-8, sorted keys, no spaces, integers only) gives a body one byte form.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import threading
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from msgspec import Meta

from semper.hardware.signer import Signer

from ..support.canonical import canonical as _canonical
from ..support.shapes import Shape, ShapeError, convert
from .errors import ProtocolError

S = TypeVar("S", bound=Shape)


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value (support.canonical); floats are refused (money is in integers)."""
    return _canonical(obj, "body", ProtocolError)


def read(message: Any, shape: type[S], what: str) -> S:
    """A message of the payment layer as its shape, or a ProtocolError naming the field (support/shapes.py)."""
    try:
        return convert(message, shape, what)
    except ShapeError as e:
        raise ProtocolError(str(e)) from None


def digest(obj: Any) -> bytes:
    return hashlib.sha256(canonical(obj)).digest()


def b64(data: bytes) -> str:
    """``base64.b64encode(data).decode()``, without its wrapper (a payment step writes several)."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def unb64(text: Any, what: str, limit: int = 1 << 20) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"{what} must be base64 text")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what} is not valid base64") from None
    if len(raw) > limit:
        raise ProtocolError(f"{what} is longer than {limit} bytes")
    return raw


def point_of(cert: x509.Certificate) -> bytes:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ProtocolError("the certificate does not hold a P-256 key")
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def key_hash(point: bytes) -> str:
    """How accounts name their owner: SHA-256 of the owner's public point, hex."""
    return hashlib.sha256(point).hexdigest()


class SignedJson(Shape, frozen=True):
    """A signed JSON message, and its shape on the wire (certificate and signature as base64):
    ``read_json(request, SignedJson)`` reads one from an HTTP body, :meth:`from_json` from a value."""

    body: dict[str, Any]
    certificate: Annotated[bytes, Meta(max_length=8192)]        # DER
    signature: Annotated[bytes, Meta(max_length=80)]            # DER ECDSA over SHA-256(canonical(body))

    def to_json(self) -> dict[str, Any]:
        return {"body": self.body, "certificate": b64(self.certificate), "signature": b64(self.signature)}

    @staticmethod
    def from_json(d: Any, what: str = "the signed message") -> SignedJson:
        return read(d, SignedJson, what)

    @property
    def digest(self) -> bytes:
        return digest(self.body)


def sign(signer: Signer, body: dict[str, Any], pin: bytes | None = None) -> SignedJson:
    """Sign ``body`` on the card or token (``pin`` first when the key wants it for each signature)."""
    cert = signer.certificate()
    if pin is not None:
        signer.verify_pin(pin)
    d = digest(body)
    return SignedJson(body, cert, signer.sign_digest(d))


def sign_digest_with(signer: Signer, d: bytes, pin: bytes | None = None) -> bytes:
    if pin is not None:
        signer.verify_pin(pin)
    return signer.sign_digest(d)


class CertCache:
    """Certificates checked against trusted roots, remembered by their DER hash (RAM only).

    Checking a chain costs several times a signature verification; a bank sees the same cards and
    customers again and again, so the result (the public key object) is kept. Expiry is rechecked
    on every use; a certificate whose issuer is not a root here is refused.
    """

    def __init__(self, roots: Iterable[x509.Certificate | bytes], limit: int = 100_000) -> None:
        self.roots = [r if isinstance(r, x509.Certificate) else x509.load_der_x509_certificate(r) for r in roots]
        self._cache: dict[bytes, tuple[x509.Certificate, ec.EllipticCurvePublicKey]] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def check(self, der: bytes, *, role: x509.ObjectIdentifier | None = None, at: dt.datetime | None = None
              ) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
        h = hashlib.sha256(der).digest()
        hit = self._cache.get(h)
        if hit is None:
            hit = self._verify(der)
            with self._lock:
                if len(self._cache) >= self._limit:
                    self._cache.clear()
                self._cache[h] = hit
        cert, key = hit
        now = at or dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ProtocolError(f"the certificate of '{cert.subject.rfc4514_string()}' is not valid now")
        if role is not None:
            try:
                eku: Iterable[x509.ObjectIdentifier] = \
                    cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            except x509.ExtensionNotFound:
                eku = []
            if role not in eku:
                raise ProtocolError(f"the certificate of '{cert.subject.rfc4514_string()}' is not for this role")
        return cert, key

    def _verify(self, der: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise ProtocolError("the certificate is not DER X.509") from None
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ProtocolError("the certificate does not hold a P-256 key")
        for root in self.roots:
            if root.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(root)
                return cert, key
            except (InvalidSignature, ValueError, TypeError):
                continue
        raise ProtocolError(f"the certificate of '{cert.subject.rfc4514_string()}' is not issued by a root this "
                            f"party trusts")


def verify(signed: SignedJson, certs: CertCache, *, role: x509.ObjectIdentifier | None = None
           ) -> x509.Certificate:
    """The signer's certificate when the signature holds and the certificate is trusted; else ProtocolError."""
    cert, key = certs.check(signed.certificate, role=role)
    verify_digest(key, signed.digest, signed.signature)
    return cert


def verify_digest(key: ec.EllipticCurvePublicKey, d: bytes, signature: bytes, what: str = "signature") -> None:
    try:
        key.verify(signature, d, ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        raise ProtocolError(f"the {what} does not verify") from None
