"""RFC 3161 time-stamps: the third party's TSA signing on a card key, checked by semper and by openssl ts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from asn1crypto import cms as a_cms
from asn1crypto import tsp
from cryptography import x509
from test_cms import (
    ORDER,
    PIN,
    Pki,
    card,
    card_b,
    open_piv,
    openssl,
    openssl_cms_verify,
    pki,
    signer,
)

from semper.client.support import cms, tsa
from semper.client.support.trust import BadTimestamp, RevokedSigner, TrustStore, WrongKeyUsage
from semper.client.support.verify import verify_statement
from semper.hardware.piv import PivSession, PivSigner, Slot


@pytest.fixture
def tsa_card(pki: Pki, tmp_path: Path) -> Iterator[PivSession]:
    """The third party's card: its PIV authentication key (PIN once per session) serves the TSA."""
    yield from open_piv(pki.card_b, tmp_path, "tsa.card")


@pytest.fixture
def authority(tsa_card: PivSession, pki: Pki) -> tsa.TimeStampAuthority:
    tsa_card.verify_pin(PIN)
    key = PivSigner(tsa_card, Slot.AUTHENTICATION, label="third-party card")
    return tsa.TimeStampAuthority(key, pki.tsa_cert(key.public_point()))


@pytest.fixture
def trust(pki: Pki) -> TrustStore:
    return TrustStore([pki.root], [pki.crl()])


def _status(resp: bytes) -> dict:
    return tsa.TimeStampResponse.load(resp).native["status"]


def test_response_verified_by_semper_and_openssl_ts(authority: tsa.TimeStampAuthority, trust: TrustStore,
                                                    pki: Pki, tmp_path: Path) -> None:
    data = b"the bytes to be time-stamped"
    req = tsa.make_request(data)
    resp = authority.respond(req.der)
    info = tsa.check_response(resp, req, trust)
    assert info.tsa_name == "CN=semper third party TSA" and info.policy == tsa.TSA_POLICY_OID
    assert abs((info.gen_time - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    assert info.nonce == req.nonce and info.revocation_checked
    (tmp_path / "resp.der").write_bytes(resp)
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "req.tsq").write_bytes(req.der)
    r = openssl("ts", "-verify", "-in", tmp_path / "resp.der", "-data", tmp_path / "data", "-CAfile", pki.root_pem)
    assert r.returncode == 0 and b"Verification: OK" in r.stdout, r.stderr
    r = openssl("ts", "-verify", "-in", tmp_path / "resp.der", "-queryfile", tmp_path / "req.tsq",
                "-CAfile", pki.root_pem)                                       # also checks the nonce
    assert r.returncode == 0 and b"Verification: OK" in r.stdout, r.stderr
    r = openssl("ts", "-verify", "-in", tmp_path / "resp.der", "-data", tmp_path / "resp.der", "-CAfile", pki.root_pem)
    assert r.returncode != 0                                                  # other data: refused
    text = openssl("ts", "-reply", "-in", tmp_path / "resp.der", "-text").stdout
    assert b"Status: Granted." in text and tsa.TSA_POLICY_OID.encode() in text and b"Accuracy: 0x01 seconds" in text


def test_openssl_made_request_is_answered(authority: tsa.TimeStampAuthority, pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"openssl asks")
    r = openssl("ts", "-query", "-data", tmp_path / "data", "-sha256", "-cert", "-out", tmp_path / "req.tsq")
    assert r.returncode == 0, r.stderr
    (tmp_path / "resp.der").write_bytes(authority.respond((tmp_path / "req.tsq").read_bytes()))
    r = openssl("ts", "-verify", "-in", tmp_path / "resp.der", "-queryfile", tmp_path / "req.tsq",
                "-CAfile", pki.root_pem)
    assert r.returncode == 0 and b"Verification: OK" in r.stdout, r.stderr


def test_without_cert_req_the_token_carries_no_certificate(authority: tsa.TimeStampAuthority,
                                                           trust: TrustStore) -> None:
    req = tsa.make_request(b"x", cert_req=False)
    resp = authority.respond(req.der)
    assert _status(resp)["status"] == "granted"
    with pytest.raises(cms.MalformedStatement, match="certificate is not included"):
        tsa.check_response(resp, req, trust)


@pytest.mark.parametrize("make,fail", [
    (lambda: b"\x30\x03\x02\x01\x01", "bad_data_format"),
    (lambda: b"junk", "bad_data_format"),
    (lambda: tsa.make_request(b"x", algorithm="sha256").der.replace(b"\x02\x01\x01", b"\x02\x01\x02", 1),
     "bad_request"),
    (lambda: tsp.TimeStampReq({"version": "v1", "message_imprint": {"hash_algorithm": {"algorithm": "sha1"},
                                                                     "hashed_message": b"\x00" * 20}}).dump(),
                                                                     "bad_alg"),
    (lambda: tsa.make_request(digest=b"\x00" * 31).der, "bad_data_format"),
    (lambda: tsa.make_request(b"x", policy="1.2.3.4").der, "unaccepted_policy"),
    (lambda: tsp.TimeStampReq({"version": "v1", "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                                                                     "hashed_message": b"\x00" * 32},
                               "extensions": [{"extn_id": "1.2.3.4", "extn_value": b"\x05\x00"}]}).dump(),
     "unaccepted_extensions"),
])
def test_bad_requests_are_refused_with_a_reason(authority: tsa.TimeStampAuthority, make,
                                                fail: str) -> None:
    status = _status(authority.respond(make()))
    assert status["status"] == "rejection" and status["fail_info"] == {fail} and status["status_string"]


def test_client_reports_refusal_and_mismatches(authority: tsa.TimeStampAuthority, trust: TrustStore) -> None:
    req = tsa.make_request(b"x", policy="1.2.3.4")
    with pytest.raises(BadTimestamp, match="refused the request: rejection .*unaccepted_policy"):
        tsa.check_response(authority.respond(req.der), req, trust)
    req = tsa.make_request(b"x")
    other = tsa.make_request(b"x")
    with pytest.raises(BadTimestamp, match="nonce mismatch"):
        tsa.check_response(authority.respond(other.der), req, trust)
    resp = authority.respond(req.der)
    token = tsa.TimeStampResponse.load(resp)["time_stamp_token"].dump()
    with pytest.raises(BadTimestamp, match="covers other data"):
        tsa.verify_token(token, trust, data=b"y")
    with pytest.raises(BadTimestamp, match="not a DER TimeStampResp"):
        tsa.check_response(b"\x00", req, trust)


def test_tsa_certificate_must_be_for_time_stamping_and_its_key(tsa_card: PivSession, pki: Pki) -> None:
    tsa_card.verify_pin(PIN)
    key = PivSigner(tsa_card, Slot.AUTHENTICATION)
    with pytest.raises(WrongKeyUsage, match="critical extended key usage"):
        tsa.TimeStampAuthority(key, key.certificate())                       # a plain card certificate
    non_critical = pki.issue(key.public_point(), "tsa", eku=[x509.oid.ExtendedKeyUsageOID.TIME_STAMPING])
    with pytest.raises(WrongKeyUsage):
        tsa.TimeStampAuthority(key, non_critical)
    other_key = PivSigner(tsa_card, Slot.SIGNATURE).public_point()
    with pytest.raises(cms.SigningError, match="not for the key"):
        tsa.TimeStampAuthority(key, pki.tsa_cert(other_key))


def test_statement_carries_token_over_its_signature(signer: PivSigner, authority: tsa.TimeStampAuthority,
                                                    trust: TrustStore, pki: Pki, tmp_path: Path) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    stamped = tsa.timestamp_statement(der, authority.respond, trust)
    before, after = cms.parse_statement(der), cms.parse_statement(stamped)
    assert after.signature == before.signature and after.parts.signed_attrs == before.parts.signed_attrs
    assert len(after.timestamp_tokens) == 1
    si = a_cms.ContentInfo.load(stamped)["content"]["signer_infos"][0]
    assert [a["type"].dotted for a in si["unsigned_attrs"]] == ["1.2.840.113549.1.9.16.2.14"]   # id-aa-timeStampToken
    v = verify_statement(stamped, trust)
    assert v.timestamp is not None and v.checked_at == v.timestamp.gen_time
    assert v.timestamp.digest == __import__("hashlib").sha256(after.signature).digest()
    # openssl: the statement still verifies, and the token verifies over the signature value
    assert openssl_cms_verify(stamped, pki.root_pem, tmp_path).returncode == 0
    (tmp_path / "token.der").write_bytes(after.timestamp_tokens[0])
    (tmp_path / "signature.bin").write_bytes(after.signature)
    r = openssl("ts", "-verify", "-token_in", "-in", tmp_path / "token.der", "-data", tmp_path / "signature.bin",
                "-CAfile", pki.root_pem)
    assert r.returncode == 0 and b"Verification: OK" in r.stdout, r.stderr


def test_time_stamp_keeps_evidence_signed_before_revocation(signer: PivSigner, authority: tsa.TimeStampAuthority,
                                                            pki: Pki) -> None:
    der = cms.sign_statement(signer, ORDER, pin=PIN)
    stamped = tsa.timestamp_statement(der, authority.respond, TrustStore([pki.root]))
    serial = x509.load_der_x509_certificate(signer.certificate()).serial_number
    now = dt.datetime.now(dt.UTC)
    revoked_later = TrustStore([pki.root], [pki.crl([(serial, now + dt.timedelta(seconds=30))])])
    v = verify_statement(stamped, revoked_later)
    assert any("after the time-stamp" in n for n in v.notes)
    with pytest.raises(RevokedSigner):
        verify_statement(der, revoked_later)                                  # no time-stamp: the claim is not enough
    revoked_before = TrustStore([pki.root], [pki.crl([(serial, now - dt.timedelta(minutes=1))])])
    with pytest.raises(RevokedSigner, match="time-stamp is not earlier"):
        verify_statement(stamped, revoked_before)


def test_revoked_tsa_is_refused(signer: PivSigner, authority: tsa.TimeStampAuthority, pki: Pki) -> None:
    der = tsa.timestamp_statement(cms.sign_statement(signer, ORDER, pin=PIN), authority.respond, TrustStore([pki.root]))
    crl = pki.crl([(authority.cert.serial_number, dt.datetime.now(dt.UTC) - dt.timedelta(days=1))])
    with pytest.raises(RevokedSigner, match="semper third party TSA"):
        verify_statement(der, TrustStore([pki.root], [crl]))


def test_false_signing_time_and_tampered_token_are_caught(signer: PivSigner, authority: tsa.TimeStampAuthority,
                                                          trust: TrustStore) -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    der = cms.sign_statement(signer, ORDER, pin=PIN, signing_time=future)
    stamped = tsa.timestamp_statement(der, authority.respond, trust)
    with pytest.raises(BadTimestamp, match="signing time is false"):
        verify_statement(stamped, trust)
    good = tsa.timestamp_statement(cms.sign_statement(signer, ORDER, pin=PIN), authority.respond, trust)
    token = cms.parse_statement(good).timestamp_tokens[0]
    gen = tsp.TSTInfo.load(cms.parse_signed_data(token, "tst_info").content)["gen_time"].contents
    earlier = bytes(gen).replace(bytes(gen)[:4], b"2001", 1)
    with pytest.raises(BadTimestamp, match="altered"):
        verify_statement(good.replace(bytes(gen), earlier), trust)
    # a token over another statement's signature, attached to this one
    other = tsa.timestamp_statement(cms.sign_statement(signer, {"type": "offer"}, pin=PIN), authority.respond, trust)
    moved = cms.add_unsigned_attribute(cms.sign_statement(signer, ORDER, pin=PIN), "signature_time_stamp_token",
                                       cms.parse_statement(other).timestamp_tokens[0])
    with pytest.raises(BadTimestamp, match="covers other data"):
        verify_statement(moved, trust)


def test_tsa_key_in_a_softhsm_token(signer: PivSigner, pki: Pki, tmp_path: Path) -> None:
    """The third party's TSA as deployed: its key in a PKCS#11 token, the card's statement stamped."""
    from test_cms import hsm_token
    token = hsm_token(tmp_path, pki, label="tsa", common_name=None)
    try:
        authority = tsa.TimeStampAuthority(token, pki.tsa_cert(token.public_point()))
        stamped = tsa.timestamp_statement(cms.sign_statement(signer, ORDER, pin=PIN), authority.respond,
                                          TrustStore([pki.root]))
        req = tsa.make_request(b"data")
        (tmp_path / "resp.der").write_bytes(authority.respond(req.der))
    finally:
        token.close()
    v = verify_statement(stamped, TrustStore([pki.root], [pki.crl()]))
    assert v.timestamp is not None and v.timestamp.tsa_name == "CN=semper third party TSA" and v.notes == ()
    (tmp_path / "data").write_bytes(b"data")
    r = openssl("ts", "-verify", "-in", tmp_path / "resp.der", "-data", tmp_path / "data", "-CAfile", pki.root_pem)
    assert r.returncode == 0 and b"Verification: OK" in r.stdout, r.stderr
