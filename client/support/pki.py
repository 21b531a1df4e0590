"""X.509 objects for the semper CA, built with asn1crypto and signed through a :class:`Signer`.

Why asn1crypto and not cryptography's builders: those want a private-key object, and the CA's key
(like the card's) never leaves its token; here we build the to-be-signed structure, hash it on the
host, let the device sign the digest, and assemble the DER. Parsing and signature *checks* use
cryptography, an independent implementation, so a bug in one library does not verify itself.

The certificate profiles (one per role) live here because both sides need them: the CA issues by
them, verifiers and the registration client check against them.
"""
from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from asn1crypto import crl as asn1_crl
from asn1crypto import csr as asn1_csr
from asn1crypto import keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from semper.hardware.errors import SemperError
from semper.hardware.signer import Signer

# A UUID-based OID arc (ITU-T X.667, 2.25.<uuid>): ours without a registration.
SEMPER_ARC = "2.25.22968398718274257184176849936958858258"
ROLE_ARC = SEMPER_ARC + ".1"


class PkiError(SemperError):
    """A request or object does not have the form or signature it must have."""

    http_status = 400
    code = "pki_invalid"


@dataclass(frozen=True)
class RoleProfile:
    """What a certificate of this role may do: key usage, extended key usage, SAN kind."""

    name: str
    key_usage: frozenset[str]
    ext_key_usage: tuple[str, ...]
    eku_critical: bool = False
    needs_email: bool = False
    needs_hosts: bool = False
    description: str = ""

    @property
    def role_oid(self) -> str | None:
        return next((o for o in self.ext_key_usage if o.startswith(ROLE_ARC + ".")), None)


_SIGN = frozenset({"digital_signature", "non_repudiation"})
ROLES: dict[str, RoleProfile] = {r.name: r for r in (
    RoleProfile("person", _SIGN, ("email_protection", ROLE_ARC + ".1"), needs_email=True,
                description="a buyer's card or token key: signs orders, contracts, receipts"),
    RoleProfile("seller", _SIGN, ("email_protection", ROLE_ARC + ".2"), needs_email=True,
                description="a seller's signing key in its token: signs offers, receipts"),
    RoleProfile("bank", _SIGN, ("email_protection", ROLE_ARC + ".3"), needs_email=True,
                description="a bank, issuer or acquirer: signs authorisations, clearing statements"),
    RoleProfile("ttp", _SIGN, ("email_protection", ROLE_ARC + ".4"), needs_email=True,
                description="the third party (arbiter): signs decisions and affidavits"),
    RoleProfile("certifier", _SIGN, (ROLE_ARC + ".5",),
                description="a service certifier: signs service certificates after evaluating service documents "
                            "(docs/commerce.md, 'Services'); its own key, not the CA's"),
    RoleProfile("tsa", _SIGN, ("time_stamping",), eku_critical=True,
                description="the third party's RFC 3161 time-stamping key (EKU timeStamping only, critical)"),
    RoleProfile("server", frozenset({"digital_signature"}), ("server_auth",), needs_hosts=True,
                description="a service's TLS server key (SAN: its IP addresses and host names)"),
)}


# ---- small helpers ----------------------------------------------------------------------------
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _time(dt: datetime) -> asn1_x509.Time:
    """UTCTime up to 2049, GeneralizedTime after, as RFC 5280 4.1.2.5 demands."""
    return asn1_x509.Time({"utc_time" if dt.year < 2050 else "general_time": dt})


def new_serial() -> int:
    """A positive random serial of at most 20 octets (RFC 5280), unguessable so no collisions."""
    return secrets.randbits(159) | (1 << 120)


def spki(point: bytes) -> keys.PublicKeyInfo:
    if len(point) != 65 or point[0] != 4:
        raise PkiError("expected an uncompressed P-256 public point (65 bytes starting 04)")
    return keys.PublicKeyInfo({"algorithm": {"algorithm": "ec", "parameters": ("named", "secp256r1")},
                               "public_key": point})


def key_id(point: bytes) -> bytes:
    """Subject key identifier: SHA-1 of the public key bits (RFC 5280 4.2.1.2, method 1)."""
    return hashlib.sha1(point).digest()


def point_of(cert_or_key: x509.Certificate | CertificatePublicKeyTypes) -> bytes:
    key = cert_or_key.public_key() if isinstance(cert_or_key, x509.Certificate) else cert_or_key
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PkiError("only ECDSA P-256 keys are used in semper")
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def subject_name(common_name: str, email: str | None = None) -> asn1_x509.Name:
    fields: dict[str, str] = {"common_name": common_name}
    if email:
        fields["email_address"] = email
    return asn1_x509.Name.build(fields, use_printable=False)


def _check_signature(point: bytes, message: bytes, signature: bytes) -> None:
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    try:
        key.verify(signature, hashlib.sha256(message).digest(), ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise PkiError("the signature made by the device does not match its public key") from None


def _sign(signer: Signer, point: bytes, tbs: bytes) -> bytes:
    """Hash on the host, sign on the device, and check the result before it goes anywhere."""
    signature = signer.sign_digest(hashlib.sha256(tbs).digest())
    _check_signature(point, tbs, signature)
    return signature


def _general_name(host: str) -> asn1_x509.GeneralName:
    try:
        ipaddress.ip_address(host)
        return asn1_x509.GeneralName(name="ip_address", value=host)
    except ValueError:
        return asn1_x509.GeneralName(name="dns_name", value=host)


def extension(extn_id: str, value: object, critical: bool = False) -> dict[str, object]:
    """One X.509 extension in asn1crypto's terms (``extn_id`` as asn1crypto names it)."""
    return {"extn_id": extn_id, "critical": critical, "extn_value": value}


# ---- certificates -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CaIdentity:
    """What issuing needs to know about the CA: its signer and its own certificate."""

    signer: Signer
    certificate: bytes          # DER

    @property
    def cert(self) -> asn1_x509.Certificate:
        return asn1_x509.Certificate.load(self.certificate)

    @property
    def point(self) -> bytes:
        return point_of(x509.load_der_x509_certificate(self.certificate))


def build_ca_certificate(signer: Signer, common_name: str, *, days: int = 3650,
                         serial: int | None = None) -> bytes:
    """The self-signed root: CA:true, keyCertSign + cRLSign, signed by the token's own key."""
    point = signer.public_point()
    name = subject_name(common_name)
    tbs = tbs_certificate(name, name, point, days=days, serial=serial, extensions=[
        extension("basic_constraints", {"ca": True, "path_len_constraint": 0}, True),
        extension("key_usage", {"key_cert_sign", "crl_sign"}, True),
        extension("key_identifier", key_id(point)),
    ])
    return sign_certificate(signer, point, tbs)


def tbs_certificate(issuer: asn1_x509.Name, subject: asn1_x509.Name, point: bytes, *, days: int,
                    extensions: list[dict[str, object]], serial: int | None = None) -> asn1_x509.TbsCertificate:
    """What every semper certificate shares: v3, ECDSA-SHA256, a P-256 key, valid from five minutes ago.

    The CA's role profiles and the purse scheme's profiles differ only in names and extensions.
    """
    start = now() - timedelta(minutes=5)
    return asn1_x509.TbsCertificate({
        "version": "v3", "serial_number": serial or new_serial(), "signature": {"algorithm": "sha256_ecdsa"},
        "issuer": issuer, "subject": subject,
        "validity": {"not_before": _time(start), "not_after": _time(start + timedelta(days=days))},
        "subject_public_key_info": spki(point),
        "extensions": extensions,
    })


def sign_certificate(signer: Signer, signer_point: bytes, tbs: asn1_x509.TbsCertificate) -> bytes:
    """The DER certificate: ``tbs`` hashed here, signed on the device, the signature checked before use."""
    return _assemble(tbs, _sign(signer, signer_point, tbs.dump()))


def _assemble(tbs: asn1_x509.TbsCertificate, signature: bytes) -> bytes:
    return asn1_x509.Certificate({"tbs_certificate": tbs, "signature_algorithm": {"algorithm": "sha256_ecdsa"},
                                  "signature_value": signature}).dump()


@dataclass(frozen=True)
class Subject:
    """Whom a certificate names; the CA fills it from its registration record, never from the request."""

    common_name: str
    role: str
    email: str | None = None
    hosts: tuple[str, ...] = ()


def build_certificate(ca: CaIdentity, subject: Subject, point: bytes, *, serial: int, days: int,
                      crl_url: str | None = None) -> bytes:
    """An end-entity certificate by the role's profile, signed through the CA's token."""
    profile = ROLES.get(subject.role)
    if profile is None:
        raise PkiError(f"unknown role {subject.role!r}; roles: {', '.join(ROLES)}")
    if profile.needs_hosts and not subject.hosts:
        raise PkiError(f"a {subject.role} certificate needs at least one host name or IP address")
    ca_cert = ca.cert
    ca_point = ca.point
    sans = [asn1_x509.GeneralName(name="rfc822_name", value=subject.email)] if subject.email else []
    sans += [_general_name(h) for h in subject.hosts]
    extensions: list[dict[str, object]] = [
        extension("basic_constraints", {"ca": False}, True),
        extension("key_usage", set(profile.key_usage), True),
        extension("extended_key_usage", list(profile.ext_key_usage), profile.eku_critical),
        extension("key_identifier", key_id(point)),
        extension("authority_key_identifier", {"key_identifier": key_id(ca_point)}),
    ]
    if sans:
        extensions.append(extension("subject_alt_name", sans))
    if crl_url:
        extensions.append(extension("crl_distribution_points", [
            {"distribution_point": {"full_name": [asn1_x509.GeneralName(name="uniform_resource_identifier",
                                                                         value=crl_url)]}}]))
    tbs = tbs_certificate(ca_cert.subject, subject_name(subject.common_name, subject.email), point, days=days,
                          serial=serial, extensions=extensions)
    return sign_certificate(ca.signer, ca_point, tbs)


# ---- certification requests (PKCS#10) ------------------------------------------------------------
def build_csr(signer: Signer, point: bytes, common_name: str, email: str | None) -> bytes:
    """A PKCS#10 request for the device's key, signed ON the device (proof of possession).

    The caller has verified the PIN right before (a PIV 9C key wants it before every signature).
    """
    info = asn1_csr.CertificationRequestInfo({
        "version": "v1", "subject": subject_name(common_name, email), "subject_pk_info": spki(point),
        "attributes": [],
    })
    signature = _sign(signer, point, info.dump())
    return asn1_csr.CertificationRequest({
        "certification_request_info": info, "signature_algorithm": {"algorithm": "sha256_ecdsa"},
        "signature": signature}).dump()


@dataclass(frozen=True)
class CsrInfo:
    common_name: str
    email: str | None
    point: bytes


def parse_csr(der: bytes) -> CsrInfo:
    """Parse and check a request: well-formed DER, P-256 key, ECDSA-SHA256 signature by that key."""
    try:
        req = x509.load_der_x509_csr(der)
    except ValueError:
        raise PkiError("the certification request is not a DER PKCS#10 structure") from None
    try:
        point = point_of(req.public_key())
    except (ValueError, TypeError) as e:
        raise PkiError(f"the request's public key is unusable: {e}") from None
    if req.signature_hash_algorithm is None or req.signature_hash_algorithm.name != "sha256":
        raise PkiError("the request must be signed with ECDSA-SHA256")
    if not req.is_signature_valid:
        raise PkiError("the request's signature does not verify with the key it carries (no proof of possession)")
    cns = req.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    emails = req.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)
    if len(cns) != 1 or len(emails) > 1:
        raise PkiError("the request's subject must hold one common name and at most one e-mail address")
    return CsrInfo(str(cns[0].value), str(emails[0].value) if emails else None, point)


# ---- certificate revocation lists -----------------------------------------------------------------
@dataclass(frozen=True)
class Revoked:
    serial: int
    when: datetime
    reason: str


REASONS = ("unspecified", "key_compromise", "ca_compromise", "affiliation_changed", "superseded",
           "cessation_of_operation", "privilege_withdrawn")


def build_crl(ca: CaIdentity, revoked: Iterable[Revoked], *, number: int, this_update: datetime,
              next_update: datetime) -> bytes:
    """A v2 CRL with entry reasons, CRL number and authority key id, signed through the token."""
    entries = []
    for r in revoked:
        entry: dict[str, object] = {"user_certificate": r.serial, "revocation_date": _time(r.when)}
        if r.reason != "unspecified":
            entry["crl_entry_extensions"] = [extension("crl_reason", r.reason)]
        entries.append(entry)
    tbs_fields: dict[str, object] = {
        "version": "v2", "signature": {"algorithm": "sha256_ecdsa"}, "issuer": ca.cert.subject,
        "this_update": _time(this_update), "next_update": _time(next_update),
        "crl_extensions": [extension("crl_number", number),
                           extension("authority_key_identifier", {"key_identifier": key_id(ca.point)})],
    }
    if entries:
        tbs_fields["revoked_certificates"] = entries
    tbs = asn1_crl.TbsCertList(tbs_fields)
    signature = _sign(ca.signer, ca.point, tbs.dump())
    return asn1_crl.CertificateList({"tbs_cert_list": tbs, "signature_algorithm": {"algorithm": "sha256_ecdsa"},
                                     "signature": signature}).dump()


def pem(der: bytes, label: str = "CERTIFICATE") -> str:
    import base64
    b64 = base64.b64encode(der).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"

