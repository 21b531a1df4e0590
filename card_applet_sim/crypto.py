"""The card's crypto coprocessor: P-256 keys made on the card, ECDSA, and X.509 checks.

Private keys exist only as 32-byte scalars inside the card image; no command returns them.
Certificates are checked against a public key the issuer personalised onto the card; the role a
certificate grants (purse card, PSAM, issuer) is an extended-key-usage OID under the project's
UUID arc, so a PSAM certificate cannot pass for a card certificate or the other way round.
"""
from __future__ import annotations

import functools
import hashlib
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .sw import SW, CardError

ARC = "2.25.204673179289492764569138234192898414436"
ROLE_PURSE_CARD = x509.ObjectIdentifier(ARC + ".1.1")
ROLE_PSAM = x509.ObjectIdentifier(ARC + ".1.2")
ROLE_ISSUER = x509.ObjectIdentifier(ARC + ".1.3")
_CURVE = ec.SECP256R1()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def generate_key() -> tuple[bytes, bytes]:
    """Return (private scalar, uncompressed public point)."""
    key = ec.generate_private_key(_CURVE)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return scalar, public_point(key.public_key())


def public_point(pub: ec.EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _private(scalar: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(scalar, "big"), _CURVE)


def _public(point: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, point)
    except ValueError:
        raise CardError(SW.WRONG_DATA, "not a P-256 point") from None


def check_point(point: bytes) -> None:
    if len(point) != 65 or point[0] != 4:
        raise CardError(SW.WRONG_DATA, "expected an uncompressed P-256 point")
    _public(point)


_KEY_CACHE: dict[bytes, ec.EllipticCurvePrivateKey] = {}


def _cached_private(scalar: bytes) -> ec.EllipticCurvePrivateKey:
    """Deriving a key object from its scalar costs more than signing; keep a few (RAM only)."""
    key = _KEY_CACHE.get(scalar)
    if key is None:
        key = _private(scalar)
        if len(_KEY_CACHE) > 64:
            _KEY_CACHE.clear()
        _KEY_CACHE[scalar] = key
    return key


def sign(scalar: bytes, message: bytes) -> bytes:
    """ECDSA P-256 over SHA-256(message), DER encoded."""
    return _cached_private(scalar).sign(message, ec.ECDSA(hashes.SHA256()))


def sign_digest(scalar: bytes, digest: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    return _cached_private(scalar).sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def ecdh(scalar: bytes, peer_point: bytes) -> bytes:
    """ECDH on P-256: the x coordinate of scalar * peer point (what PIV key agreement returns)."""
    return _cached_private(scalar).exchange(ec.ECDH(), _public(peer_point))


def verify(point: bytes, message: bytes, signature: bytes) -> bool:
    try:
        _public(point).verify(signature, message, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# scrypt at the scrypt paper's interactive cost (N = 2^14, r = 8: 16 MiB and some 25 ms here), so a
# guess at a PIN verifier costs that much memory and time, not one hash.
PIN_KDF_LOG2_N = 14
PIN_KDF_R = 8
PIN_KDF_P = 1


def pin_verifier(value: bytes, salt: bytes, log2_n: int = PIN_KDF_LOG2_N, r: int = PIN_KDF_R,
                 p: int = PIN_KDF_P) -> bytes:
    """The 32-byte scrypt verifier of a PIN or PUK (RFC 7914)."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p).derive(value)


@functools.lru_cache(maxsize=256)
def check_certificate(der: bytes, issuer_point: bytes, role: x509.ObjectIdentifier) -> tuple[bytes, str]:
    """Verify a certificate against the issuer's key and role; return (subject point, serialNumber).

    Raises CardError(NOT_AUTHENTIC) when anything does not hold: the card treats a bad certificate
    exactly like a bad signature. The answer depends on the three inputs alone, so the simulator
    remembers good answers (a card could keep the hash of a checked certificate in RAM the same
    way); a bad certificate is checked, and refused, every time.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            raise CardError(SW.NOT_AUTHENTIC, "certificate is signed without a hash (not ECDSA)")
        _public(issuer_point).verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if role not in eku:
            raise CardError(SW.NOT_AUTHENTIC, "certificate is for another role")
        subject_key = cert.public_key()
        if not isinstance(subject_key, ec.EllipticCurvePublicKey):
            raise CardError(SW.NOT_AUTHENTIC, "certificate key is not EC")
        serials = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        serial = str(serials[0].value) if serials else ""
        return public_point(subject_key), serial
    except CardError:
        raise
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, x509.ExtensionNotFound, TypeError):
        raise CardError(SW.NOT_AUTHENTIC, "certificate does not verify") from None


__all__ = [
    "ROLE_PURSE_CARD", "ROLE_PSAM", "ROLE_ISSUER", "ExtendedKeyUsageOID", "generate_key", "sign",
    "verify", "check_certificate", "random_bytes", "sha256", "check_point", "pin_verifier",
]
