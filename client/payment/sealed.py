"""Hybrid encryption to an RSA key whose private half is in a token (the bank's, a wallet's):
a fresh AES-256-GCM key wrapped with RSA-OAEP (the parameters SoftHSM2 supports: ``hsm.rsa.OAEP``)."""
from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa

from semper.hsm.rsa import OAEP


def seal(pub: rsa.RSAPublicKey, plaintext: bytes, aad: bytes = b"") -> dict[str, str]:
    """Hybrid encryption to an RSA key: a fresh AES-256-GCM key, wrapped with RSA-OAEP."""
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from .wire import b64
    key, nonce = os.urandom(32), os.urandom(12)
    return {"wrapped": b64(pub.encrypt(key, OAEP)), "nonce": b64(nonce),
            "ciphertext": b64(AESGCM(key).encrypt(nonce, plaintext, aad))}


def open_sealed(unwrap: Callable[[bytes], bytes], sealed: object, aad: bytes = b"") -> bytes:
    """Reverse of :func:`seal`; ``unwrap(wrapped) -> AES key`` is the token's RSA-OAEP decryption."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from .errors import ProtocolError
    from .wire import unb64
    if not isinstance(sealed, dict) or set(sealed) != {"wrapped", "nonce", "ciphertext"}:
        raise ProtocolError("a sealed value has wrapped, nonce and ciphertext")
    key = unwrap(unb64(sealed["wrapped"], "wrapped key", 1024))
    if len(key) != 32:
        raise ProtocolError("the wrapped key is not an AES-256 key")
    try:
        return AESGCM(key).decrypt(unb64(sealed["nonce"], "nonce", 12), unb64(sealed["ciphertext"], "ciphertext"), aad)
    except (InvalidTag, ValueError):
        raise ProtocolError("the sealed value was altered or is for another key") from None
