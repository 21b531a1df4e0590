"""Signed statements: CMS SignedData (RFC 5652) with the statement embedded, signed on a card or token.

Why CMS and not a home-made format: an outsider (a judge, the third party, an auditor) must be able to
check a statement with stock tools; ``openssl cms -verify`` does. Statements themselves are written
and read by :mod:`client.support.cms_profile` (their one fixed shape, as strict DER, for speed);
everything else — time-stamp tokens, other shapes, and the wording of every refusal — by asn1crypto,
and tests/test_cms_profile.py holds the two to the same bytes and the same answers.

A statement is a JSON object with a ``"type"`` (offer, order, receipt, debit-proof, decision,
checkpoint, ...), serialised canonically (UTF-8, sorted keys, no spaces) so that one statement has
exactly one byte form. The SignedData carries it as eContent of type ``id-ct-semperStatement``
(:data:`STATEMENT_OID`), with the signed attributes content-type, signing-time, message-digest and
signing-certificate-v2 (RFC 5035) and the signer's certificate. The signature is made by a
:class:`hardware.signer.Signer` over SHA-256 of the DER SET OF signed attributes.

This module makes and parses statements and checks their *integrity* (digest, signature against the
embedded certificate); whether the signer is *trusted* is :mod:`client.support.trust`'s decision.
The error hierarchy for evidence lives here because this is the lowest evidence module.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asn1crypto.tsp
import msgspec
from asn1crypto import cms, core
from asn1crypto import x509 as a_x509
from asn1crypto.parser import emit as asn1_emit
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from semper.hardware.errors import SemperError
from semper.hardware.signer import Signer

from . import cms_profile
from .canonical import canonical
from .small_cache import small_cache

ARC = "2.25.204673179289492764569138234192898414436"
#: eContentType of a semper statement (canonical JSON). openssl verifies SignedData of any content type.
STATEMENT_OID = ARC + ".2.1"
cms.ContentType._map.setdefault(STATEMENT_OID, "semper_statement")

#: The statement types the layers use today; others may be added (any lower-case word is accepted).
KNOWN_TYPES = ("offer", "order", "receipt", "debit-proof", "payment", "delivery", "decision", "complaint",
               "checkpoint", "registration")
_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
REQUIRED_SIGNED_ATTRS = ("content_type", "signing_time", "message_digest", "signing_certificate_v2")
#: ECDSA with SHA-256 as cryptography takes it; immutable, so one object serves every signature check
ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


# ---- errors -------------------------------------------------------------------------------------
class EvidenceError(SemperError):
    """Base of every evidence failure; the message says what is wrong and what to do. A service
    answers a statement that does not verify with 422 (well-formed, not acceptable)."""

    http_status = 422
    code = "bad_evidence"


class MalformedStatement(EvidenceError):
    """The bytes are not a well-formed semper statement (or a statement cannot be encoded)."""

    http_status = 400
    code = "malformed_statement"


class BadSignature(EvidenceError):
    """The content or the signed attributes do not match the signature: altered or forged."""


class UntrustedSigner(EvidenceError):
    """The signer's certificate does not chain to a trusted root, or was not valid at signing time."""


class ExpiredSigner(UntrustedSigner):
    """A certificate on the signer's chain was not yet or no longer valid at the time that counts."""


class RevokedSigner(EvidenceError):
    """The signer's certificate (or one above it) is on its CA's revocation list."""


class WrongKeyUsage(EvidenceError):
    """The certificate exists for another purpose than the one it was used for."""


class BadTimestamp(EvidenceError):
    """A time-stamp token or response is malformed, refused, or does not cover what it claims to."""


class SigningError(EvidenceError):
    """The device produced no usable signature (e.g. its certificate does not match its key)."""

    http_status = 500            # in a service: its own token failed
    code = "internal"


# ---- canonical JSON -----------------------------------------------------------------------------
def canonical_json(statement: Mapping[str, Any]) -> bytes:
    """The one byte form of a statement: UTF-8, keys sorted, no insignificant space."""
    if type(statement) is not dict and not isinstance(statement, Mapping):     # exact type first: no ABC check
        raise MalformedStatement("a statement is a JSON object (a dict)")
    kind = statement.get("type")
    if not isinstance(kind, str) or not _TYPE_RE.match(kind):
        raise MalformedStatement(f"a statement needs a 'type' of lower-case letters, digits and '-' "
                                 f"(e.g. {', '.join(KNOWN_TYPES[:4])}); got {kind!r}")
    return canonical(statement, "statement", MalformedStatement)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise MalformedStatement(f"the statement repeats the key {k!r}")
        out[k] = v
    return out


def _reject_float(text: str) -> Any:
    raise MalformedStatement(f"the statement contains the non-integer number {text}")


_DECODER = msgspec.json.Decoder()


def decode_statement_content(content: bytes) -> dict[str, Any]:
    """Parse statement JSON and insist it is canonical, so that its bytes are its only form.

    Content that is canonical is read by msgspec and written back to compare (a tenth of the time of
    Python's reader with its hooks); anything else goes to Python's reader, which names the problem
    (a repeated key, a float, not JSON). Canonical bytes mean one value to every JSON reader."""
    try:
        fast = _DECODER.decode(content)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        fast = None
    if type(fast) is dict:
        try:
            if canonical_json(fast) == content:
                return fast
        except MalformedStatement:
            pass
    try:
        body = json.loads(content.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_float=_reject_float,
                          parse_constant=_reject_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedStatement(f"the statement content is not UTF-8 JSON ({e})") from None
    if not isinstance(body, dict):
        raise MalformedStatement("the statement content is not a JSON object")
    if canonical_json(body) != content:
        raise MalformedStatement("the statement JSON is not in canonical form (sorted keys, no spaces, UTF-8)")
    return body


# ---- building SignedData ------------------------------------------------------------------------
def _cms_time(when: dt.datetime) -> cms.Time:
    """UTCTime for 1950-2049 and GeneralizedTime otherwise, as RFC 5652 11.3 requires."""
    when = when.astimezone(dt.UTC).replace(microsecond=0)
    return cms.Time(name="utc_time" if 1950 <= when.year < 2050 else "generalized_time", value=when)


def _sha256_alg() -> cms.DigestAlgorithm:
    return cms.DigestAlgorithm({"algorithm": "sha256", "parameters": None})      # RFC 5754: parameters absent


def _asn1_cert(der: bytes) -> a_x509.Certificate:
    try:
        cert = a_x509.Certificate.load(der, strict=True)
        cert.native  # noqa: B018  (parse it all now so a bad certificate fails here)
        return cert
    except (ValueError, TypeError) as e:
        raise MalformedStatement(f"a certificate is not valid DER X.509 ({e})") from None


@functools.lru_cache(maxsize=256)
def _checked_cert(der: bytes) -> None:
    """A certificate to embed parses as DER X.509 (checked once per certificate)."""
    _asn1_cert(der)


@functools.lru_cache(maxsize=64)
def _signer_parts(cert_der: bytes) -> tuple[a_x509.Certificate, bytes, bytes, int]:
    """(parsed certificate, DER of its signing-certificate-v2 attribute, DER of its issuer, serial), per certificate.

    Why cached: asn1crypto re-encodes a parsed certificate's names whenever they are copied into a
    new structure, which made one statement signature cost ~14 ms of host time for a 0.2 ms device
    signature. The attribute depends on the certificate alone, so it is built once and reloaded from
    its bytes (a loaded value is written out as is); the output is byte-for-byte the same.
    """
    cert = _asn1_cert(cert_der)
    attr = cms.CMSAttribute({"type": "signing_certificate_v2", "values": [signing_certificate_v2(cert)]}).dump()
    return cert, attr, cert.issuer.dump(), cert.serial_number


@functools.lru_cache(maxsize=64)
def _template(issuer_der: bytes, serial: int, cert_ders: tuple[bytes, ...]) -> cms_profile.SignerTemplate:
    """A signer's constant DER (its SignerInfo head, the certificate set), written once per signer and
    set of certificates: a party signs every statement with the same ones."""
    return cms_profile.template(issuer_der, serial, cert_ders)


@small_cache(1024)
def load_certificate(der: bytes) -> x509.Certificate:
    """A DER certificate as a cryptography object, parsed once: the same few certificates (a seller's,
    its CA's) come with every statement, and cryptography's certificates are immutable."""
    return x509.load_der_x509_certificate(der)


@small_cache(256)
def _load_certificates(ders: tuple[bytes, ...]) -> tuple[x509.Certificate, ...]:
    """:func:`load_certificate` of each, once per certificate set (a statement's set is the same in each of
    its signer's statements)."""
    return tuple(load_certificate(c) for c in ders)


@small_cache(1024)
def _written_hash(der: bytes, alg: str) -> bytes:
    """The ``alg`` hash of the certificate loaded from ``der`` as cryptography writes it (what check_integrity
    compares with the signing-certificate attribute), once per certificate and hash: writing it out and
    hashing it cost more than the rest of the check but for the signature."""
    return hashlib.new(alg, load_certificate(der).public_bytes(Encoding.DER)).digest()


@small_cache(256)
def _ec_public_key(cert_der: bytes) -> ec.EllipticCurvePublicKey | None:
    """The EC key of the certificate loaded from ``cert_der``, or None for another kind of key."""
    return _ec_key_of(load_certificate(cert_der).public_key())


def _ec_key_of(public: Any) -> ec.EllipticCurvePublicKey | None:
    return public if isinstance(public, ec.EllipticCurvePublicKey) else None


def _cert_der(cert: bytes | x509.Certificate) -> bytes:
    return cert if isinstance(cert, bytes) else cert.public_bytes(Encoding.DER)


def signing_certificate_v2(cert: a_x509.Certificate) -> asn1crypto.tsp.SigningCertificateV2:
    """RFC 5035 ESSCertIDv2 (SHA-256, the default, so the algorithm is omitted) with issuer and serial."""
    return asn1crypto.tsp.SigningCertificateV2({"certs": [{
        "cert_hash": hashlib.sha256(cert.dump()).digest(),
        "issuer_serial": {"issuer": [a_x509.GeneralName(name="directory_name", value=cert.issuer)],
                          "serial_number": cert.serial_number},
    }]})


def build_signed_data(signer: Signer, content_type: str, content: bytes, *,
                      extra_certs: Iterable[bytes | x509.Certificate] = (), include_certs: bool = True,
                      signing_time: dt.datetime | None = None, pin: bytes | None = None,
                      signer_cert: bytes | None = None) -> bytes:
    """A ContentInfo(SignedData) over embedded ``content``, signed by ``signer``; shared with the TSA.

    ``pin``, when given, is presented right before the signature: PIV key 9C demands that for every
    signature. ``signer_cert`` overrides the device's own certificate (a TSA whose certificate lives
    outside the token). The signature is checked against the certificate before anything is returned,
    so a device holding another key's certificate cannot produce unverifiable evidence.
    """
    cert_der = bytes(signer_cert if signer_cert is not None else signer.certificate())
    cert, scv2_attr, issuer_der, serial = _signer_parts(cert_der)
    when = signing_time or dt.datetime.now(dt.UTC)
    profile = content_type == STATEMENT_OID          # semper's own statements: written directly (cms_profile)
    if profile:
        to_sign = cms_profile.signed_attributes(content, when, scv2_attr)
    else:
        attrs = cms.CMSAttributes([
            cms.CMSAttribute({"type": "content_type", "values": [content_type]}),
            cms.CMSAttribute({"type": "signing_time", "values": [_cms_time(when)]}),
            cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(content).digest()]}),
            cms.CMSAttribute.load(scv2_attr),
        ])
        to_sign = attrs.dump()             # DER SET OF, sorted by asn1crypto: exactly what the verifier hashes
    if pin is not None:
        signer.verify_pin(pin)
    signature = signer.sign_digest(hashlib.sha256(to_sign).digest())
    public = _ec_public_key(cert_der)
    if public is None:
        raise SigningError("the signer's certificate does not hold an EC key; semper signs with ECDSA P-256")
    try:
        public.verify(signature, to_sign, ECDSA_SHA256)
    except InvalidSignature:
        raise SigningError(f"{getattr(signer, 'label', 'the signer')} signed with a key that does not match its "
                           f"certificate ({cert.subject.human_friendly}); re-register the device") from None
    if include_certs and isinstance(extra_certs, tuple | list) and not extra_certs:
        cert_ders: tuple[bytes, ...] = (cert_der,)       # the usual: parsed as X.509 by _signer_parts above
    else:
        found: list[bytes] = []
        for der in ([cert_der] if include_certs else []) + [_cert_der(c) for c in extra_certs]:
            if bytes(der) not in found:
                _checked_cert(bytes(der))
                found.append(bytes(der))
        cert_ders = tuple(found)
    if profile:
        return cms_profile.assemble_from(_template(issuer_der, serial, cert_ders), content, to_sign, signature)
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value={
            "issuer": a_x509.Name.load(issuer_der), "serial_number": serial}),
        "digest_algorithm": _sha256_alg(),
        "signed_attrs": attrs,
        "signature_algorithm": {"algorithm": "sha256_ecdsa"},
        "signature": signature,
    }).dump()
    econtent_type = cms.ContentType(content_type)
    spec = cms.EncapsulatedContentInfo._oid_specs.get(econtent_type.native)
    econtent: Any = spec.load(content) if spec is not None else content     # e.g. TSTInfo: asn1crypto wants it parsed
    # The outer layers are joined from their parts' DER with asn1crypto's emit(): building them as nested
    # asn1crypto objects made it re-encode the whole tree again and again for some signature lengths (up
    # to ~45 ms of host time for one statement). The bytes are those asn1crypto's classes give.
    fields = [
        # RFC 5652 5.1: version 3 when eContentType is not id-data, otherwise 1 (v1 SignerInfos only)
        cms.CMSVersion("v1" if econtent_type.native == "data" else "v3").dump(),
        cms.DigestAlgorithms([_sha256_alg()]).dump(),
        cms.EncapsulatedContentInfo({"content_type": econtent_type, "content": econtent}).dump(),
    ]
    if cert_ders:                                        # certificates [0] IMPLICIT SET OF, DER-sorted
        fields.append(asn1_emit(2, 1, 0, b"".join(sorted(cert_ders))))
    fields.append(asn1_emit(0, 1, 17, signer_info))      # signerInfos: SET OF, one SignerInfo
    signed_data = asn1_emit(0, 1, 16, b"".join(fields))
    return asn1_emit(0, 1, 16, cms.ContentType("signed_data").dump() + asn1_emit(2, 1, 0, signed_data))


def sign_statement(signer: Signer, statement: Mapping[str, Any], extra_certs: Iterable[bytes | x509.Certificate] = (),
                   *, pin: bytes | None = None, signing_time: dt.datetime | None = None) -> bytes:
    """Sign ``statement`` on the card or token; returns the CMS DER, which ``openssl cms -verify`` accepts.

    ``extra_certs`` are added so that a verifier offline has the chain (e.g. an intermediate CA).
    Pass ``pin`` when the key needs the PIN right before each signature (PIV 9C); otherwise the
    caller has already logged in.
    """
    return build_signed_data(signer, STATEMENT_OID, canonical_json(statement), extra_certs=extra_certs,
                             signing_time=signing_time, pin=pin)


# ---- parsing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignedParts:
    """What a verifier needs from one-signer SignedData, parsed but not judged."""

    der: bytes
    content_type: str              # dotted OID of the eContent
    content: bytes
    signer_cert: x509.Certificate
    certificates: tuple[x509.Certificate, ...]
    signed_attrs: bytes            # the DER SET OF that was signed
    signature: bytes               # the SignerInfo's signature value
    message_digest: bytes
    signing_time: dt.datetime | None
    signing_cert_hash: bytes | None          # from signing-certificate-v2 (SHA-256) or v1 (SHA-1)
    signing_cert_hash_alg: str
    timestamp_tokens: tuple[bytes, ...]     # id-aa-timeStampToken unsigned attributes (ContentInfo DER)
    #: the DER ``signer_cert`` was loaded from (by :func:`load_certificate`): a key to its cached forms
    signer_der: bytes | None = None

    @property
    def signer_info(self) -> cms.SignerInfo:
        """The SignerInfo as asn1crypto parses it (for callers that need a field the parts do not carry)."""
        return cms.ContentInfo.load(self.der)["content"]["signer_infos"][0]


@dataclass(frozen=True)
class Statement:
    """A parsed statement. Nothing here is trusted until :func:`client.support.trust.verify_statement`."""

    parts: SignedParts
    body: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.body["type"])

    @property
    def der(self) -> bytes:
        return self.parts.der

    @property
    def content(self) -> bytes:
        return self.parts.content

    @property
    def signing_time(self) -> dt.datetime:
        assert self.parts.signing_time is not None         # parse_statement requires it
        return self.parts.signing_time

    @property
    def signer_cert(self) -> x509.Certificate:
        return self.parts.signer_cert

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        return self.parts.certificates

    @property
    def signature(self) -> bytes:
        return self.parts.signature

    @property
    def timestamp_tokens(self) -> tuple[bytes, ...]:
        return self.parts.timestamp_tokens


def _single_attr(attrs: cms.CMSAttributes | None, name: str, what: str) -> Any:
    if attrs is None:
        return None
    found = [a for a in attrs if a["type"].native == name]
    if not found:
        return None
    if len(found) > 1 or len(found[0]["values"]) != 1:
        raise MalformedStatement(f"the {what} attribute {name.replace('_', '-')} must occur once with one value")
    return found[0]["values"][0]


def _find_signer_cert(sid: cms.SignerIdentifier, certs: Sequence[a_x509.Certificate]) -> a_x509.Certificate:
    for cert in certs:
        if sid.name == "issuer_and_serial_number":
            if (cert.issuer == sid.chosen["issuer"] and cert.serial_number == sid.chosen["serial_number"].native):
                return cert
        elif cert.key_identifier == sid.chosen.native:
            return cert
    raise MalformedStatement("the signer's certificate is not included in the SignedData; ask the signer to "
                             "send it with the certificate")


def parse_signed_data(der: bytes, expected_content_type: str | None = None, what: str = "statement") -> SignedParts:
    """Parse a one-signer SignedData with embedded content, SHA-256 and ECDSA; no trust decision."""
    if expected_content_type in (None, STATEMENT_OID):
        fast = cms_profile.read_statement(der)
        if fast is not None:
            try:
                return SignedParts(
                    der=bytes(der), content_type=STATEMENT_OID, content=fast.content,
                    signer_cert=load_certificate(fast.signer), certificates=_load_certificates(fast.certificates),
                    signed_attrs=fast.signed_attrs, signature=fast.signature, message_digest=fast.message_digest,
                    signing_time=fast.signing_time, signing_cert_hash=fast.signing_cert_hash,
                    signing_cert_hash_alg="sha256", timestamp_tokens=(), signer_der=fast.signer)
            except (ValueError, x509.InvalidVersion):
                pass                    # a damaged certificate: the general parser below names the problem
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise MalformedStatement(f"the {what} is a CMS {info['content_type'].native}, not SignedData")
        sd: cms.SignedData = info["content"]
        encap = sd["encap_content_info"]
        ctype = encap["content_type"].dotted
        if expected_content_type is not None and ctype != cms.ContentType(expected_content_type).dotted:
            raise MalformedStatement(f"the {what} carries content of type {encap['content_type'].native}, "
                                     f"expected {cms.ContentType(expected_content_type).native}")
        if encap["content"].native is None:
            raise MalformedStatement(f"the {what} has detached content; semper embeds the content it signs")
        if not isinstance(encap["content"], (core.OctetString, core.ParsableOctetString)):
            raise MalformedStatement(f"the {what}'s content is not an OCTET STRING")   # asn1crypto gave Any
        content = bytes(encap["content"])
        asn_certs = [c.chosen for c in (sd["certificates"] or []) if c.name == "certificate"]
        signer_infos = list(sd["signer_infos"])
        if len(signer_infos) != 1:
            raise MalformedStatement(f"the {what} has {len(signer_infos)} signers; semper evidence has exactly one")
        si: cms.SignerInfo = signer_infos[0]
        if si["digest_algorithm"]["algorithm"].native != "sha256":
            raise MalformedStatement(f"the {what} uses digest {si['digest_algorithm']['algorithm'].native}; "
                                     "semper accepts SHA-256")
        if si["signature_algorithm"]["algorithm"].native not in ("sha256_ecdsa", "ecdsa"):
            raise MalformedStatement(f"the {what} is signed with {si['signature_algorithm']['algorithm'].native}; "
                                     "semper accepts ECDSA with SHA-256")
        attrs = si["signed_attrs"]
        if not isinstance(attrs, cms.CMSAttributes) or len(attrs) == 0:
            raise MalformedStatement(f"the {what} has no signed attributes")
        # the received bytes, re-tagged as SET OF (RFC 5652 5.4), from a parse nothing else has touched:
        # asn1crypto re-encodes structures it has filled with defaults, which could alter what was signed
        pristine = cms.ContentInfo.load(der)["content"]["signer_infos"][0]["signed_attrs"]
        signed_attrs = pristine.untag().dump()
        ct_attr = _single_attr(attrs, "content_type", "signed")
        if ct_attr is None or ct_attr.dotted != ctype:
            raise MalformedStatement(f"the {what}'s signed content-type attribute does not match its content")
        md = _single_attr(attrs, "message_digest", "signed")
        if md is None:
            raise MalformedStatement(f"the {what} has no message-digest attribute")
        st = _single_attr(attrs, "signing_time", "signed")
        scv2 = _single_attr(attrs, "signing_certificate_v2", "signed")
        scv1 = _single_attr(attrs, "signing_certificate", "signed")       # older TSAs (openssl ts default)
        cert_hash, cert_hash_alg = None, "sha256"
        if scv2 is not None:
            first = scv2["certs"][0]
            if first["hash_algorithm"]["algorithm"].native != "sha256":
                raise MalformedStatement(f"the {what}'s signing-certificate-v2 attribute uses a hash other than "
                                         "SHA-256")
            cert_hash = first["cert_hash"].native
        elif scv1 is not None:
            cert_hash, cert_hash_alg = scv1["certs"][0]["cert_hash"].native, "sha1"
        tokens: list[bytes] = []
        for attr in si["unsigned_attrs"] or []:
            if attr["type"].native == "signature_time_stamp_token":
                tokens.extend(v.dump() for v in attr["values"])
        signer_asn = _find_signer_cert(si["sid"], asn_certs)
        certificates = tuple(load_certificate(c.dump()) for c in asn_certs)
        signer_der = signer_asn.dump()
        parts = SignedParts(
            der=der, content_type=ctype, content=content,
            signer_cert=load_certificate(signer_der), certificates=certificates, signer_der=signer_der,
            signed_attrs=signed_attrs, signature=si["signature"].native, message_digest=md.native,
            signing_time=st.native if st is not None else None, signing_cert_hash=cert_hash,
            signing_cert_hash_alg=cert_hash_alg,
            timestamp_tokens=tuple(tokens))
        return parts
    except EvidenceError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, x509.InvalidVersion) as e:
        raise MalformedStatement(f"the {what} is not valid CMS DER ({type(e).__name__}: {e})") from None


def parse_statement(der: bytes) -> Statement:
    """Parse a semper statement: structure, required signed attributes, canonical JSON; no trust decision."""
    parts = parse_signed_data(der, STATEMENT_OID)
    missing = [n.replace("_", "-") for n, v in (("signing_time", parts.signing_time),
                                                 ("signing_certificate_v2", parts.signing_cert_hash)) if v is None]
    if parts.signing_cert_hash_alg != "sha256":
        missing.append("signing-certificate-v2 (v1 with SHA-1 is not enough for statements)")
    if missing:
        raise MalformedStatement(f"the statement lacks the signed attribute(s) {', '.join(missing)}")
    return Statement(parts, decode_statement_content(parts.content))


def check_integrity(parts: SignedParts, what: str = "statement") -> None:
    """Content digest, signature over the signed attributes, and the ESS certificate reference.

    These say the bytes are exactly what the holder of the embedded certificate's key signed; they
    say nothing about whether that holder is anyone to be trusted.
    """
    if hashlib.sha256(parts.content).digest() != parts.message_digest:
        raise BadSignature(f"the {what}'s content was altered after signing (its SHA-256 no longer matches "
                           "the signed message-digest)")
    try:
        # by the DER it was loaded from, the key and its type check once per certificate
        public = (_ec_public_key(parts.signer_der) if parts.signer_der is not None
                  else _ec_key_of(parts.signer_cert.public_key()))
    except (ValueError, UnsupportedAlgorithm):   # damaged key bytes (cryptography parses them only now): not a 500
        raise MalformedStatement(f"the {what}'s signer certificate holds no valid public key") from None
    if public is None:
        raise MalformedStatement(f"the {what}'s signer certificate does not hold an EC key")
    try:
        public.verify(parts.signature, parts.signed_attrs, ECDSA_SHA256)
    except InvalidSignature:
        try:
            who = parts.signer_cert.subject.rfc4514_string()
        except ValueError:                           # a damaged name is parsed only now
            who = "a certificate with an unreadable name"
        raise BadSignature(f"the {what}'s signature does not verify with the key of {who}: forged or damaged") from None
    if parts.signing_cert_hash is not None:
        alg = parts.signing_cert_hash_alg
        if parts.signer_der is not None:
            written = _written_hash(parts.signer_der, alg)
        else:
            written = hashlib.new(alg, parts.signer_cert.public_bytes(Encoding.DER)).digest()
        if written != parts.signing_cert_hash:
            raise BadSignature(f"the {what}'s signing-certificate-v2 attribute names another certificate than "
                               "the one it was verified with (certificate substitution)")


class _OpaqueValues(core.SetOf):
    _child_spec = core.Any


class _OpaqueAttribute(core.Sequence):
    """An Attribute whose values stay the bytes they were given (never parsed, never re-encoded)."""

    _fields = [("type", cms.CMSAttributeType), ("values", _OpaqueValues)]


def add_unsigned_attribute(der: bytes, attr_type: str, value_der: bytes) -> bytes:
    """Return the SignedData with one more unsigned attribute (one DER value) on its SignerInfo.

    Unsigned attributes are outside the signature, which is why a time-stamp token can be added
    after signing without touching the signed bytes. Every piece that goes into the new tree is
    loaded from bytes and never inspected, so asn1crypto copies it verbatim: it re-encodes any
    structure it has parsed and filled with defaults, which is slow (exponential in depth) and would
    risk changing bytes that others signed.
    """
    try:
        info = cms.ContentInfo.load(der, strict=True)
        sd = info["content"]
        si = cms.SignerInfo.load(sd["signer_infos"][0].dump())
        old = si["unsigned_attrs"]
        existing = [cms.CMSAttribute.load(a.dump()) for a in old] if isinstance(old, cms.CMSAttributes) else []
        value = core.Any.load(value_der, strict=True)
        added = cms.CMSAttribute.load(_OpaqueAttribute({"type": attr_type, "values": [value]}).dump())
        si["unsigned_attrs"] = cms.CMSAttributes.load(cms.CMSAttributes(existing + [added]).dump())
        sd["signer_infos"] = cms.SignerInfos([cms.SignerInfo.load(si.dump())])
        out = info.dump()
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise MalformedStatement(f"cannot add an attribute: the statement or the value is not valid DER "
                                 f"({e})") from None
    before, after = parse_signed_data(der), parse_signed_data(out)
    if (before.content, before.signed_attrs, before.signature) != (after.content, after.signed_attrs, after.signature):
        raise MalformedStatement("adding the attribute would change the signed bytes; the statement is not DER")
    return out
