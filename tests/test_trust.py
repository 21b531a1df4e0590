"""The verifier: chain to the CA root, validity at signing time, key usage, CRL, tampering."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms as a_cms
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from test_cms import (
    ORDER,
    PIN,
    Pki,
    card,
    card_b,
    open_piv,
    openssl_cms_verify,
    pki,
    signer,
)

from semper.client.support import cms
from semper.client.support.trust import (
    BadSignature,
    EvidenceError,
    MalformedStatement,
    RevokedSigner,
    TrustStore,
    UntrustedSigner,
    WrongKeyUsage,
)
from semper.client.support.verify import verify_statement
from semper.hardware.piv import PivSession, PivSigner, Slot

NOW = dt.datetime.now(dt.UTC)


def _serial(signer: PivSigner) -> int:
    return x509.load_der_x509_certificate(signer.certificate()).serial_number


def test_card_statement_verifies_with_crl(signer: PivSigner, pki: Pki) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    v = verify_statement(der, TrustStore([pki.root], [pki.crl()]))
    assert v.body == ORDER and v.type == "order"
    assert [c.subject for c in v.chain] == [v.signer.subject, pki.root.subject]
    assert v.revocation.checked and v.notes == ()
    assert v.timestamp is None and abs((v.checked_at - v.signing_time).total_seconds()) < 1


def test_without_crl_the_result_says_revocation_was_not_checked(signer: PivSigner, pki: Pki) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    v = verify_statement(der, TrustStore([pki.root]))
    assert not v.revocation.checked
    assert "revocation not checked" in v.notes[0]
    with pytest.raises(UntrustedSigner, match="no CRL from"):
        verify_statement(der, TrustStore([pki.root], require_crl=True))


def test_revoked_signer_is_refused_naming_serial_and_date(signer: PivSigner, pki: Pki, tmp_path: Path) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    serial = _serial(signer)
    when = (NOW - dt.timedelta(days=1)).replace(microsecond=0)
    crl = pki.crl([(serial, when)], reason=x509.ReasonFlags.key_compromise)
    with pytest.raises(RevokedSigner) as e:
        verify_statement(der, TrustStore([pki.root], [crl]))
    msg = str(e.value)
    assert f"serial {serial:X}" in msg and when.strftime("%Y-%m-%d %H:%M:%S") in msg and "keyCompromise" in msg
    # a listing in any CRL from the CA counts: another CRL without the entry does not undo it
    older = pki.crl()
    with pytest.raises(RevokedSigner):
        verify_statement(der, TrustStore([pki.root], [older, crl]))
    # openssl agrees when asked to check the CRL (openssl cms reads CRLs from the CA file)
    with_crl = tmp_path / "root+crl.pem"
    with_crl.write_bytes(pki.root_pem.read_bytes() + crl.public_bytes(Encoding.PEM))
    r = openssl_cms_verify(der, with_crl, tmp_path, "-crl_check")
    assert r.returncode != 0 and b"certificate revoked" in r.stderr
    with_crl.write_bytes(pki.root_pem.read_bytes() + older.public_bytes(Encoding.PEM))
    assert openssl_cms_verify(der, with_crl, tmp_path, "-crl_check").returncode == 0


def test_other_certificates_on_the_crl_do_not_matter(signer: PivSigner, pki: Pki) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    v = verify_statement(der, TrustStore([pki.root], [pki.crl([(_serial(signer) + 1, NOW)])]))
    assert v.revocation.checked


def test_a_chains_revocation_is_worked_out_once_per_store_and_never_outlives_its_crls(
        signer: PivSigner, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same signers come with every statement a party checks, and the verdict on a chain depends on the
    chain and the store's CRLs alone: their lookup (each CRL's signature checked against its issuer, an ECDSA
    verification per CRL) is done once per chain and store (docs/performance.md). A refusal is never kept, a
    store with a newer CRL (``with_crls``) or CRLs replaced under the store starts again, and a statement with a
    time-stamp (revocation judged against its time) is looked up each time."""
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    store = TrustStore([pki.root], [pki.crl()])
    looked: list[x509.Certificate] = []
    real = TrustStore._crls_for

    def counted(self: TrustStore, cert: x509.Certificate, issuer: x509.Certificate) -> Any:
        looked.append(cert)
        return real(self, cert, issuer)
    monkeypatch.setattr(TrustStore, "_crls_for", counted)
    first, again = verify_statement(der, store), verify_statement(der, store)
    assert first.revocation == again.revocation and first.revocation.checked and len(looked) == 1
    # the same CA's next CRL lists the signer: a store with it refuses at once, and so does the first store
    # once its CRLs are replaced
    revoked = pki.crl([(_serial(signer), NOW - dt.timedelta(hours=1))])
    with pytest.raises(RevokedSigner):
        verify_statement(der, store.with_crls([revoked]))
    store.crls = (revoked,)
    for _ in range(2):
        with pytest.raises(RevokedSigner):
            verify_statement(der, store)
    # CRLs replaced while a verdict was being worked out from the old ones (review of 2026-12-08): that
    # verdict is the call's answer, and is not kept for the new CRLs
    store = TrustStore([pki.root], [pki.crl()])
    swapped: list[bool] = []

    def replaced_meanwhile(self: TrustStore, cert: x509.Certificate, issuer: x509.Certificate) -> Any:
        found = real(self, cert, issuer)
        if not swapped:
            swapped.append(True)
            self.crls = (revoked,)
        return found
    monkeypatch.setattr(TrustStore, "_crls_for", replaced_meanwhile)
    assert verify_statement(der, store).revocation.checked         # read from the CRLs it started with
    with pytest.raises(RevokedSigner):
        verify_statement(der, store)
    monkeypatch.setattr(TrustStore, "_crls_for", counted)
    # the rule changed on the store: a chain no CRL covers is refused from then on, not answered from the memo
    lax = TrustStore([pki.root])
    assert not verify_statement(der, lax).revocation.checked
    lax.require_crl = True
    with pytest.raises(UntrustedSigner, match="no CRL from"):
        verify_statement(der, lax)
    # with a proven time the verdict depends on it: not remembered
    chain = first.chain
    looked.clear()
    store = TrustStore([pki.root], [pki.crl()])
    for _ in range(2):
        store.check_revocation(chain, proven_time=NOW)
    assert len(looked) == 2


def test_crl_with_a_bad_signature_is_not_believed(signer: PivSigner, pki: Pki) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    forged = pki.crl(key=ec.generate_private_key(ec.SECP256R1()))        # right issuer name, wrong key
    with pytest.raises(UntrustedSigner, match="invalid signature"):
        verify_statement(der, TrustStore([pki.root], [forged]))


def test_authentication_key_lacks_non_repudiation(card: PivSession, pki: Pki) -> None:
    card.verify_pin(PIN)
    der = cms.sign_statement(PivSigner(card, Slot.AUTHENTICATION), ORDER)
    with pytest.raises(WrongKeyUsage, match="nonRepudiation"):
        verify_statement(der, TrustStore([pki.root]))
    v = verify_statement(der, TrustStore([pki.root]), require_non_repudiation=False)
    assert v.type == "order"
    with pytest.raises(WrongKeyUsage, match="nonRepudiation"):     # a pass is remembered for its usage only
        verify_statement(der, TrustStore([pki.root]))


def test_time_stamping_certificate_may_not_sign_statements(card: PivSession, pki: Pki) -> None:
    card.verify_pin(PIN)
    auth = PivSigner(card, Slot.AUTHENTICATION)
    tsa_cert = pki.issue(auth.public_point(), "tsa", non_repudiation=True,
                         eku=[x509.oid.ExtendedKeyUsageOID.TIME_STAMPING], eku_critical=True)
    der = cms.build_signed_data(auth, cms.STATEMENT_OID, cms.canonical_json(ORDER),
                                signer_cert=tsa_cert.public_bytes(Encoding.DER))
    with pytest.raises(WrongKeyUsage, match="time-stamping"):
        verify_statement(der, TrustStore([pki.root]))


def test_signer_from_another_ca_is_untrusted(pki: Pki, tmp_path: Path) -> None:
    for session in open_piv(pki.foreign, tmp_path):
        der = cms.sign_statement(PivSigner(session), ORDER, pin=PIN)
    with pytest.raises(UntrustedSigner, match="does not chain to a trusted root"):
        verify_statement(der, TrustStore([pki.root]))


def test_certificate_not_valid_at_signing_time(card: PivSession, pki: Pki) -> None:
    card.verify_pin(PIN)
    auth = PivSigner(card, Slot.AUTHENTICATION)
    start = NOW + dt.timedelta(days=1)
    cert = pki.issue(auth.public_point(), "not yet valid", not_before=start, days=2)
    der = cms.build_signed_data(auth, cms.STATEMENT_OID, cms.canonical_json(ORDER),
                                signer_cert=cert.public_bytes(Encoding.DER))
    with pytest.raises(UntrustedSigner, match="was not valid at"):
        verify_statement(der, TrustStore([pki.root]))
    # claimed to be signed while the certificate is valid, and checked for that time: accepted;
    # checked for another time (``at``): refused
    card.verify_pin(PIN)
    claimed = start + dt.timedelta(hours=1)
    der = cms.build_signed_data(auth, cms.STATEMENT_OID, cms.canonical_json(ORDER), signing_time=claimed,
                                signer_cert=cert.public_bytes(Encoding.DER))
    assert verify_statement(der, TrustStore([pki.root])).checked_at == claimed.replace(microsecond=0)
    with pytest.raises(UntrustedSigner, match="was not valid at"):
        verify_statement(der, TrustStore([pki.root]), at=NOW)
    with pytest.raises(UntrustedSigner, match="was not valid at"):
        verify_statement(der, TrustStore([pki.root]), at=start + dt.timedelta(days=3))


def _replace(der: bytes, old: bytes, new: bytes) -> bytes:
    assert der.count(old) == 1 and len(old) == len(new)
    return der.replace(old, new)


def test_tampered_content_byte_is_refused(signer: PivSigner, pki: Pki, tmp_path: Path) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    bad = _replace(der, b'"amount":1999', b'"amount":9999')               # still canonical JSON
    with pytest.raises(BadSignature, match="content was altered"):
        verify_statement(bad, TrustStore([pki.root]))
    r = openssl_cms_verify(bad, pki.root_pem, tmp_path)
    assert r.returncode != 0 and b"content verify error" in r.stderr


def test_tampered_signed_attribute_or_signature_is_refused(signer: PivSigner, pki: Pki) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    si = a_cms.ContentInfo.load(der)["content"]["signer_infos"][0]
    sig = si["signature"].native
    bad_sig = _replace(der, sig[-8:], bytes(b ^ 0x01 for b in sig[-8:]))
    with pytest.raises((BadSignature, MalformedStatement)):
        verify_statement(bad_sig, TrustStore([pki.root]))
    when = next(a for a in si["signed_attrs"] if a["type"].native == "signing_time")["values"][0].chosen.contents
    later = bytes(when[:-3]) + bytes([when[-3] ^ 0x01]) + bytes(when[-2:])   # one second digit changed
    with pytest.raises(BadSignature, match="signature does not verify"):
        verify_statement(_replace(der, bytes(when), later), TrustStore([pki.root]))


def test_trust_store_input_errors(tmp_path: Path, pki: Pki, signer: PivSigner) -> None:
    with pytest.raises(EvidenceError, match="cannot read the CA file"):
        TrustStore.from_files(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate")
    with pytest.raises(EvidenceError, match="no readable X.509 certificate"):
        TrustStore.from_files(junk)
    with pytest.raises(EvidenceError, match="not a self-signed root"):
        TrustStore([signer.certificate()])
    with pytest.raises(EvidenceError, match="at least one"):
        TrustStore([])
    crl = tmp_path / "crl.der"
    crl.write_bytes(pki.crl().public_bytes(Encoding.DER))
    store = TrustStore.from_files(pki.root_pem, [crl])
    assert store.roots == (pki.root,) and len(store.crls) == 1


def test_certificates_from_the_project_ca_with_its_key_in_a_token(card: PivSession, pki: Pki, tmp_path: Path) -> None:
    """The real issuing code (client/support/pki.py, CA key in SoftHSM2) certifies the card's 9C key;
    the certificate is written onto the card, as registration does, and statements verify under it."""
    ca_pki = pytest.importorskip("semper.client.support.pki")
    from test_cms import hsm_token
    ca_signer = hsm_token(tmp_path, pki, label="semper-ca", common_name=None)
    try:
        root_der = ca_pki.build_ca_certificate(ca_signer, "semper CA under test")
        ca = ca_pki.CaIdentity(ca_signer, root_der)
        card.verify_pin(PIN)
        key = PivSigner(card)
        serial = ca_pki.new_serial()
        person = ca_pki.build_certificate(ca, ca_pki.Subject("Alice Buyer", "person", "alice@example.org"),
                                          key.public_point(), serial=serial, days=30, crl_url="http://127.0.0.1:1/crl")
        card.put_certificate(Slot.SIGNATURE, person)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        empty = ca_pki.build_crl(ca, [], number=1, this_update=now, next_update=now + dt.timedelta(days=7))
        revoked = ca_pki.build_crl(ca, [ca_pki.Revoked(serial, now - dt.timedelta(minutes=1), "key_compromise")],
                                   number=2, this_update=now, next_update=now + dt.timedelta(days=7))
    finally:
        ca_signer.close()
    root = x509.load_der_x509_certificate(root_der)
    der = cms.sign_statement(key, ORDER, pin=PIN)
    v = verify_statement(der, TrustStore([root], [empty]))
    assert v.signer.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == "Alice Buyer"
    assert v.revocation.checked
    root_pem = tmp_path / "ca.pem"
    root_pem.write_bytes(root.public_bytes(Encoding.PEM))
    r = openssl_cms_verify(der, root_pem, tmp_path)
    assert r.returncode == 0, r.stderr
    with pytest.raises(RevokedSigner, match=f"serial {serial:X}.*keyCompromise"):
        verify_statement(der, TrustStore([root], [empty, revoked]))
    with pytest.raises(UntrustedSigner):
        verify_statement(der, TrustStore([pki.root]))                       # the scheme root does not vouch for it


def test_statement_made_by_openssl_verifies_in_semper(pki: Pki, tmp_path: Path) -> None:
    """Interoperability the other way: openssl (CAdES, ESS signing-certificate-v2) signs, semper verifies."""
    from cryptography.hazmat.primitives import serialization
    from test_cms import openssl
    assert openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", tmp_path / "k.pem").returncode == 0
    key = serialization.load_pem_private_key((tmp_path / "k.pem").read_bytes(), None)
    point = key.public_key().public_bytes(Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    (tmp_path / "c.pem").write_bytes(pki.issue(point, "openssl signer").public_bytes(Encoding.PEM))
    (tmp_path / "st.json").write_bytes(cms.canonical_json({"type": "offer", "deal": "d-7", "price": 12}))
    r = openssl("cms", "-sign", "-binary", "-nodetach", "-cades", "-md", "sha256", "-econtent_type", cms.STATEMENT_OID,
                "-in", tmp_path / "st.json", "-signer", tmp_path / "c.pem", "-inkey", tmp_path / "k.pem",
                "-outform", "DER", "-out", tmp_path / "st.der")
    assert r.returncode == 0, r.stderr
    v = verify_statement((tmp_path / "st.der").read_bytes(), TrustStore([pki.root], [pki.crl()]))
    assert v.body == {"type": "offer", "deal": "d-7", "price": 12} and v.signer_name == "CN=openssl signer"


def _padded_certificate(size: int, name: str) -> x509.Certificate:
    """A self-made certificate carrying ``size`` bytes in a non-critical extension of no meaning."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID, ObjectIdentifier
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                                      b"\x04\x00" + b"x" * size), critical=False)
            .sign(key, hashes.SHA256()))


def test_large_certificates_are_checked_and_not_kept(signer: PivSigner, pki: Pki) -> None:
    """Review of 2026-12-07: the wording of a *refused* certificate was memoised with the certificate (512 of
    them; 16 MiB each at the third party: 8 GiB), and a chain with every certificate the statement carried (a
    valid signer could pad its own statements). Certificates over small_cache.MAX_BYTES are refused or chained
    as before and kept by neither memo; certificates of a real size still are."""
    from semper.client.support import trust
    store = TrustStore([pki.root], [pki.crl()])
    trust._described.cache_clear()
    big = _padded_certificate(64 * 1024, "mallory")
    for _ in range(2):
        with pytest.raises(UntrustedSigner, match="mallory"):
            store.chain(big, [], dt.datetime.now(dt.UTC))
    assert trust._described.cache_info().currsize == 0
    mine = x509.load_der_x509_certificate(signer.certificate())
    padding = [_padded_certificate(64 * 1024, f"filler {i}") for i in range(2)]
    assert store.chain(mine, padding, dt.datetime.now(dt.UTC))[0] == mine
    assert store._chains == {}
    assert store.chain(mine, [], dt.datetime.now(dt.UTC))[0] == mine          # a real one is remembered
    assert len(store._chains) == 1
    assert trust.describe(mine) and trust._described.cache_info().currsize == 1
