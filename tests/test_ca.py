"""The CA over real HTTPS on loopback, its key in a SoftHSM2 token: issuance, refusals, revocation."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from postgres import Storage, storages
from test_ca_support import (
    CA_PIN,
    USER_PIN,
    RunningCa,
    SoftwareSigner,
    Tokens,
    openssl,
    request_body,
    running_ca,
    start_ca,
    tokens,
)

from semper.client.servers.ca import CaRefusal
from semper.client.support import pki
from semper.client.support.channels import ServiceError

pytestmark = storages()          # the CA's core cases on SQLite and on PostgreSQL

def _register(rc: RunningCa, signer, key: str, **kw) -> dict:
    return rc.client().post("/register", request_body(signer, key, **kw))


def test_ca_root_is_self_signed_through_the_token(running_ca: RunningCa, tmp_path: Path, tokens: Tokens) -> None:
    root = x509.load_pem_x509_certificate(running_ca.root_pem.encode())
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert bc.critical and bc.value.ca and ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    # the key is the token's: the root's public key is the token's public key
    assert pki.point_of(root) == tokens.signer("ca-main").public_point()
    r = openssl("verify", "-CAfile", str(running_ca.root_path), str(running_ca.root_path))
    assert r.returncode == 0, r.stderr
    assert running_ca.client().get("/ca")["certificate"] == running_ca.root_pem


def test_token_key_issues_person_certificate_that_openssl_accepts(running_ca: RunningCa, tmp_path: Path,
                                                                   tokens: Tokens) -> None:
    key = running_ca.add_person()
    user = tokens.signer("user-b", USER_PIN)
    answer = _register(running_ca, user, key)
    assert answer["repeated"] is False
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(answer["certificate"])
    r = openssl("verify", "-CAfile", str(running_ca.root_path), str(leaf))
    assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr
    r = openssl("verify", "-CAfile", str(running_ca.root_path), "-purpose", "smimesign", str(leaf))
    assert r.returncode == 0, r.stdout + r.stderr
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.content_commitment
    assert not ku.value.key_cert_sign and not ku.value.key_encipherment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in eku
    assert any(o.dotted_string == pki.ROLES["person"].role_oid for o in eku)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Alice Example"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.org"]
    assert pki.point_of(cert) == user.public_point()
    assert format(cert.serial_number, "X") == answer["serial"]
    assert running_ca.registration(key)["used_at"] is not None
    # the key is on the token afterwards (stored by the client side)
    user.store_certificate(cert.public_bytes(Encoding.DER))
    assert x509.load_der_x509_certificate(user.certificate()) == cert


@pytest.mark.parametrize("role, hosts", [("seller", ()), ("bank", ()), ("ttp", ()), ("tsa", ()),
                                         ("server", ("127.0.0.1", "shop.example"))])
def test_service_roles_get_their_own_key_usage(running_ca: RunningCa, role: str, hosts: tuple[str, ...]) -> None:
    email = None if role in ("tsa", "server") else f"{role}@example.org"
    key = running_ca.add_person(f"semper {role}", email=email, role=role, hosts=hosts)
    answer = _register(running_ca, SoftwareSigner(), key, name=f"semper {role}", email=email)
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    if role == "server":
        assert ku.digital_signature and not ku.content_commitment
        assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert san.get_values_for_type(x509.DNSName) == ["shop.example"]
    elif role == "tsa":
        assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    else:
        assert ku.digital_signature and ku.content_commitment
        assert any(o.dotted_string == pki.ROLES[role].role_oid for o in eku.value)


def _unchanged(rc: RunningCa, key: str, before: int) -> None:
    assert rc.registration(key)["used_at"] is None
    assert len(rc.issued()) == before


def test_wrong_registration_key_is_refused_and_burns_nothing(running_ca: RunningCa) -> None:
    key = running_ca.add_person()
    other = running_ca.add_person("Bob Other", "bob@example.org")
    signer = SoftwareSigner()
    body = request_body(signer, key)
    body["mac"] = request_body(signer, other)["mac"]          # MAC under another person's key
    with pytest.raises(ServiceError) as e:
        running_ca.client().post("/register", body)
    assert (e.value.status, e.value.code) == (403, "registration_key_invalid")
    from semper.client.support.regkeys import new_key
    with pytest.raises(ServiceError) as e:
        _register(running_ca, signer, new_key())               # a key this CA never handed out
    assert (e.value.status, e.value.code) == (403, "registration_key_invalid")
    _unchanged(running_ca, key, 0)
    _unchanged(running_ca, other, 0)
    _register(running_ca, signer, key)                          # the right key still works


def test_data_mismatch_is_refused(running_ca: RunningCa) -> None:
    key = running_ca.add_person()
    for name, email in (("Alice Exampel", "alice@example.org"), ("Alice Example", "mallory@example.org"),
                        ("Alice Example", None)):
        with pytest.raises(ServiceError) as e:
            _register(running_ca, SoftwareSigner(), key, name=name, email=email)
        assert (e.value.status, e.value.code) == (403, "data_mismatch")
    _unchanged(running_ca, key, 0)
    # case of the e-mail and blanks in the name do not matter
    _register(running_ca, SoftwareSigner(), key, name=" Alice  Example", email="Alice@Example.ORG")


def test_bad_csr_signature_is_refused(running_ca: RunningCa) -> None:
    key = running_ca.add_person()
    signer = SoftwareSigner()
    csr = bytearray(pki.build_csr(signer, signer.public_point(), "Alice Example", "alice@example.org"))
    csr[-5] ^= 0x01                                             # inside the signature's s value
    with pytest.raises(ServiceError) as e:
        _register(running_ca, signer, key, csr=bytes(csr))
    assert (e.value.status, e.value.code) == (400, "csr_invalid")
    # a request whose signature is by another key than the one it carries: no proof of possession
    other = SoftwareSigner()
    good = pki.build_csr(signer, signer.public_point(), "Alice Example", "alice@example.org")
    from asn1crypto import csr as asn1_csr
    req = asn1_csr.CertificationRequest.load(good)
    info = req["certification_request_info"].dump()
    import hashlib
    forged = asn1_csr.CertificationRequest({
        "certification_request_info": asn1_csr.CertificationRequestInfo.load(info),
        "signature_algorithm": {"algorithm": "sha256_ecdsa"},
        "signature": other.sign_digest(hashlib.sha256(info).digest())}).dump()
    with pytest.raises(ServiceError) as e:
        _register(running_ca, signer, key, csr=forged)
    assert e.value.code == "csr_invalid" and "possession" in e.value.message
    _unchanged(running_ca, key, 0)


def test_a_used_key_is_refused_for_another_key_and_redelivered_to_the_same(running_ca: RunningCa) -> None:
    key = running_ca.add_person()
    first = SoftwareSigner()
    issued = _register(running_ca, first, key)
    with pytest.raises(ServiceError) as e:
        _register(running_ca, SoftwareSigner(), key)
    assert (e.value.status, e.value.code) == (409, "registration_key_used")
    again = _register(running_ca, first, key)                   # a retry after a lost answer
    assert again["repeated"] is True and again["certificate"] == issued["certificate"]
    assert len(running_ca.issued()) == 1


def test_concurrent_requests_for_one_key_issue_one_certificate(running_ca: RunningCa) -> None:
    key = running_ca.add_person()
    signers = [SoftwareSigner() for _ in range(8)]
    bodies = [request_body(s, key) for s in signers]
    results: list[object] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def go(i: int) -> None:
        barrier.wait(10)
        try:
            results[i] = running_ca.client().post("/register", bodies[i])
        except ServiceError as e:
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wins = [r for r in results if isinstance(r, dict)]
    losses = [r for r in results if isinstance(r, ServiceError)]
    assert len(wins) == 1 and len(losses) == len(bodies) - 1
    assert all(e.code == "registration_key_used" for e in losses)
    assert len(running_ca.issued()) == 1
    assert running_ca.registration(key)["serial"] == wins[0]["serial"]


def test_one_public_key_gets_one_valid_certificate(running_ca: RunningCa) -> None:
    signer = SoftwareSigner()
    _register(running_ca, signer, running_ca.add_person())
    second = running_ca.add_person()
    with pytest.raises(ServiceError) as e:
        _register(running_ca, signer, second)
    assert e.value.code == "key_already_certified"
    _unchanged(running_ca, second, 1)


def test_revocation_shows_in_the_crl(running_ca: RunningCa, tmp_path: Path) -> None:
    keep = _register(running_ca, SoftwareSigner(), running_ca.add_person("Keep Me", "keep@example.org"),
                     name="Keep Me", email="keep@example.org")
    gone_signer, gone_key = SoftwareSigner(), running_ca.add_person()
    gone = _register(running_ca, gone_signer, gone_key)
    client = running_ca.client()
    before = x509.load_der_x509_crl(client.get_bytes("/crl"))
    auth = {"Authorization": f"Bearer {running_ca.admin}"}
    out = client.post("/admin/revoke", {"serial": gone["serial"].lower(), "reason": "key_compromise"}, auth)
    assert out["serial"] == gone["serial"] and out["reason"] == "key_compromise"
    der = client.get_bytes("/crl")
    crl = x509.load_der_x509_crl(der)
    root = x509.load_pem_x509_certificate(running_ca.root_pem.encode())
    assert crl.is_signature_valid(root.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(int(gone["serial"], 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(int(keep["serial"], 16)) is None
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert client.get(f"/certificates/{gone['serial']}")["status"] == "revoked"
    assert client.get(f"/certificates/{keep['serial']}")["status"] == "good"
    path = tmp_path / "crl.der"
    path.write_bytes(der)
    r = openssl("crl", "-inform", "DER", "-in", str(path), "-CAfile", str(running_ca.root_path), "-noout", "-text")
    assert r.returncode == 0 and "verify OK" in r.stderr, r.stderr
    assert gone["serial"] in r.stdout.replace(":", "").upper() and "Key Compromise" in r.stdout
    pem_crl = client.request("GET", "/crl.pem")[2].decode()
    assert x509.load_pem_x509_crl(pem_crl.encode()) == crl
    with pytest.raises(ServiceError) as e:
        client.post("/admin/revoke", {"serial": gone["serial"]}, auth)
    assert e.value.code == "already_revoked"
    # a revoked certificate is not re-delivered to a retry either
    with pytest.raises(ServiceError) as e:
        _register(running_ca, gone_signer, gone_key)
    assert e.value.code == "registration_key_used"


def test_restart_loses_nothing(tmp_path: Path, tokens: Tokens, storage: Storage) -> None:
    rc = start_ca(tmp_path / "ca", tokens, db_url=storage.url("ca") if storage.is_postgres else None)
    issued_key = rc.add_person()
    open_key = rc.add_person("Carol Open", "carol@example.org")
    signer = SoftwareSigner()
    first = _register(rc, signer, issued_key)
    rc.ca.revoke(first["serial"], "superseded")
    crl1 = x509.load_der_x509_crl(rc.client().get_bytes("/crl"))
    rc.runner.stop()
    rc.home.close()

    from semper.client.servers.ca_home import CaHome, issue_tls_identity
    from semper.client.servers.ca_http import build_app
    from semper.client.support.channels import JsonClient, server_context
    from semper.client.support.http_service import ServiceRunner
    home = CaHome(tmp_path / "ca", rc.home.dsn)
    ca = home.open()
    ca.signer = home.open_signer(ca, CA_PIN)                   # token settings come from the database
    chain, keyfile = issue_tls_identity(ca, ("127.0.0.1",), home.tls_dir)
    with ServiceRunner(build_app(ca), ssl_context=server_context(chain, keyfile)) as runner:
        client = JsonClient(runner.url, rc.root_pem)
        assert client.get("/ca")["certificate"] == rc.root_pem
        with pytest.raises(ServiceError) as e:
            client.post("/register", request_body(SoftwareSigner(), issued_key))
        assert e.value.code == "registration_key_used"
        client.post("/register", request_body(SoftwareSigner(), open_key, name="Carol Open",
                                              email="carol@example.org"))
        crl2 = x509.load_der_x509_crl(client.get_bytes("/crl"))
        assert crl2.get_revoked_certificate_by_serial_number(int(first["serial"], 16)) is not None
        assert crl2.last_update_utc >= crl1.last_update_utc
    home.close()


def test_operator_bookkeeping_needs_no_token(running_ca: RunningCa) -> None:
    from semper.client.servers.ca import CertificationAuthority
    offline = CertificationAuthority(running_ca.home.db)      # no signer: add and revoke still work
    key = offline.add_person("Dave Offline", email="dave@example.org")[1]
    answer = _register(running_ca, SoftwareSigner(), key, name="Dave Offline", email="dave@example.org")
    offline.revoke(answer["serial"], "cessation_of_operation")
    crl = x509.load_der_x509_crl(running_ca.client().get_bytes("/crl"))    # the service sees both
    assert crl.get_revoked_certificate_by_serial_number(int(answer["serial"], 16)) is not None
    with pytest.raises(CaRefusal) as e:
        offline.crl(force=True)
    assert e.value.code == "no_signer"
    for bad in (lambda: offline.add_person("", email="x@example.org"),
                lambda: offline.add_person("X", email="not-an-address"),
                lambda: offline.add_person("X", email=None),
                lambda: offline.add_person("X", role="wizard"),
                lambda: offline.add_person("X", role="server"),
                lambda: offline.revoke("zz"),
                lambda: offline.revoke("1234"),
                lambda: offline.revoke(answer["serial"], "bored")):
        with pytest.raises(CaRefusal):
            bad()


def test_a_token_with_another_key_cannot_sign_for_this_ca(running_ca: RunningCa, tokens: Tokens) -> None:
    running_ca.ca.signer = tokens.signer("ca-other", CA_PIN)
    running_ca.ca._signer_point = None       # as if the service had been started with this token
    with pytest.raises(CaRefusal) as e:
        running_ca.ca.crl(force=True)
    assert e.value.code == "wrong_token"
