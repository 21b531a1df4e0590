"""RSA blind signatures (RFC 9474, RSABSSA-SHA384-PSS-Deterministic) with ``cryptography`` primitives.

Why written here: no maintained Python package implements RFC 9474 (the PyPI candidates are
unmaintained or not RSA-PSS), and the parts are small: EMSA-PSS encoding (RFC 8017 9.1.1),
blinding with a random r, unblinding, and a standard RSA-PSS verification that ``cryptography``
does itself, so a finished coin is checked by an independent implementation. The signer's side is
one raw RSA private-key operation, which a PKCS#11 token does (CKM_RSA_X_509): the mint's keys
never leave its token.

The bank sees only ``blinded``; the coin (message, signature) it later sees at deposit cannot be
linked to the withdrawal, because r is uniformly random and known only to the wallet.
"""
from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import ProtocolError

HASH = hashes.SHA384()
SALT_LEN = 48


def _mgf1(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha384(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def pss_encode(message: bytes, mod_bits: int, salt: bytes | None = None) -> bytes:
    """EMSA-PSS-ENCODE with SHA-384, MGF1-SHA-384 and a 48-byte salt (RFC 8017 9.1.1)."""
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    m_hash = hashlib.sha384(message).digest()
    salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
    if em_len < len(m_hash) + len(salt) + 2:
        raise ValueError("the RSA modulus is too small for PSS with SHA-384")
    h = hashlib.sha384(b"\x00" * 8 + m_hash + salt).digest()
    db = b"\x00" * (em_len - len(salt) - len(h) - 2) + b"\x01" + salt
    masked = bytes(a ^ b for a, b in zip(db, _mgf1(h, em_len - len(h) - 1), strict=True))
    first = masked[0] & (0xFF >> (8 * em_len - em_bits))
    return bytes([first]) + masked[1:] + h + b"\xbc"


@dataclass(frozen=True)
class Blinded:
    """What the wallet keeps until the bank answers: the blinded value sent, and r^-1 to unblind."""

    message: bytes
    blinded: bytes
    inverse: int


def _k(pub: rsa.RSAPublicKey) -> int:
    return (pub.key_size + 7) // 8


def blind(pub: rsa.RSAPublicKey, message: bytes) -> Blinded:
    n, e = pub.public_numbers().n, pub.public_numbers().e
    m = int.from_bytes(pss_encode(message, pub.key_size), "big")
    if math.gcd(m, n) != 1:
        raise ValueError("message representative shares a factor with the modulus")      # negligible
    while True:
        r = secrets.randbelow(n - 2) + 2
        if math.gcd(r, n) == 1:
            break
    x = (m * pow(r, e, n)) % n
    return Blinded(message, x.to_bytes(_k(pub), "big"), pow(r, -1, n))


def blind_sign_check(pub: rsa.RSAPublicKey, blinded: bytes, blind_sig: bytes) -> None:
    """The signer's own check that its raw RSA result is right (a faulty signer must not answer)."""
    n, e = pub.public_numbers().n, pub.public_numbers().e
    if pow(int.from_bytes(blind_sig, "big"), e, n) != int.from_bytes(blinded, "big") % n:
        raise ProtocolError("the blind signature does not match the blinded message")


def finalize(pub: rsa.RSAPublicKey, b: Blinded, blind_sig: bytes) -> bytes:
    """Unblind and check: the result is an ordinary RSA-PSS signature on ``b.message``."""
    n = pub.public_numbers().n
    if len(blind_sig) != _k(pub):
        raise ProtocolError("the blind signature has the wrong length")
    s = (int.from_bytes(blind_sig, "big") * b.inverse) % n
    sig = s.to_bytes(_k(pub), "big")
    verify(pub, b.message, sig)
    return sig


def verify(pub: rsa.RSAPublicKey, message: bytes, signature: bytes) -> None:
    try:
        pub.verify(signature, message, padding.PSS(padding.MGF1(HASH), SALT_LEN), HASH)
    except (InvalidSignature, ValueError):
        raise ProtocolError("the coin's signature does not verify with the mint key") from None
