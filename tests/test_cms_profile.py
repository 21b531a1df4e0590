"""The statement profile's own DER codec against the general one (asn1crypto).

cms_profile writes and reads statements without a general ASN.1 library, for speed. These tests
hold it to two promises: what it writes is byte for byte what asn1crypto writes for the same
statement, and parsing with it gives exactly what the general parser gives — the same parts, or
the same refusal with the same message (the profile reader declines what it does not cover and
the general parser decides). A fast path that accepted something the general parser refuses, or
read it differently, would let a statement mean two things; the mutation test looks for that.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import asn1crypto.tsp
import pytest
from asn1crypto import cms as acms
from asn1crypto import x509 as ax509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_cms import Pki, pki

from semper.client.support import cms, cms_profile, der
from semper.hardware.signer import PinStatus


class SoftSigner:
    """A signer whose key is in memory: for this codec test only (real keys live on cards and tokens)."""

    def __init__(self, pki: Pki, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        point = self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.cert = pki.issue(point, name).public_bytes(Encoding.DER)
        self.label = name

    def certificate(self) -> bytes:
        return self.cert

    def sign_digest(self, digest: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
        return self.key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))

    def verify_pin(self, pin: bytes) -> None:
        pass

    def pin_status(self) -> PinStatus:
        return PinStatus(True, None)


@pytest.fixture(scope="module")
def soft(pki: Pki) -> SoftSigner:
    return SoftSigner(pki, "profile test signer")


def general_build(content: bytes, when: dt.datetime, cert_der: bytes, signature: bytes, certs: list[bytes]) -> bytes:
    """The statement as asn1crypto builds it from its classes, with a given signature."""
    cert = ax509.Certificate.load(cert_der)
    scv2 = asn1crypto.tsp.SigningCertificateV2({"certs": [{
        "cert_hash": hashlib.sha256(cert_der).digest(),
        "issuer_serial": {"issuer": [ax509.GeneralName(name="directory_name", value=cert.issuer)],
                          "serial_number": cert.serial_number}}]})
    t = when.astimezone(dt.UTC).replace(microsecond=0)
    attrs = acms.CMSAttributes([
        acms.CMSAttribute({"type": "content_type", "values": [cms.STATEMENT_OID]}),
        acms.CMSAttribute({"type": "signing_time", "values": [acms.Time(
            name="utc_time" if 1950 <= t.year < 2050 else "generalized_time", value=t)]}),
        acms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(content).digest()]}),
        acms.CMSAttribute({"type": "signing_certificate_v2", "values": [scv2]}),
    ])
    sd = acms.SignedData({
        "version": "v3",
        "digest_algorithms": [{"algorithm": "sha256", "parameters": None}],
        "encap_content_info": {"content_type": cms.STATEMENT_OID, "content": content},
        "certificates": [ax509.Certificate.load(c) for c in sorted(certs)],
        "signer_infos": [{
            "version": "v1",
            "sid": acms.SignerIdentifier(name="issuer_and_serial_number", value={
                "issuer": cert.issuer, "serial_number": cert.serial_number}),
            "digest_algorithm": {"algorithm": "sha256", "parameters": None},
            "signed_attrs": attrs,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signature,
        }],
    })
    return acms.ContentInfo({"content_type": "signed_data", "content": sd}).dump()


def general_parse(data: bytes, monkeypatch: pytest.MonkeyPatch) -> cms.SignedParts:
    with monkeypatch.context() as m:
        m.setattr(cms_profile, "read_statement", lambda _d: None)
        return cms.parse_signed_data(data)


def assert_parsed_as_general(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """parse_signed_data (profile first) gives what the general parser gives: the parts, or its refusal."""
    try:
        general = general_parse(data, monkeypatch)
    except cms.EvidenceError as e:
        with pytest.raises(cms.EvidenceError) as mine:        # refused with the general parser's own message
            cms.parse_signed_data(data)
        assert str(mine.value) == str(e)
        return
    mine_parts = cms.parse_signed_data(data)
    for name in FIELDS:
        assert getattr(mine_parts, name) == getattr(general, name), name


FIELDS = ("content_type", "content", "signer_cert", "certificates", "signed_attrs", "signature", "message_digest",
          "signing_time", "signing_cert_hash", "signing_cert_hash_alg", "timestamp_tokens")

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**53 + 1, 2**53 - 1) | st.text(max_size=40),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)
bodies = st.fixed_dictionaries({"type": st.sampled_from(cms.KNOWN_TYPES)},
                               optional={"note": st.text(max_size=70_000), "data": json_values})
times = st.datetimes(min_value=dt.datetime(1950, 1, 1), max_value=dt.datetime(2200, 12, 31),
                     timezones=st.just(dt.UTC))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, when=times, extra=st.booleans())
def test_profile_writes_what_asn1crypto_writes(soft: SoftSigner, pki: Pki, body: dict, when: dt.datetime,
                                               extra: bool) -> None:
    extra_certs = [pki.root.public_bytes(Encoding.DER)] if extra else []
    built = cms.sign_statement(soft, body, extra_certs, signing_time=when)
    parts = cms.parse_signed_data(built)
    certs = [soft.cert, *extra_certs]
    assert built == general_build(cms.canonical_json(body), when, soft.cert, parts.signature, certs)
    cms.check_integrity(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, when=times, cut=st.integers(0, 10_000), at=st.integers(0, 10_000), value=st.integers(0, 255),
       how=st.sampled_from(["flip", "set", "cut", "grow", "none"]))
def test_profile_reads_what_the_general_parser_reads_or_declines(
        soft: SoftSigner, body: dict, when: dt.datetime, cut: int, at: int, value: int, how: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(cms.sign_statement(soft, body, signing_time=when))
    i = at % len(data)
    if how == "flip":
        data[i] ^= 1 << (value % 8)
    elif how == "set":
        data[i] = value
    elif how == "cut":
        del data[cut % len(data):]
    elif how == "grow":
        data[i:i] = bytes([value])
    data = bytes(data)
    assert_parsed_as_general(data, monkeypatch)
    if how == "none":
        assert cms_profile.read_statement(data) is not None, "the profile declined a statement semper itself wrote"


@pytest.mark.parametrize("old,new", [
    ("a003020102", "a003020103"),                  # an X.509 version 4 (cryptography: InvalidVersion, not ValueError)
    ("2a8648ce3d0201", "2a8e48ce3d0201"),          # an unknown key algorithm (parsed lazily)
    ("2a8648ce3d030107", "2a8648ce3d030108"),      # an unknown curve
])
def test_damaged_embedded_certificates_are_refused_as_the_general_parser_refuses(
        soft: SoftSigner, monkeypatch: pytest.MonkeyPatch, old: str, new: str) -> None:
    """Found by the third party's fuzz test: a damaged certificate inside an otherwise well-formed
    statement must take the general parser's path to a MalformedStatement, never an exception."""
    data = cms.sign_statement(soft, {"type": "complaint", "n": 7})
    damaged = data.replace(bytes.fromhex(old), bytes.fromhex(new), 1)
    assert damaged != data
    assert_parsed_as_general(damaged, monkeypatch)
    try:
        cms.check_integrity(cms.parse_signed_data(damaged))
    except cms.EvidenceError:
        pass                                       # refused as evidence: what a party answers with a 4xx


def test_the_profile_declines_what_it_does_not_cover(soft: SoftSigner, monkeypatch: pytest.MonkeyPatch) -> None:
    statement = cms.sign_statement(soft, {"type": "order", "n": 1})
    assert cms_profile.read_statement(statement) is not None
    other = cms.build_signed_data(soft, "data", b"plain bytes")            # another content type
    assert cms_profile.read_statement(other) is None
    cms.check_integrity(cms.parse_signed_data(other))                     # the general parser takes it
    padded = statement[:1] + b"\x82" + len(statement[4:]).to_bytes(2, "big") + statement[4:]
    if statement[1] == 0x82:                                              # non-minimal length form: not DER
        longer = statement[:1] + b"\x83\x00" + statement[2:]
        assert cms_profile.read_statement(longer) is None
    assert cms_profile.read_statement(padded + b"\x00") is None           # trailing byte


def test_der_primitives_are_strict() -> None:
    assert der.tlv(0x04, b"x" * 200)[:3] == b"\x04\x81\xc8"
    assert der.integer(0) == b"\x02\x01\x00" and der.integer(128) == b"\x02\x02\x00\x80"
    assert der.integer(-1) == b"\x02\x01\xff"
    with pytest.raises(der.DerError):
        der.read(b"\x04\x81\x05hello", 0)                                 # long form for a short length
    with pytest.raises(der.DerError):
        der.read(b"\x04\x80hello\x00\x00", 0)                             # indefinite length
    with pytest.raises(der.DerError):
        der.read(b"\x04\x06hello", 0)                                     # truncated
    with pytest.raises(der.DerError):
        der.read_integer(b"\x00\x01", 0, 2)                               # non-minimal integer
    assert der.read(b"\x04\x05hello", 0) == (0x04, 2, 7)


def test_openssl_accepts_a_profile_statement(soft: SoftSigner, pki: Pki, tmp_path: Path) -> None:
    from test_cms import openssl_cms_verify
    der_ = cms.sign_statement(soft, {"type": "offer", "total": 1250, "note": "ü" * 300})
    r = openssl_cms_verify(der_, pki.root_pem, tmp_path)
    assert r.returncode == 0, r.stderr.decode()


def test_every_bit_flip_in_the_signing_certificate_attribute_reads_as_the_general_parser_reads_it(
        soft: SoftSigner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile read only the first certHash of signing-certificate-v2 and accepted statements whose
    attribute asn1crypto refuses (an indefinite length, a shortened hash with trailing bytes); found by the
    hypothesis test above. Now it compares the whole value with the one semper writes."""
    data = cms.sign_statement(soft, {"type": "offer"}, signing_time=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    start = data.index(cms_profile.ATTR_SIGNING_CERT_V2)
    for i in range(start, start + 160):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            assert_parsed_as_general(bytes(flipped), monkeypatch)


@settings(max_examples=300, deadline=None)
@example(content=b"c", signature=b"s" * 130, issuer=b"\x30\x00", serial=5, certs=[b"\x30\x00"], attrs=b"\x00")
@example(content=b"c" * 70_000, signature=b"s" * 255, issuer=b"i" * 400, serial=-1, certs=[], attrs=b"a" * 300)
@given(content=st.one_of(st.binary(max_size=300), st.integers(0, 70_000).map(lambda n: b"c" * n)),
       signature=st.binary(min_size=8, max_size=300), issuer=st.binary(min_size=2, max_size=400),
       serial=st.integers(-(2**159), 2**159), certs=st.lists(st.binary(min_size=1, max_size=600), max_size=3),
       attrs=st.binary(min_size=1, max_size=400))
def test_the_template_writes_what_the_nested_tlvs_write(content: bytes, signature: bytes, issuer: bytes, serial: int,
                                                         certs: list[bytes], attrs: bytes) -> None:
    """assemble_from (the signer's constant DER written once, the lengths worked out) gives the bytes of
    assemble (every layer a TLV around the next), whatever the lengths: short, one and two length bytes.
    The examples: a signature of 128 bytes or more took a two-byte length that assemble_from counted as
    one (the SignerInfo's length one short; never for ECDSA P-256, whose signatures are at most 72 bytes)."""
    signed_attrs = der.tlv(0x31, attrs)
    template = cms_profile.template(issuer, serial, certs)
    assert (cms_profile.assemble_from(template, content, signed_attrs, signature)
            == cms_profile.assemble(content, signed_attrs, signature, issuer, serial, certs))


def _nested_signed_attributes(content: bytes, when: dt.datetime, scv2_attribute: bytes) -> bytes:
    """The signed attributes as four TLVs (how cms_profile wrote them before its fixed heads)."""
    attrs = [der.tlv(0x30, cms_profile.ATTR_CONTENT_TYPE + der.tlv(0x31, cms_profile.OID_STATEMENT)),
             der.tlv(0x30, cms_profile.ATTR_SIGNING_TIME + der.tlv(0x31, cms_profile._time(when))),
             der.tlv(0x30, cms_profile.ATTR_MESSAGE_DIGEST
                     + der.tlv(0x31, der.tlv(0x04, hashlib.sha256(content).digest()))),
             scv2_attribute]
    return der.tlv(0x31, b"".join(sorted(attrs)))


@settings(max_examples=300, deadline=None)
@given(content=st.binary(max_size=200),
       when=times | st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31),
                                 timezones=st.timezones()),
       scv2=st.binary(min_size=1, max_size=300))
def test_the_fixed_heads_write_what_the_nested_tlvs_write(content: bytes, when: dt.datetime, scv2: bytes) -> None:
    scv2_attribute = der.tlv(0x30, cms_profile.ATTR_SIGNING_CERT_V2 + der.tlv(0x31, scv2))
    assert (cms_profile.signed_attributes(content, when, scv2_attribute)
            == _nested_signed_attributes(content, when, scv2_attribute))


def test_a_signing_certificate_naming_another_certificate_is_caught(soft: SoftSigner, pki: Pki) -> None:
    """Certificate substitution: the signature is good, but signing-certificate-v2 names another certificate.
    The profile reader declines it (not the attribute semper writes); the general parser reads it and
    check_integrity refuses it, hashing the signer certificate the statement carries."""
    other = SoftSigner(pki, "someone else").cert
    content = cms.canonical_json({"type": "order", "n": 1})
    when = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC)

    def build(signature: bytes) -> bytes:
        data = general_build(content, when, soft.cert, signature, [soft.cert])
        real = hashlib.sha256(soft.cert).digest()
        assert data.count(real) == 1
        return data.replace(real, hashlib.sha256(other).digest())          # same length: only the hash differs

    unsigned = cms.parse_signed_data(build(b"\x30\x06\x02\x01\x01\x02\x01\x01"))
    data = build(soft.key.sign(unsigned.signed_attrs, ec.ECDSA(hashes.SHA256())))
    assert cms_profile.read_statement(data) is None
    parts = cms.parse_signed_data(data)
    assert parts.signer_der == soft.cert
    with pytest.raises(cms.BadSignature, match="certificate substitution"):
        cms.check_integrity(parts)
    cms.check_integrity(cms.parse_signed_data(cms.sign_statement(soft, {"type": "order", "n": 1})))


@settings(max_examples=300, deadline=None)
@given(content=st.binary(max_size=200),
       when=times | st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31),
                                 timezones=st.timezones()),
       scv2_attribute=st.one_of(st.binary(min_size=1, max_size=300),
                                st.sampled_from([cms_profile._UTC_TIME_HEAD[:4], cms_profile._DIGEST_HEAD[:3],
                                                 cms_profile._UTC_TIME_HEAD + b"9", cms_profile._DIGEST_HEAD,
                                                 cms_profile.CONTENT_TYPE_ATTRIBUTE[:-1], b"\x30"])))
def test_the_per_signer_layout_writes_what_sorting_writes(content: bytes, when: dt.datetime,
                                                           scv2_attribute: bytes) -> None:
    """The signed attributes from a signer's layout (two holes in its constant bytes) are the four
    TLVs sorted, for any bytes in the signing-certificate-v2 place: also those whose DER order would be
    decided inside a hole (a prefix of a time's or a digest's head), which are sorted per statement."""
    assert (cms_profile.signed_attributes(content, when, scv2_attribute)
            == _nested_signed_attributes(content, when, scv2_attribute))


def test_a_layout_is_only_used_where_the_order_cannot_depend_on_the_holes() -> None:
    real = der.tlv(0x30, cms_profile.ATTR_SIGNING_CERT_V2 + der.tlv(0x31, b"\x30\x00"))
    assert cms_profile._utc_layout(real) is not None
    assert cms_profile._utc_layout(cms_profile._UTC_TIME_HEAD[:4]) is None        # a prefix of the time's head
    assert cms_profile._utc_layout(cms_profile._DIGEST_HEAD + b"x") is None       # the digest's head, then more


def _walk_only(data: bytes, monkeypatch: pytest.MonkeyPatch) -> cms_profile.ProfileParts | None:
    """read_statement with no learnt forms: every statement read TLV by TLV (the reader before forms)."""
    with monkeypatch.context() as m:
        m.setattr(cms_profile, "_FORMS", {})
        m.setattr(cms_profile, "_learn", lambda _set, _form: None)
        return cms_profile.read_statement(data)


def _mutated(data: bytes, how: str, at: int, cut: int, value: int) -> bytes:
    out = bytearray(data)
    i = at % len(out)
    if how == "flip":
        out[i] ^= 1 << (value % 8)
    elif how == "set":
        out[i] = value
    elif how == "cut":
        del out[cut % len(out):]
    elif how == "grow":
        out[i:i] = bytes([value])
    return bytes(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, when=times, extra=st.booleans(), at=st.integers(0, 10_000), cut=st.integers(0, 10_000),
       value=st.integers(0, 255), how=st.sampled_from(["flip", "set", "cut", "grow", "none"]),
       tail=st.booleans())
def test_a_learnt_form_reads_what_the_walk_reads(soft: SoftSigner, pki: Pki, body: dict, when: dt.datetime,
                                                 extra: bool, at: int, cut: int, value: int, how: str, tail: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement of a signer whose form was learnt is read as the TLV walk reads it: the same parts, or
    None for the same statements, valid or damaged anywhere (``tail``: in the certificates and SignerInfo,
    where the form's bytes are). Valid statements take the form's path."""
    extra_certs = [pki.root.public_bytes(Encoding.DER)] if extra else []
    data = cms.sign_statement(soft, body, extra_certs, signing_time=when)
    assert cms_profile.read_statement(data) is not None           # learns the form (or it was learnt)
    if tail:
        start = len(data) - 1500 if len(data) > 1500 else 0
        at = start + at % (len(data) - start)
    damaged = _mutated(data, how, at, cut, value)
    assert cms_profile.read_statement(damaged) == _walk_only(damaged, monkeypatch)
    if how == "none":
        matched = []
        real = cms_profile._Form.match

        def spy(self: cms_profile._Form, *args: object) -> cms_profile.ProfileParts | None:
            got = real(self, *args)  # type: ignore[arg-type]
            matched.append(got is not None)
            return got
        with monkeypatch.context() as m:
            m.setattr(cms_profile._Form, "match", spy)
            assert cms_profile.read_statement(damaged) is not None
        assert any(matched), "a statement of a known signer was not read by its form"


def test_every_bit_flip_after_the_content_reads_as_the_walk_reads_it(soft: SoftSigner, pki: Pki,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Exhaustively over the certificate set and the SignerInfo of one statement (where a form's fixed
    bytes and its holes are): a learnt form never reads a damaged statement otherwise than the walk."""
    data = cms.sign_statement(soft, {"type": "order", "n": 3}, signing_time=dt.datetime(2031, 5, 6, 7, 8, 9,
                                                                                       tzinfo=dt.UTC))
    assert cms_profile.read_statement(data) is not None
    content_end = data.index(soft.cert)
    differ = 0
    for i in range(content_end - 4, len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            mine, walked = cms_profile.read_statement(bytes(flipped)), _walk_only(bytes(flipped), monkeypatch)
            assert mine == walked, (i, bit)
            differ += walked is None
    assert differ > 0


def test_forms_are_per_signer_and_per_certificate_set(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two signers' statements, with and without an extra certificate, alternately: each is read with its own
    signer and certificates (a form of another signer or set never matches), and the forms kept are bounded."""
    monkeypatch.setattr(cms_profile, "_FORMS", {})
    monkeypatch.setattr(cms_profile, "FORMS_KEPT", 2)
    a, b = SoftSigner(pki, "form signer a"), SoftSigner(pki, "form signer b")
    root = pki.root.public_bytes(Encoding.DER)
    for _ in range(2):
        for signer, extra in ((a, []), (b, []), (a, [root]), (b, [root])):
            data = cms.sign_statement(signer, {"type": "offer", "who": signer.label}, extra)
            parts = cms_profile.read_statement(data)
            assert parts is not None and parts == _walk_only(data, monkeypatch)
            assert parts.signer == signer.cert and parts.certificates == tuple(sorted([signer.cert, *extra]))
            assert len(cms_profile._FORMS) <= 2


@settings(max_examples=1000, deadline=None)
@given(buf=st.binary(max_size=12) | st.sampled_from([b"\x04\x81\x05hello", b"\x04\x80hello\x00\x00", b"\x1f\x01\x00",
                                                      b"\x30\x82\x00\x01\x00", b"\x30\x81\x80" + b"x" * 128]),
       pos=st.integers(0, 4), tag=st.sampled_from([0x04, 0x30, 0xA0, 0x31]), end=st.none() | st.integers(0, 140))
def test_expect_refuses_what_read_refuses(buf: bytes, pos: int, tag: int, end: int | None) -> None:
    """der.expect writes read's checks out again (a call less per TLV): the same answers, the same refusals."""
    try:
        got, start, stop = der.read(buf, pos, end)
    except (der.DerError, IndexError) as e:
        with pytest.raises(type(e)) as mine:
            der.expect(buf, pos, tag, end)
        assert str(mine.value) == str(e)
        return
    if got == tag:
        assert der.expect(buf, pos, tag, end) == (start, stop)
    else:
        with pytest.raises(der.DerError, match="where"):
            der.expect(buf, pos, tag, end)


def test_statements_with_large_certificate_sets_leave_nothing_in_the_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 2026-12-07, finding 1: the reader learnt each signer's form, and the general parser loaded each
    certificate set, before any signature was checked, each memo keeping its own copy of the set the sender
    wrote. 1,000 refused statements of 16 MiB (the third party's limit) kept about 20 GB. A set larger than
    ``small_cache.MAX_BYTES`` is now read and not kept; a small one is still remembered."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    monkeypatch.setattr(cms_profile, "_FORMS", {})
    cms._load_certificates.cache_clear()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1234).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=9)).sign(key, hashes.SHA256()))
    cd = cert.public_bytes(Encoding.DER)
    issuer, serial = cms_profile._issuer_serial(cd)
    _h, scv2 = cms_profile._expected_scv2(cd)
    scv2_attr = der.tlv(0x30, cms_profile.ATTR_SIGNING_CERT_V2 + der.tlv(0x31, scv2))
    content = b'{"type":"offer"}'
    attrs = cms_profile.signed_attributes(content, now, scv2_attr)

    def statement(certs: list[bytes]) -> bytes:
        return cms_profile.assemble(content, attrs, bytes(70), issuer, serial, certs)   # a signature of zeros

    for i in range(3):
        filler = der.tlv(0x30, bytes([i]) * 1000)       # a distinct set of ~200 KB of filler each time
        assert cms_profile.read_statement(statement([cd] + [filler] * 200)) is not None
        copies = statement([cd] * (60 + i))              # a distinct set of real certificates, ~20 KB and more
        assert cms_profile.read_statement(copies) is not None
        assert len(cms.parse_statement(copies).certificates) == 60 + i
    assert cms_profile._FORMS == {}
    assert cms._load_certificates.cache_info().currsize == 0
    assert cms_profile.read_statement(statement([cd])) is not None          # a real set is still remembered
    assert len(cms_profile._FORMS) == 1
