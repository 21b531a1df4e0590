"""Secrets escrowed to the third party: ECIES on P-256 (ECDH, HKDF-SHA256, AES-256-GCM).

Why this makes information *generatable*: the originator encrypts the data under a fresh key K,
sends the ciphertext, and puts K sealed to the third party's escrow key into its signed proposal.
Only T can open the seal (its key is in T's token and does ECDH there), and the seal is bound to
the exchange id and to what it unlocks (the ciphertext digest) as GCM associated data: T opening
it for another exchange fails, so a seal copied into another run is worthless.

    shared = ECDH(ephemeral, T's escrow key)
    k      = HKDF-SHA256(shared, salt = xid, info = "semper-escrow/1" || ephemeral point)
    seal   = AES-256-GCM(k, nonce = 12 zero bytes, K, aad = "semper-escrow/1" || xid || context)

The zero nonce is safe because every seal has its own ephemeral key and so its own k.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import CommitmentFalse, MalformedItem
from .items import b64d, b64e

LABEL = b"semper-escrow/1"


def _kdf(shared: bytes, xid: str, eph_point: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, xid.encode(), LABEL + eph_point).derive(shared)


def _aad(xid: str, context: str) -> bytes:
    return LABEL + b"\x00" + xid.encode() + b"\x00" + context.encode()


def seal(escrow_point: bytes, secret: bytes, xid: str, context: str) -> dict[str, str]:
    """Seal ``secret`` to the escrow key for exchange ``xid``, bound to ``context`` (e.g. a ciphertext digest)."""
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), escrow_point)
    except ValueError:
        raise MalformedItem("the third party's escrow key is not a P-256 point") from None
    eph = ec.generate_private_key(ec.SECP256R1())
    eph_point = eph.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    k = _kdf(eph.exchange(ec.ECDH(), peer), xid, eph_point)
    return {"ephemeral": b64e(eph_point), "sealed": b64e(AESGCM(k).encrypt(bytes(12), secret, _aad(xid, context)))}


def open_seal(blob: Mapping[str, Any], xid: str, context: str, shared_secret: Callable[[bytes], bytes]) -> bytes:
    """Open a seal with the escrow key's ECDH (done in T's token); CommitmentFalse if it is not a seal
    for this exchange and item."""
    try:
        eph_point = b64d(blob.get("ephemeral"), "escrow.ephemeral", 200)
        sealed = b64d(blob.get("sealed"), "escrow.sealed", 4096)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), eph_point)
    except (MalformedItem, ValueError) as e:
        raise CommitmentFalse(f"the escrowed key is malformed ({e})") from None
    k = _kdf(shared_secret(eph_point), xid, eph_point)
    try:
        return AESGCM(k).decrypt(bytes(12), sealed, _aad(xid, context))
    except InvalidTag:
        raise CommitmentFalse("the escrowed key does not open with the third party's key for this "
                              "exchange (sealed for another key, exchange or item, or damaged)") from None
