"""semper's statement profile of CMS SignedData as fixed DER: built and read without a general parser.

Why: every purchase signs and checks a dozen statements, and asn1crypto spent more than a
millisecond on each (object trees, re-encoding, name comparisons) — more than the token's
signature and most of the seller's CPU (``semper bench throughput``, docs/performance.md). A
statement has exactly one shape (:mod:`client.support.cms`: one signer, issuer-and-serial, SHA-256,
ECDSA, four signed attributes, the certificates), so it is written and read here directly.

Both directions are checked against the general code: the bytes built here are identical to what
asn1crypto builds for the same statement, and :func:`read_statement` either returns exactly what
the general parser returns or ``None`` — for anything outside the profile (time-stamped statements,
other attributes, other algorithms encodings, BER, a signer named by key identifier or by an
equivalent but differently encoded name), and then the general parser decides and explains
(tests/test_cms_profile.py compares the two on valid and damaged statements). A signer's later
statements are read from the form learnt from its first (:class:`_Form`), and tests hold that to the
TLV-by-TLV reader too.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from . import der
from .small_cache import MAX_BYTES, small_cache

OID_SIGNED_DATA = bytes.fromhex("06092a864886f70d010702")
OID_STATEMENT = bytes.fromhex("06166982b3facfb5faa092a1b394b5f6abfa92a7ae640201")   # cms.STATEMENT_OID
ATTR_CONTENT_TYPE = bytes.fromhex("06092a864886f70d010903")
ATTR_SIGNING_TIME = bytes.fromhex("06092a864886f70d010905")
ATTR_MESSAGE_DIGEST = bytes.fromhex("06092a864886f70d010904")
ATTR_SIGNING_CERT_V2 = bytes.fromhex("060b2a864886f70d010910022f")
SHA256 = bytes.fromhex("300b0609608648016503040201")          # AlgorithmIdentifier as asn1crypto writes it
ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
DIGEST_ALGORITHMS = der.tlv(0x31, SHA256)
VERSION_3, VERSION_1 = bytes.fromhex("020103"), bytes.fromhex("020101")


def _time(when: dt.datetime) -> bytes:
    """UTCTime for 1950-2049, GeneralizedTime otherwise (RFC 5652 11.3), whole seconds, Z."""
    when = when.astimezone(dt.UTC)
    if 1950 <= when.year < 2050:
        return der.tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    return der.tlv(0x18, f"{when.year:04d}{when:%m%d%H%M%S}Z".encode())


# The signed attributes' constant parts, written once. A statement's attributes differ only in the
# signing time and the message digest (always 32 bytes), so each is a fixed head and its value.
CONTENT_TYPE_ATTRIBUTE = der.tlv(0x30, ATTR_CONTENT_TYPE + der.tlv(0x31, OID_STATEMENT))
_DIGEST_HEAD = der.tlv(0x30, ATTR_MESSAGE_DIGEST + der.tlv(0x31, der.tlv(0x04, bytes(32))))[:-32]
_UTC_TIME_HEAD = der.tlv(0x30, ATTR_SIGNING_TIME + der.tlv(0x31, der.tlv(0x17, bytes(13))))[:-13]


def signed_attributes(content: bytes, when: dt.datetime, scv2_attribute: bytes) -> bytes:
    """The DER SET OF signed attributes (what the signature covers), in DER order.

    Why not four TLVs: this runs for every statement a party signs; the fixed heads save most of the
    work and give the same bytes (tests/test_cms_profile.py holds them to asn1crypto's). For a time in
    1950-2049 (UTCTime) the set is one signer's constant bytes around two holes, the 13 characters of the
    time and the 32 bytes of the digest (:func:`_utc_layout`), so only those are written per statement."""
    when = when.astimezone(dt.UTC)
    if 1950 <= when.year < 2050:
        layout = _utc_layout(scv2_attribute)
        time = b"%02d%02d%02d%02d%02d%02dZ" % (when.year % 100, when.month, when.day, when.hour, when.minute,
                                              when.second)
        digest = hashlib.sha256(content).digest()
        if layout is not None:
            before, time_first, between, after = layout
            if time_first:
                return b"".join((before, time, between, digest, after))
            return b"".join((before, digest, between, time, after))
        signing_time = _UTC_TIME_HEAD + time
        attrs = sorted((CONTENT_TYPE_ATTRIBUTE, signing_time, _DIGEST_HEAD + digest, scv2_attribute))
        return der.tlv(0x31, b"".join(attrs))
    signing_time = der.tlv(0x30, ATTR_SIGNING_TIME + der.tlv(0x31, _time(when)))
    attrs = sorted((CONTENT_TYPE_ATTRIBUTE, signing_time, _DIGEST_HEAD + hashlib.sha256(content).digest(),
                    scv2_attribute))
    return der.tlv(0x31, b"".join(attrs))


@functools.lru_cache(maxsize=256)
def _utc_layout(scv2_attribute: bytes) -> tuple[bytes, bool, bytes, bytes] | None:
    """(the bytes before the first hole, whether the time's hole comes first, the bytes between the holes,
    the bytes after the second) of the signed attributes of a UTCTime statement with this
    signing-certificate-v2 attribute, worked out once per signer; None when the DER order of the four
    attributes could depend on the time or the digest (then they are sorted per statement).

    Why it is the same set: DER sorts the four encodings as byte strings. Where any two of them differ
    before either one's hole, their order is the same whatever fills the holes; the lengths are fixed (13
    characters, 32 bytes), so the set's own head is too."""
    fixed = ((CONTENT_TYPE_ATTRIBUTE, None), (_UTC_TIME_HEAD, "time"), (_DIGEST_HEAD, "digest"),
             (scv2_attribute, None))
    for i, (a, _) in enumerate(fixed):
        for b, _ in fixed[i + 1:]:
            n = min(len(a), len(b))
            if a[:n] == b[:n]:
                return None                       # decided only inside a hole (never for semper's attributes)
    order = sorted(fixed, key=lambda item: item[0])
    total = sum(len(a) for a, _ in fixed) + 13 + 32
    pieces: list[bytes] = [der.head(0x31, total)]
    holes: list[str] = []
    for prefix, hole in order:
        pieces[-1] += prefix
        if hole is not None:
            holes.append(hole)
            pieces.append(b"")
    return pieces[0], holes[0] == "time", pieces[1], pieces[2]


@dataclass(frozen=True)
class SignerTemplate:
    """What every statement of one signer (one certificate, one set of certificates sent along) shares,
    as DER written once: the SignerInfo's head (version, issuer and serial, digest algorithm) and the
    certificate set. Only the content, the signed attributes and the signature are written per statement."""

    signer_info_head: bytes
    certificate_set: bytes              # certificates [0] IMPLICIT SET OF, DER-sorted; b"" without any


def template(issuer: bytes, serial: int, certificates: Sequence[bytes]) -> SignerTemplate:
    head = VERSION_1 + der.tlv(0x30, issuer + der.integer(serial)) + SHA256
    certs = der.tlv(0xA0, b"".join(sorted(certificates))) if certificates else b""
    return SignerTemplate(head, certs)


_BODY_HEAD = VERSION_3 + DIGEST_ALGORITHMS
_N_OIDS = len(OID_SIGNED_DATA), len(OID_STATEMENT)


def assemble_from(t: SignerTemplate, content: bytes, signed_attrs: bytes, signature: bytes) -> bytes:
    """ContentInfo(SignedData) around a statement whose signed attributes were signed, from the signer's
    template: the same bytes as :func:`assemble`, the nested lengths worked out instead of nested copies."""
    head = der.head
    sig_head = head(0x04, len(signature))
    n_si = len(t.signer_info_head) + len(signed_attrs) + len(ECDSA_SHA256) + len(sig_head) + len(signature)
    si_head = head(0x30, n_si)
    n_sis = len(si_head) + n_si                                # signerInfos SET content
    oct_head = head(0x04, len(content))
    n_wrap = len(oct_head) + len(content)                      # [0] EXPLICIT eContent
    wrap_head = head(0xA0, n_wrap)
    n_encap = _N_OIDS[1] + len(wrap_head) + n_wrap
    encap_head = head(0x30, n_encap)
    sis_head = head(0x31, n_sis)
    n_body = (len(_BODY_HEAD) + len(encap_head) + n_encap + len(t.certificate_set) + len(sis_head) + n_sis)
    body_head = head(0x30, n_body)
    n_explicit = len(body_head) + n_body
    explicit_head = head(0xA0, n_explicit)
    return b"".join((
        head(0x30, _N_OIDS[0] + len(explicit_head) + n_explicit), OID_SIGNED_DATA, explicit_head, body_head,
        _BODY_HEAD, encap_head, OID_STATEMENT, wrap_head, oct_head, content,
        t.certificate_set,
        sis_head, si_head, t.signer_info_head, b"\xa0", memoryview(signed_attrs)[1:], ECDSA_SHA256,
        sig_head, signature))


def assemble(content: bytes, signed_attrs: bytes, signature: bytes, issuer: bytes, serial: int,
             certificates: list[bytes]) -> bytes:
    """ContentInfo(SignedData) around a statement whose signed attributes were signed (written as nested
    TLVs: the reference :func:`assemble_from` is held to in tests/test_cms_profile.py)."""
    signer_info = der.tlv(0x30, VERSION_1 + der.tlv(0x30, issuer + der.integer(serial)) + SHA256
                          + b"\xa0" + signed_attrs[1:] + ECDSA_SHA256 + der.tlv(0x04, signature))
    body = VERSION_3 + DIGEST_ALGORITHMS + der.tlv(0x30, OID_STATEMENT + der.tlv(0xA0, der.tlv(0x04, content)))
    if certificates:
        body += der.tlv(0xA0, b"".join(sorted(certificates)))
    body += der.tlv(0x31, signer_info)
    return der.tlv(0x30, OID_SIGNED_DATA + der.tlv(0xA0, der.tlv(0x30, body)))


@dataclass(frozen=True)
class ProfileParts:
    content: bytes
    certificates: tuple[bytes, ...]      # DER, in the order they appear
    signer: bytes                        # DER of the certificate the signer identifier names
    signed_attrs: bytes                  # re-tagged as SET OF: what was signed
    signature: bytes
    message_digest: bytes
    signing_time: dt.datetime
    signing_cert_hash: bytes


def _parse_time(buf: bytes, pos: int, end: int) -> tuple[dt.datetime, int]:
    tag, start, stop = der.read(buf, pos, end)
    return _time_value(tag, buf[start:stop]), stop


@functools.lru_cache(maxsize=64)
def _time_value(tag: int, text: bytes) -> dt.datetime:
    """The time a UTCTime (0x17) or GeneralizedTime (0x18) of the profile says: whole seconds, Z; DerError else.

    Remembered for the last few times read (a refusal raises and is not kept): a busy party reads several
    statements signed in the same second, and a datetime is immutable."""
    if tag == 0x17 and len(text) == 13 and text[-1:] == b"Z" and text[:12].isdigit():
        year = int(text[:2])
        year += 2000 if year < 50 else 1900
        rest = text[2:12]
    elif tag == 0x18 and len(text) == 15 and text[-1:] == b"Z" and text[:14].isdigit():
        year, rest = int(text[:4]), text[4:14]
    else:
        raise der.DerError("time outside the profile")
    month, rest_ = divmod(int(rest), 100_000_000)             # ten ASCII digits: MMDDhhmmss
    day, rest_ = divmod(rest_, 1_000_000)
    hour, rest_ = divmod(rest_, 10_000)
    minute, second = divmod(rest_, 100)
    try:
        return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    except ValueError:
        raise der.DerError("impossible date") from None


def _attributes(buf: bytes, start: int, stop: int) -> tuple[bytes, dt.datetime, bytes, tuple[int, int, int, int, int]]:
    """(message digest, signing time, signing-certificate-v2 value, (where the digest's and the time's
    contents start and end, the time's tag)): exactly the four attributes, once each."""
    seen: dict[bytes, tuple[int, int]] = {}
    pos = start
    while pos < stop:
        a0, a1 = der.expect(buf, pos, 0x30, stop)
        t0, t1 = der.expect(buf, a0, 0x06, a1)
        oid = buf[a0:t1]
        if oid in seen or oid not in (ATTR_CONTENT_TYPE, ATTR_SIGNING_TIME, ATTR_MESSAGE_DIGEST, ATTR_SIGNING_CERT_V2):
            raise der.DerError("attribute outside the profile")
        v0, v1 = der.expect(buf, t1, 0x31, a1)
        if v1 != a1:
            raise der.DerError("trailing bytes in an attribute")
        seen[oid] = (v0, v1)
        pos = a1
    if len(seen) != 4:
        raise der.DerError("attribute missing")
    v0, v1 = seen[ATTR_CONTENT_TYPE]
    if buf[v0:v1] != OID_STATEMENT:
        raise der.DerError("content-type attribute")
    v0, v1 = seen[ATTR_MESSAGE_DIGEST]
    d0, d1 = der.expect(buf, v0, 0x04, v1)
    if d1 != v1:
        raise der.DerError("message digest")
    digest = buf[d0:d1]
    v0, v1 = seen[ATTR_SIGNING_TIME]
    tag, t0, t1 = der.read(buf, v0, v1)
    when = _time_value(tag, buf[t0:t1])
    if t1 != v1:
        raise der.DerError("signing time")
    v0, v1 = seen[ATTR_SIGNING_CERT_V2]
    return digest, when, buf[v0:v1], (d0, d1, t0, t1, tag)


def read_statement(buf: bytes) -> ProfileParts | None:
    """The parts of a statement in the profile, or None (then the general parser decides)."""
    try:
        return _read(bytes(buf))
    except (der.DerError, IndexError, ValueError):
        return None


def _content(buf: bytes) -> tuple[bytes, int, int]:
    """The statement's content, where its encapsulated content ends, and where its SignedData ends."""
    o0, o1 = der.expect(buf, 0, 0x30)
    if o1 != len(buf) or not buf.startswith(OID_SIGNED_DATA, o0):
        raise der.DerError("not SignedData")
    x0, x1 = der.expect(buf, o0 + len(OID_SIGNED_DATA), 0xA0, o1)
    s0, s1 = der.expect(buf, x0, 0x30, x1)
    if x1 != o1 or s1 != x1:
        raise der.DerError("trailing bytes")
    if not buf.startswith(_BODY_HEAD, s0):                    # version 3, then the digest algorithms
        raise der.DerError("version or digest algorithms outside the profile")
    e0, e1 = der.expect(buf, s0 + len(_BODY_HEAD), 0x30, s1)   # encapContentInfo
    if not buf.startswith(OID_STATEMENT, e0):
        raise der.DerError("not a statement")
    w0, w1 = der.expect(buf, e0 + len(OID_STATEMENT), 0xA0, e1)
    c0, c1 = der.expect(buf, w0, 0x04, w1)
    if c1 != w1 or w1 != e1:
        raise der.DerError("eContent")
    return buf[c0:c1], e1, s1


def _read(buf: bytes) -> ProfileParts:
    content, pos, s1 = _content(buf)
    tag, k0, k1 = der.read(buf, pos, s1)
    if tag == 0xA0:
        forms = _FORMS.get(buf[pos:k1])
        if forms is not None:
            for form in forms:
                parts = form.match(buf, content, k1, s1)
                if parts is not None:
                    return parts
    return _walk(buf, content, pos, s1, tag, k0, k1)


def _walk(buf: bytes, content: bytes, pos: int, s1: int, tag: int, k0: int, k1: int) -> ProfileParts:
    """Read the certificates and the SignerInfo TLV by TLV (``tag``, ``k0``, ``k1``: the field after the
    encapsulated content, at ``pos``), and learn the signer's form (:class:`_Form`) from what it read."""
    certs: list[bytes] = []
    set_start = pos
    if tag == 0xA0:
        p = k0
        while p < k1:
            tag, _, q = der.read(buf, p, k1)
            if tag != 0x30:
                raise der.DerError("certificate choice outside the profile")
            certs.append(buf[p:q])
            p = q
        pos = k1
    i0, i1 = der.expect(buf, pos, 0x31, s1)           # signerInfos
    if i1 != s1:
        raise der.DerError("crls or trailing fields")
    si0, si1 = der.expect(buf, i0, 0x30, i1)
    if si1 != i1:
        raise der.DerError("more than one signer")
    pos = si0
    if buf[pos:pos + len(VERSION_1)] != VERSION_1:
        raise der.DerError("SignerInfo version")
    pos += len(VERSION_1)
    n0, n1 = der.expect(buf, pos, 0x30, si1)          # issuerAndSerialNumber
    _, iss1 = der.expect(buf, n0, 0x30, n1)
    issuer = buf[n0:iss1]
    r0, r1 = der.expect(buf, iss1, 0x02, n1)
    if r1 != n1:
        raise der.DerError("issuer and serial")
    serial = der.read_integer(buf, r0, r1)
    pos = n1
    if buf[pos:pos + len(SHA256)] != SHA256:
        raise der.DerError("digest algorithm")
    pos += len(SHA256)
    attrs_at = pos
    a0, a1 = der.expect(buf, pos, 0xA0, si1)          # signedAttrs [0] IMPLICIT
    digest, when, scv2, holes = _attributes(buf, a0, a1)
    signed_attrs = b"\x31" + buf[pos + 1:a1]
    pos = a1
    if buf[pos:pos + len(ECDSA_SHA256)] != ECDSA_SHA256:
        raise der.DerError("signature algorithm")
    pos += len(ECDSA_SHA256)
    g0, g1 = der.expect(buf, pos, 0x04, si1)
    if g1 != si1:
        raise der.DerError("unsigned attributes or trailing fields")
    signer = next((c for c in certs if _issuer_serial(c) == (issuer, serial)), None)
    if signer is None:
        raise der.DerError("signer not found by exact issuer and serial")
    cert_hash, expected_scv2 = _expected_scv2(signer)
    if scv2 != expected_scv2:
        raise der.DerError("signing-certificate-v2 other than the one semper writes")   # the general parser decides
    parts = ProfileParts(content, tuple(certs), signer, signed_attrs, buf[g0:g1], digest, when, cert_hash)
    _learn(buf[set_start:k1], _Form.of(buf, parts, si0, attrs_at, a1, pos, holes))
    return parts


@dataclass(frozen=True)
class _Form:
    """The bytes of one signer's SignerInfo that are the same in each of its statements, learnt from one
    that :func:`_walk` read: everything from the SignerInfo's content to its signature's tag, but the two
    holes, the signing time's characters and the message digest's bytes.

    Why: a party reads the statements of the same few signers again and again (a shop its own offers, each
    buyer's orders); comparing three stretches of bytes replaces some twenty TLV reads. A statement takes
    this path only when, beyond its own content and signature, it is byte for byte the statement the form
    was learnt from, but for the characters of a time (checked as :func:`_parse_time` checks them) and the
    digest's bytes (which :func:`_walk` takes as they are): so :func:`_walk` would read it the same, with
    the same certificates, the same signer and the same signing-certificate-v2 attribute. Anything else
    (another signer, other lengths, another attribute order) is read by :func:`_walk`."""

    certificates: tuple[bytes, ...]
    signer: bytes
    cert_hash: bytes
    chunks: tuple[tuple[int, bytes], ...]         # (offset from the SignerInfo's content, bytes) around the holes
    time_at: int                                  # offset of the time's characters
    time_tag: int
    time_len: int
    digest_at: int
    digest_len: int
    attrs_at: int                                 # the signed attributes' [0] tag ...
    attrs_end: int                                # ... and their end
    signature_at: int                             # the signature's OCTET STRING tag

    @classmethod
    def of(cls, buf: bytes, parts: ProfileParts, si0: int, attrs_at: int, attrs_end: int, signature_at: int,
           holes: tuple[int, int, int, int, int]) -> _Form:
        d0, d1, t0, t1, time_tag = holes
        (h0, h1), (h2, h3) = sorted(((d0, d1), (t0, t1)))
        chunks = ((0, buf[si0:h0]), (h1 - si0, buf[h1:h2]), (h3 - si0, buf[h3:signature_at]))
        return cls(parts.certificates, parts.signer, parts.signing_cert_hash, chunks, t0 - si0, time_tag, t1 - t0,
                   d0 - si0, d1 - d0, attrs_at - si0, attrs_end - si0, signature_at - si0)

    def match(self, buf: bytes, content: bytes, pos: int, s1: int) -> ProfileParts | None:
        """The parts of the statement in ``buf`` (its certificates end at ``pos``) if it has this form, else None."""
        try:
            i0, i1 = der.expect(buf, pos, 0x31, s1)
            si0, si1 = der.expect(buf, i0, 0x30, i1)
            if i1 != s1 or si1 != i1:
                return None
            for offset, chunk in self.chunks:
                if not buf.startswith(chunk, si0 + offset):
                    return None
            g0, g1 = der.expect(buf, si0 + self.signature_at, 0x04, si1)
            if g1 != si1:
                return None
            t0 = si0 + self.time_at
            when = _time_value(self.time_tag, buf[t0:t0 + self.time_len])
        except der.DerError:
            return None
        d0 = si0 + self.digest_at
        return ProfileParts(content, self.certificates, self.signer,
                            b"\x31" + buf[si0 + self.attrs_at + 1:si0 + self.attrs_end], buf[g0:g1],
                            buf[d0:d0 + self.digest_len], when, self.cert_hash)


#: learnt forms by the DER of the certificate set they came with (a set may carry several signers)
_FORMS: dict[bytes, tuple[_Form, ...]] = {}
_FORMS_LOCK = threading.Lock()
FORMS_KEPT = 256                                  # certificate sets; the oldest is forgotten first
FORMS_PER_SET = 4


def _learn(certificate_set: bytes, form: _Form) -> None:
    """Remember ``form`` for statements with this certificate set, unless the set is larger than a memo keeps
    (``small_cache.MAX_BYTES``): forms are learnt before the signature is checked, from whatever set the
    sender wrote, and each keeps its own copy of the set (review of 2026-12-07, finding 1)."""
    if len(certificate_set) > MAX_BYTES:
        return
    with _FORMS_LOCK:
        known = _FORMS.get(certificate_set, ())
        if form in known:
            return
        if not known and len(_FORMS) >= FORMS_KEPT:
            del _FORMS[next(iter(_FORMS))]
        _FORMS[certificate_set] = (form, *known[:FORMS_PER_SET - 1])


@small_cache(256)
def _expected_scv2(signer: bytes) -> tuple[bytes, bytes]:
    """(SHA-256 of the certificate, the signing-certificate-v2 value semper writes for it), once per
    certificate: the same few signers' statements are read again and again. The issuer and serial are the
    certificate's own, which are the signer identifier's: the signer was found by them."""
    issuer, serial = _issuer_serial(signer)
    cert_hash = hashlib.sha256(signer).digest()
    return cert_hash, signing_certificate_v2(signer, cert_hash, issuer, serial)


def signing_certificate_v2(cert: bytes, cert_hash: bytes, issuer: bytes, serial: int) -> bytes:
    """The SigningCertificateV2 semper writes for ``cert`` (RFC 5035: one ESSCertIDv2, SHA-256 left as the
    default, issuerSerial with the issuer as a directoryName). The reader compares the whole value, so a
    statement whose attribute differs in any byte goes to the general parser, which names what is wrong."""
    issuer_serial = der.tlv(0x30, der.tlv(0x30, der.tlv(0xA4, issuer)) + der.integer(serial))
    return der.tlv(0x30, der.tlv(0x30, der.tlv(0x30, der.tlv(0x04, cert_hash) + issuer_serial)))


@small_cache(1024)
def _issuer_serial(cert: bytes) -> tuple[bytes, int]:
    """(issuer Name DER, serial) of a DER certificate, read from its TBSCertificate (once per certificate)."""
    c0, c1 = der.expect(cert, 0, 0x30)
    t0, t1 = der.expect(cert, c0, 0x30, c1)
    pos = t0
    tag, _, stop = der.read(cert, pos, t1)
    if tag == 0xA0:                                   # [0] version
        pos = stop
    r0, r1 = der.expect(cert, pos, 0x02, t1)
    serial = der.read_integer(cert, r0, r1)
    _, alg1 = der.expect(cert, r1, 0x30, t1)          # signature algorithm
    _, iss1 = der.expect(cert, alg1, 0x30, t1)
    return cert[alg1:iss1], serial
