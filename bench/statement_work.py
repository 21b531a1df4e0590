"""The seller's statement work, step by step, in process: ``python -m semper.bench.statement_work [count]``.

Why: the throughput bench cannot resolve a tenth of a millisecond on a shared machine, so the steps
of docs/performance.md ("Leaner statements ...") are sized here, each as the median of ``count``
calls (CPU-bound, one thread; a key in memory signs, so the token is not in the figures). A and B are
compared by running this file under both trees, interleaved, and taking the lowest median of each.
It runs against older trees too (what it times falls back to the plain nested writer there).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from semper.client.commerce.archive import SharedArchive
from semper.client.support import cms, cms_profile
from semper.client.support.canonical import canonical
from semper.client.support.trust import TrustStore, Usage
from semper.client.support.verify import verify_statement
from semper.hardware.signer import PinStatus

NOW = dt.datetime.now(dt.UTC)
OFFER: dict[str, Any] = {
    "type": "offer", "deal": "ab" * 16, "nonce": "n" * 32, "workflow": "mail-order",
    "items": [{"sku": "bicycle", "description": "A bicycle, blue", "kind": "physical", "quantity": 1,
               "unit_price": 25000}],
    "currency": 978, "total": 25000, "payment": ["card-purse", "cheque"], "seller_account": "acct-seller-1",
    "psam": "PSAM-1", "attributes": {"anonymous": False, "fair": False},
    "form": {"name": "address", "fields": ["name", "street", "city"]}, "valid_until": "2026-12-07T03:00:00.000000Z"}
ORDER: dict[str, Any] = {"type": "order", "deal": "ab" * 16, "offer_digest": "cd" * 32, "payment": "card-purse",
                         "form": {"name": "A. Buyer", "street": "Main 1", "city": "Bern"}}


class _MemorySigner:
    """A key in memory with a certificate from the bench's CA; the same digest gets the same signature
    (so that the figures leave the ECDSA signing out: it is the token's, not the host's, in a shop)."""

    def __init__(self, ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                     .issuer_name(ca_name).public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False),
                                    critical=True)
                     .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                    critical=False)
                     .sign(ca_key, hashes.SHA256())).public_bytes(Encoding.DER)
        self.label = name
        self._memo: dict[bytes, bytes] = {}

    def certificate(self) -> bytes:
        return self.cert

    def sign_digest(self, digest: bytes) -> bytes:
        if digest not in self._memo:
            self._memo[digest] = self.key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return self._memo[digest]

    def public_point(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def pin_status(self) -> PinStatus:
        return PinStatus(True, None)

    def verify_pin(self, pin: bytes) -> None:
        pass


def _median_us(fn: Callable[[], object], count: int) -> float:
    for _ in range(min(50, count)):
        fn()
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return round(statistics.median(samples) * 1e6, 1)


def run(count: int) -> dict[str, float]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench statement CA")])
    root = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(ca_key, hashes.SHA256()))
    seller, buyer = _MemorySigner(ca_key, ca_name, "seller"), _MemorySigner(ca_key, ca_name, "buyer")
    trust = TrustStore([root])
    order_der = cms.sign_statement(buyer, ORDER)
    order_parts = cms.parse_signed_data(order_der)
    content = cms.canonical_json(OFFER)
    scv2 = cms._signer_parts(seller.cert)[1]
    issuer, serial = cms._signer_parts(seller.cert)[2:]
    attrs = cms_profile.signed_attributes(content, NOW, scv2)
    signature = seller.sign_digest(hashlib.sha256(attrs).digest())
    public = seller.key.public_key()
    ecdsa = ec.ECDSA(hashes.SHA256())
    template = getattr(cms, "_template", None)
    if template is not None:
        t = template(issuer, serial, (seller.cert,))
        assemble: Callable[[], object] = lambda: cms_profile.assemble_from(t, content, attrs, signature)
    else:                                                   # a tree before the signer's template
        assemble = lambda: cms_profile.assemble(content, attrs, signature, issuer, serial, [seller.cert])
    buyer_cert = cms.load_certificate(buyer.cert)
    out = {
        "canonical JSON of an offer": _median_us(lambda: canonical(OFFER), count),
        "signed attributes": _median_us(lambda: cms_profile.signed_attributes(content, NOW, scv2), count),
        "SignedData around them": _median_us(assemble, count),
        "sign_statement (signature memoised)": _median_us(lambda: cms.sign_statement(seller, OFFER, signing_time=NOW),
                                                          count),
        "ECDSA verification (the floor)": _median_us(lambda: public.verify(signature, attrs, ecdsa), count),
        "parse_statement of an order": _median_us(lambda: cms.parse_statement(order_der), count),
        "check_integrity of an order": _median_us(lambda: cms.check_integrity(order_parts), count),
        "check_usage": _median_us(lambda: trust.check_usage(buyer_cert, Usage.STATEMENT), count),
        "verify_statement of an order": _median_us(lambda: verify_statement(order_der, trust), count),
    }
    with tempfile.TemporaryDirectory() as tmp:
        archive = SharedArchive(Path(tmp) / "archive.sqlite3")
        offer_der = cms.sign_statement(seller, OFFER)

        def batch() -> None:
            with archive.batch():
                archive.append_statement(OFFER["deal"], offer_der, statement_type="offer")
                archive.append_statement(OFFER["deal"], order_der, statement_type="order")
                archive.append(OFFER["deal"], "decision", b'{"x":1}')
                archive.append(OFFER["deal"], "decisions", b'[{"step":"order"}]')
        out["archive batch of 4 entries"] = _median_us(batch, min(count, 2000))
        archive.close()
    return out                 # sign_statement and verify_statement each include one ECDSA verification


def main(argv: list[str] | None = None) -> None:
    from semper.client.commands import positive_int
    ap = argparse.ArgumentParser(prog="python -m semper.bench.statement_work",
                                 description="the seller's statement work, step by step, medians in µs (JSON)")
    ap.add_argument("count", nargs="?", type=positive_int, default=3000, help="calls per step (default 3000)")
    count = ap.parse_args(argv).count
    print(json.dumps({"count": count, "median_us": run(count)}, indent=1))


if __name__ == "__main__":
    main()
