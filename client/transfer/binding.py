"""What ties an item to one exchange: the exchange id, both parties and the third party.

An item that only makes sense inside one exchange (an escrowed key, a revocable statement, a
payment made against a request) names the exchange id, and its manager checks the name. That is
how a third-party answer or an item from one run cannot be used in another run.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def cert_id(cert: x509.Certificate) -> str:
    """How semper names a certificate in statements: SHA-256 of its DER, hex."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class Binding:
    xid: str
    protocol: str                     # "gen-ver", "rev-rev" or "plain"
    originator: x509.Certificate
    responder: x509.Certificate
    ttp: x509.Certificate | None

    @property
    def ttp_id(self) -> str | None:
        return cert_id(self.ttp) if self.ttp is not None else None

    def party(self, role: str) -> x509.Certificate:
        return self.originator if role == "originator" else self.responder

    def exchange_clause(self) -> dict[str, str | None]:
        """What a revocable item carries so that the third party's decision applies to it."""
        return {"xid": self.xid, "ttp": self.ttp_id}
