"""The signer protocol: what the upper layers need from a signing key, on a card or in a token.

The PIV card client implements it here; PKCS#11 tokens (``hsm/``) implement the same protocol,
so the crypto service cannot tell a card from a token. Signatures are DER-encoded ECDSA P-256.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PinStatus:
    verified: bool
    tries_left: int | None          # None when the device does not say
    blocked: bool = False


class Signer(Protocol):
    """A private key that never leaves its device, with the certificate that names its holder."""

    label: str

    def certificate(self) -> bytes:
        """The X.509 certificate (DER) for this key; NotFoundError when none is stored."""
        ...

    def public_point(self) -> bytes:
        """The uncompressed P-256 public point of the key."""
        ...

    def pin_status(self) -> PinStatus: ...

    def verify_pin(self, pin: bytes) -> None:
        """Raise WrongPinError (with tries left) or PinBlockedError on failure."""
        ...

    def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA over a SHA-256 digest computed by the caller; DER signature."""
        ...


def sign_message(signer: Signer, message: bytes) -> bytes:
    """Hash on the host (tokens and cards take a digest), sign on the device."""
    return signer.sign_digest(hashlib.sha256(message).digest())
