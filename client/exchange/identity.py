"""A party's signing identity and what it knows about its third party.

The exchange layer signs through a :class:`hardware.signer.Signer` (a token or a card) and never
opens a device itself; one lock per identity, because a token session or a card signs one digest
at a time. ``pin`` is for keys that want the PIN before every signature (PIV 9C).
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509

from ..support.cms import sign_statement
from ..support.trust import TrustStore
from ..transfer.statements import same_key
from .errors import BadMessage
from .messages import verify

if TYPE_CHECKING:
    from semper.hardware.signer import Signer


class Identity:
    def __init__(self, signer: Signer, *, pin: bytes | None = None, chain: tuple[x509.Certificate, ...] = ()
                 ) -> None:
        self.signer = signer
        self.pin = pin
        self.chain = chain
        self.certificate = x509.load_der_x509_certificate(signer.certificate())
        self._lock = threading.Lock()
        self.signatures = 0

    def sign(self, statement: Mapping[str, Any]) -> bytes:
        with self._lock:
            self.signatures += 1
            return sign_statement(self.signer, statement, extra_certs=self.chain, pin=self.pin)


@dataclass(frozen=True)
class EscrowKey:
    """The third party's escrow key as published in its signed escrow-key statement."""

    point: bytes
    key_id: str


@dataclass(frozen=True)
class TtpInfo:
    url: str
    certificate: x509.Certificate
    escrow: EscrowKey | None = None

    @classmethod
    def load(cls, url: str, certificate: x509.Certificate, escrow_statement: bytes | None, trust: TrustStore
             ) -> TtpInfo:
        """Check T's escrow-key statement (signed by T's certified key) before trusting the key in it."""
        if escrow_statement is None:
            return cls(url, certificate)
        vs = verify(escrow_statement, trust, "escrow-key statement")
        if not same_key(vs.signer, certificate) or vs.body.get("type") != "escrow-key":
            raise BadMessage("the escrow-key statement is not signed by this third party")
        try:
            point = bytes.fromhex(str(vs.body["point"]))
        except (KeyError, ValueError):
            raise BadMessage("the escrow-key statement names no point") from None
        if vs.body.get("key_id") != hashlib.sha256(point).hexdigest():
            raise BadMessage("the escrow-key statement's key id does not match its point")
        return cls(url, certificate, EscrowKey(point, str(vs.body["key_id"])))
