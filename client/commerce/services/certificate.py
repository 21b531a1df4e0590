"""Service certificates and the certifier's revocation list: their statements, and every check on them.

A *service certificate* is a CMS statement (``type: service-certificate``) signed by a certifier
after it evaluated a service document: it names the document by the SHA-256 of its canonical JSON,
says what the service may do (:class:`~.permits.Permit`) and for how long, and where the
certifier's revocation list is. The certifier's key is certified by the CA with the role
``certifier`` (its own extended key usage, ``support/pki.py``): a seller's, a bank's or the CA's own
key cannot certify services, and a certifier key cannot sign offers.

The *revocation list* is a statement too (``type: service-revocations``), signed by the same
certifier key, with ``this_update`` and ``next_update`` like an X.509 CRL: an outdated list is not
used. :func:`check` runs every check a client makes and raises :class:`ServiceRefused` with a
``reason`` (``uncertified``, ``untrusted``, ``expired``, ``revoked``, ``tampered``, ``over-reaching``,
``malformed``) and a sentence a person can act on.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from cryptography import x509

from ...support.cms import EvidenceError, ExpiredSigner, RevokedSigner
from ...support.shapes import Shape, ShapeError, convert
from ...support.trust import TrustStore, as_utc
from ...support.verify import VerifiedStatement, verify_statement
from ..documents import has_role
from .document import Name, ServiceDocument, ServiceError, read
from .permits import Permit, ServiceRefused

TIME = "%Y-%m-%dT%H:%M:%SZ"
Hex64 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Serial = Annotated[str, msgspec.Meta(pattern=r"^[0-9A-F]{32}$")]
Time = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")]
Url = Annotated[str, msgspec.Meta(pattern=r"^https://[^\s?#]{1,200}$")]


class CertificateBody(Shape, frozen=True):
    type: Literal["service-certificate"]
    serial: Serial
    service: Name
    version: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    document_sha256: Hex64
    permits: Permit
    not_before: Time
    not_after: Time
    revocations: Url


class Revoked(Shape, frozen=True):
    serial: Serial
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    revoked_at: Time


class RevocationsBody(Shape, frozen=True):
    type: Literal["service-revocations"]
    this_update: Time
    next_update: Time
    revoked: Annotated[list[Revoked], msgspec.Meta(max_length=100_000)]


def when(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, TIME).replace(tzinfo=dt.UTC)


def stamp(at: dt.datetime) -> str:
    return as_utc(at).strftime(TIME)


def refused(reason: str, message: str) -> ServiceRefused:
    return ServiceRefused(message, reason)


@dataclass(frozen=True)
class CheckedService:
    """A service that passed every check: the document, what it may do, and who said so."""

    document: ServiceDocument
    permit: Permit
    body: CertificateBody
    certifier: x509.Certificate
    statement: VerifiedStatement

    @property
    def certifier_name(self) -> str:
        return self.certifier.subject.rfc4514_string()


def _verify(der: bytes, trust: TrustStore, what: str) -> VerifiedStatement:
    try:
        return verify_statement(der, trust)
    except EvidenceError as e:
        reason = ("revoked" if isinstance(e, RevokedSigner) else "expired" if isinstance(e, ExpiredSigner)
                  else "untrusted")
        raise refused(reason, f"{what} does not verify: {e}") from None


def check(document: bytes | dict[str, object] | None, certificate: bytes | None, revocations: bytes | None, *,
          trust: TrustStore, certifiers: Sequence[x509.Certificate], now: dt.datetime | None = None
          ) -> CheckedService:
    """Every check a client makes on a downloaded service, in the order that names the first fault."""
    now = now or dt.datetime.now(dt.UTC)
    if certificate is None:
        raise refused("uncertified", "the service comes without a certificate: no certifier evaluated it, so it is "
                                     "not run")
    vs = _verify(certificate, trust, "the service's certificate")
    if vs.type != "service-certificate":
        raise refused("uncertified", f"the service came with a {vs.type!r} statement, not a service certificate")
    if not has_role(vs.signer, "certifier"):
        raise refused("uncertified", f"the service's certificate is signed by {vs.signer_name}, which is not a "
                                     "service certifier (its certificate has no certifier role)")
    if vs.signer not in certifiers:
        raise refused("untrusted", f"the service is certified by {vs.signer_name}, a certifier your preferences do "
                                   "not trust (trust.certifiers)")
    try:
        body = convert(vs.body, CertificateBody, "the service certificate")
    except ShapeError as e:
        raise refused("malformed", str(e)) from None
    if now < when(body.not_before) or now > when(body.not_after):
        raise refused("expired", f"the service's certificate is valid from {body.not_before} to {body.not_after}, "
                                 f"not now ({stamp(now)})")
    if revocations is None:
        raise refused("revoked", "the certifier's revocation list could not be had, so the certificate cannot be "
                                 "checked; try again later")
    rl = _verify(revocations, trust, "the certifier's revocation list")
    if rl.signer != vs.signer or rl.type != "service-revocations":
        raise refused("revoked", "the revocation list is not the certifier's (another signer or statement)")
    try:
        rbody = convert(rl.body, RevocationsBody, "the revocation list")
    except ShapeError as e:
        raise refused("malformed", str(e)) from None
    if now > when(rbody.next_update):
        raise refused("revoked", f"the certifier's revocation list is out of date (next update was due "
                                 f"{rbody.next_update}); the certificate cannot be checked")
    hit = next((r for r in rbody.revoked if r.serial == body.serial), None)
    if hit is not None:
        raise refused("revoked", f"the certifier revoked the service's certificate {body.serial} on {hit.revoked_at} "
                                 f"({hit.reason})")
    if document is None:
        raise refused("malformed", "the shop sent the certificate without the service document")
    try:
        doc = read(document, "the downloaded service document")
    except ServiceError as e:
        raise refused("malformed", str(e)) from None
    if doc.sha256 != body.document_sha256:
        raise refused("tampered", f"the service document is not the one that was certified (SHA-256 {doc.sha256[:16]}"
                                  f"…, certified {body.document_sha256[:16]}…)")
    if (doc.name, doc.version) != (body.service, body.version):
        raise refused("tampered", f"the certificate is for {body.service} v{body.version}, the document says "
                                  f"{doc.name} v{doc.version}")
    over = body.permits.overreach(doc)
    if over:
        raise refused("over-reaching", f"the service {doc.name!r} asks more than its certificate allows: "
                                       + "; ".join(over))
    return CheckedService(doc, body.permits, body, vs.signer, vs)
