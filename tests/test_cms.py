"""Signed statements (CMS SignedData) made on the PIV card (and a SoftHSM2 token when hsm/ is there).

The CA under test is the purse scheme's root (its key on the scheme's SoftHSM2 token: odd
certificates and CRLs are built with cryptography, then signed again by the root on the token); the
signers are real: the simulated card's PIV applet in process, and PKCS#11 over SoftHSM2. Every
statement is also checked by ``openssl cms -verify``. The fixtures here are shared with
test_trust, test_tsa and test_archive.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import cms as a_cms
from asn1crypto import crl as a_crl
from asn1crypto import x509 as a_x509
from conftest import SCHEME_PIN
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from semper.client.support import cms
from semper.client.support.personalisation import CardProfile, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware import errors as hw
from semper.hardware.piv import PivSession, PivSigner
from semper.hardware.signer import sign_message
from semper.hardware.simulator import open_card

PIN, PUK = b"123456", b"12345678"
OPENSSL_TIMEOUT = 30


# ---- shared fixtures -------------------------------------------------------------------------------
@dataclass
class Pki:
    """The CA under test (the scheme root), its root as PEM, and issued card images."""

    folder: Path
    scheme: Scheme
    root_pem: Path
    card_a: Path             # the owner's card
    card_b: Path             # another holder, same CA
    foreign: Path            # a card of an unrelated CA

    @property
    def root(self) -> x509.Certificate:
        return self.scheme.root_cert

    def crl(self, revoked: list[tuple[int, dt.datetime]] = (), *,
            key: ec.EllipticCurvePrivateKey | None = None, reason: x509.ReasonFlags | None = None
            ) -> x509.CertificateRevocationList:
        now = dt.datetime.now(dt.UTC)
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.root.subject)
             .last_update(now - dt.timedelta(minutes=1)).next_update(now + dt.timedelta(days=7)))
        for serial, when in revoked:
            rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
            if reason is not None:
                rb = rb.add_extension(x509.CRLReason(reason), critical=False)
            b = b.add_revoked_certificate(rb.build())
        if key is not None:
            return b.sign(key, hashes.SHA256())
        draft = b.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        signature = sign_message(self.scheme.root_signer, draft.tbs_certlist_bytes)
        return x509.load_der_x509_crl(a_crl.CertificateList({
            "tbs_cert_list": a_crl.TbsCertList.load(draft.tbs_certlist_bytes),
            "signature_algorithm": {"algorithm": "sha256_ecdsa"}, "signature": signature}).dump())

    def issue(self, point: bytes, common_name: str, *, digital_signature: bool = True, non_repudiation: bool = True,
              eku: list[x509.ObjectIdentifier] | None = None, eku_critical: bool = False,
              not_before: dt.datetime | None = None, days: int = 30) -> x509.Certificate:
        """A certificate from the CA under test for a key that lives on a card or token."""
        now = dt.datetime.now(dt.UTC)
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        start = not_before or now - dt.timedelta(hours=1)
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
             .issuer_name(self.root.subject).public_key(public).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature, non_repudiation, False, False, False, False, False,
                                          False, False), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root.public_key()),
                            critical=False))
        if eku is not None:
            b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=eku_critical)
        draft = b.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())     # the builder needs a software key
        tbs = draft.tbs_certificate_bytes
        return x509.load_der_x509_certificate(a_x509.Certificate({
            "tbs_certificate": a_x509.TbsCertificate.load(tbs), "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature_value": sign_message(self.scheme.root_signer, tbs)}).dump())

    def tsa_cert(self, point: bytes, **kw: object) -> x509.Certificate:
        return self.issue(point, "semper third party TSA", non_repudiation=False,
                          eku=[ExtendedKeyUsageOID.TIME_STAMPING], eku_critical=True, **kw)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("evidence-pki")
    scheme = Scheme.load_or_create(folder / "scheme", SCHEME_PIN)
    root_pem = folder / "root.pem"
    root_pem.write_bytes(scheme.root_cert.public_bytes(Encoding.PEM))
    for name in ("a.card", "b.card"):
        personalise_purse_card(folder / name, scheme, CardProfile(PIN, PUK), sync=False)
    with Scheme.load_or_create(folder / "foreign-scheme", SCHEME_PIN) as foreign:
        personalise_purse_card(folder / "foreign.card", foreign, CardProfile(PIN, PUK), sync=False)
    return Pki(folder, scheme, root_pem, folder / "a.card", folder / "b.card", folder / "foreign.card")


def open_piv(image: Path, tmp_path: Path, name: str = "card") -> Iterator[PivSession]:
    """A private copy of a card image (fresh PIN counters) opened in process."""
    copy = tmp_path / name
    shutil.copyfile(image, copy)
    with open_card(copy, sync=False) as conn:
        yield PivSession(conn)


@pytest.fixture
def card(pki: Pki, tmp_path: Path) -> Iterator[PivSession]:
    yield from open_piv(pki.card_a, tmp_path, "a.card")


@pytest.fixture
def card_b(pki: Pki, tmp_path: Path) -> Iterator[PivSession]:
    yield from open_piv(pki.card_b, tmp_path, "b.card")


@pytest.fixture
def signer(card: PivSession) -> PivSigner:
    return PivSigner(card)


def openssl(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *map(str, args)], input=stdin, capture_output=True, timeout=OPENSSL_TIMEOUT,
                          check=False)


def openssl_cms_verify(der: bytes, root_pem: Path, folder: Path,
                       *extra: str | Path) -> subprocess.CompletedProcess[bytes]:
    path = folder / f"statement-{hashlib.sha256(der).hexdigest()[:12]}.der"
    path.write_bytes(der)
    return openssl("cms", "-verify", "-inform", "DER", "-in", path, "-CAfile", root_pem, *extra)


def hsm_token(tmp_path: Path, pki: Pki, label: str = "evidence",
              common_name: str | None = "semper seller token"):
    """A logged-in SoftHSM2 token (own folder) with a key on it, certified by the CA under test when
    ``common_name`` is given; skip when hsm/ or SoftHSM2 is not there."""
    signer_mod = pytest.importorskip("semper.hsm.signer")
    softhsm = pytest.importorskip("semper.hsm.softhsm")
    if shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed")
    store = softhsm.SoftHsmStore.in_folder(tmp_path / f"softhsm-{label}")
    token = softhsm.provision(store, label, b"4321", b"87654321")
    signer = signer_mod.Pkcs11Signer.open(label, softhsm_conf=store.conf)
    signer.verify_pin(b"4321")
    if common_name is not None:
        signer.store_certificate(pki.issue(token.public_point, common_name).public_bytes(Encoding.DER))
    return signer


# ---- statements on the card ------------------------------------------------------------------------
ORDER = {"type": "order", "deal": "d-1", "amount": 1999, "currency": "EUR", "item": "Fahrrad grün"}


def test_card_statement_round_trip(signer: PivSigner) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    st = cms.parse_statement(der)
    assert st.body == ORDER and st.type == "order"
    assert st.content == '{"amount":1999,"currency":"EUR","deal":"d-1","item":"Fahrrad grün","type":"order"}'.encode()
    assert before <= st.signing_time <= dt.datetime.now(dt.UTC)
    assert st.signer_cert.public_bytes(Encoding.DER) == signer.certificate()
    cms.check_integrity(st.parts)


def test_openssl_cms_verify_accepts_card_statement(signer: PivSigner, pki: Pki, tmp_path: Path) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    r = openssl_cms_verify(der, pki.root_pem, tmp_path)
    assert r.returncode == 0, r.stderr
    assert b"Verification successful" in r.stderr
    assert r.stdout == cms.canonical_json(ORDER)


def test_openssl_refuses_statement_from_untrusted_ca(pki: Pki, tmp_path: Path) -> None:
    for session in open_piv(pki.foreign, tmp_path):
        der = cms.sign_statement(PivSigner(session), ORDER, pin=PIN)
    r = openssl_cms_verify(der, pki.root_pem, tmp_path)
    assert r.returncode != 0 and b"certificate verify error" in r.stderr


def test_signed_data_structure(signer: PivSigner) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    info = a_cms.ContentInfo.load(der, strict=True)
    sd = info["content"]
    assert sd["version"].native == "v3"                                     # eContentType is not id-data
    assert sd["encap_content_info"]["content_type"].dotted == cms.STATEMENT_OID
    assert cms.STATEMENT_OID.startswith("2.25.204673179289492764569138234192898414436.2.")
    assert sd["digest_algorithms"][0]["parameters"].native is None         # RFC 5754: absent
    si = sd["signer_infos"][0]
    attrs = {a["type"].native: a["values"] for a in si["signed_attrs"]}
    assert set(attrs) == {"content_type", "signing_time", "message_digest", "signing_certificate_v2"}
    assert all(len(v) == 1 for v in attrs.values())
    assert attrs["message_digest"][0].native == hashlib.sha256(cms.canonical_json(ORDER)).digest()
    ess = attrs["signing_certificate_v2"][0]["certs"][0]
    assert ess["cert_hash"].native == hashlib.sha256(signer.certificate()).digest()
    signer_cert = x509.load_der_x509_certificate(signer.certificate())
    assert ess["issuer_serial"]["serial_number"].native == signer_cert.serial_number
    certs = [c.chosen.dump() for c in sd["certificates"]]
    assert certs == [signer.certificate()]
    assert si["signature_algorithm"]["algorithm"].native == "sha256_ecdsa"
    # the signed attributes are DER: re-encoding them from scratch gives the same bytes
    signed = si["signed_attrs"].untag().dump()
    assert a_cms.CMSAttributes.load(signed).dump(force=True) == signed


def test_extra_certificates_travel_with_the_statement(signer: PivSigner, pki: Pki) -> None:
    der = cms.sign_statement(signer, ORDER, extra_certs=[pki.root, signer.certificate()], pin=PIN)
    st = cms.parse_statement(der)
    assert len(st.certificates) == 2                                       # a SET: no duplicates, any order
    assert {c.subject for c in st.certificates} == {st.signer_cert.subject, pki.root.subject}


def test_key_9c_needs_the_pin_for_every_signature(signer: PivSigner) -> None:
    cms.sign_statement(signer, ORDER, pin=PIN)
    with pytest.raises(hw.CardError):
        cms.sign_statement(signer, ORDER)                 # the verification was used up by the first signature
    with pytest.raises(hw.WrongPinError) as e:
        cms.sign_statement(signer, ORDER, pin=b"000000")
    assert e.value.tries_left == 2


def test_signer_whose_certificate_is_for_another_key_is_refused(card: PivSession, card_b: PivSession) -> None:
    other = PivSigner(card_b).certificate()

    class Mislabelled(PivSigner):
        def certificate(self) -> bytes:
            return other

    with pytest.raises(cms.SigningError, match="does not match its certificate"):
        cms.sign_statement(Mislabelled(card), ORDER, pin=PIN)


# ---- canonical JSON ----------------------------------------------------------------------------------
def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert cms.canonical_json({"z": [1, {"b": None, "a": True}], "type": "offer", "é": "ü"}) == \
        '{"type":"offer","z":[1,{"a":true,"b":null}],"é":"ü"}'.encode()


@pytest.mark.parametrize("statement,message", [
    ({"amount": 1}, "needs a 'type'"),
    ({"type": "Offer"}, "needs a 'type'"),
    ({"type": ""}, "needs a 'type'"),
    ({"type": "offer", "price": 1.5}, "floating-point"),
    ({"type": "offer", "n": 2**60}, "too large"),
    ({"type": "offer", "blob": b"\x00"}, "cannot go into signed JSON"),
    ({"type": "offer", 3: "x"}, "keys must be strings"),
    (["offer"], "JSON object"),
])
def test_canonical_json_refuses(statement: object, message: str) -> None:
    with pytest.raises(cms.MalformedStatement, match=message):
        cms.canonical_json(statement)


@pytest.mark.parametrize("content,message", [
    (b'{"type": "offer"}', "canonical"),
    (b'{"type":"offer","type":"order"}', "repeats the key"),
    (b'{"a":1.0,"type":"offer"}', "non-integer"),
    (b'["offer"]', "not a JSON object"),
    (b'\xff', "not UTF-8"),
])
def test_parse_refuses_non_canonical_content(signer: PivSigner, content: bytes, message: str) -> None:
    der = cms.build_signed_data(signer, cms.STATEMENT_OID, content, pin=PIN)
    cms.check_integrity(cms.parse_signed_data(der))                       # properly signed, yet not a statement
    with pytest.raises(cms.MalformedStatement, match=message):
        cms.parse_statement(der)


def test_parse_refuses_garbage_and_other_cms(signer: PivSigner) -> None:
    good = cms.sign_statement(signer, ORDER, pin=PIN)
    for bad in (b"", b"\x30\x03\x02\x01", good[:-1], good + b"\x00", b"\x00" * 40):
        with pytest.raises(cms.MalformedStatement):
            cms.parse_statement(bad)
    data = cms.build_signed_data(signer, "data", cms.canonical_json(ORDER), pin=PIN)
    with pytest.raises(cms.MalformedStatement, match="content of type data"):
        cms.parse_statement(data)


def test_detached_or_unsigned_attribute_free_statements_are_refused(signer: PivSigner) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    info = a_cms.ContentInfo.load(der)
    sd = info["content"]
    detached = a_cms.ContentInfo({"content_type": "signed_data", "content": a_cms.SignedData({
        "version": sd["version"], "digest_algorithms": sd["digest_algorithms"],
        "encap_content_info": {"content_type": sd["encap_content_info"]["content_type"]},
        "certificates": sd["certificates"], "signer_infos": sd["signer_infos"]})}).dump()
    with pytest.raises(cms.MalformedStatement, match="detached"):
        cms.parse_statement(detached)


# ---- the same on a PKCS#11 token ---------------------------------------------------------------------
def test_token_statement_verified_by_semper_and_openssl(tmp_path: Path, pki: Pki) -> None:
    from semper.client.support.trust import TrustStore
    from semper.client.support.verify import verify_statement
    signer = hsm_token(tmp_path, pki)
    try:
        der = cms.sign_statement(signer, {"type": "offer", "deal": "d-2", "price": 500})
    finally:
        signer.close()
    verified = verify_statement(der, TrustStore([pki.root], [pki.crl()]))
    assert verified.signer_name == "CN=semper seller token" and verified.revocation.checked
    r = openssl_cms_verify(der, pki.root_pem, tmp_path)
    assert r.returncode == 0, r.stderr
