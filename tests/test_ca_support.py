"""Helpers for the CA, registration and channel tests (no tests here).

SoftHSM2 tokens are provisioned once per test session, all in one folder: provisioning
re-initialises the PKCS#11 module, which would log out a CA that is already serving, so every
token a test needs exists before the first CA opens its key. Each CA gets a fresh database (and so
a fresh self-signed root) on the same token key; a second token is the foreign CA.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from postgres import Storage

from semper.client.servers.ca import CertificationAuthority
from semper.client.servers.ca_home import CaHome, issue_tls_identity
from semper.client.servers.ca_http import build_app
from semper.client.support import pki, regkeys
from semper.client.support.channels import JsonClient, server_context
from semper.client.support.http_service import ServiceRunner
from semper.hardware.signer import PinStatus

CA_PIN = b"ca-pin-4321"
USER_PIN = b"user-pin-1111"
SO_PIN = b"so-pin-87654321"
TOKENS = ("ca-main", "ca-other", "user-a", "user-b")


@dataclass
class Tokens:
    store: Any              # hsm.softhsm.SoftHsmStore

    def signer(self, label: str, pin: bytes | None = None):
        from semper.hsm.signer import Pkcs11Signer
        s = Pkcs11Signer.open(label, softhsm_conf=self.store.conf)
        if pin is not None:
            s.verify_pin(pin)
        return s


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    from semper.hsm.softhsm import SoftHsmStore, provision
    store = SoftHsmStore.in_folder(tmp_path_factory.mktemp("softhsm"))
    for label in TOKENS:
        provision(store, label, CA_PIN if label.startswith("ca") else USER_PIN, SO_PIN)
    return Tokens(store)


class SoftwareSigner:
    """The signer protocol over a software key: for requests a real device would never make."""

    def __init__(self, label: str = "software key") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.label = label

    def certificate(self) -> bytes:
        from semper.hardware.errors import NotFoundError
        raise NotFoundError("no certificate")

    def public_point(self) -> bytes:
        return pki.point_of(self.key.public_key())

    def pin_status(self) -> PinStatus:
        return PinStatus(True, None)

    def verify_pin(self, pin: bytes) -> None:
        return None

    def sign_digest(self, digest: bytes) -> bytes:
        return self.key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))


@dataclass
class RunningCa:
    home: CaHome
    ca: CertificationAuthority
    runner: ServiceRunner
    admin: str
    root_pem: str
    root_path: Path

    @property
    def url(self) -> str:
        return self.runner.url

    def client(self, **kw: Any) -> JsonClient:
        return JsonClient(self.url, self.root_pem, name="the CA", **kw)

    def add_person(self, name: str = "Alice Example", email: str | None = "alice@example.org",
                   role: str = "person", hosts: tuple[str, ...] = ()) -> str:
        return self.ca.add_person(name, email=email, role=role, hosts=hosts)[1]

    def registration(self, key: str) -> dict[str, Any]:
        reg_id = regkeys.registration_id(regkeys.parse_key(key))
        return next(r for r in self.ca.listing()["registrations"] if r["reg_id"] == reg_id)

    def issued(self) -> list[dict[str, Any]]:
        """Certificates issued through registrations (the service's own TLS certificate left out)."""
        return [c for c in self.ca.listing()["certificates"] if c["role"] != "server"]


def start_ca(folder: Path, tokens: Tokens, label: str = "ca-main", name: str = "semper test CA",
             db_url: str | None = None) -> RunningCa:
    """A CA serving on loopback; ``db_url`` its storage (default: SQLite in ``folder``)."""
    signer = tokens.signer(label, CA_PIN)
    home = CaHome(folder, db_url)
    ca = home.open(signer)
    admin = ca.initialise(name, token_label=label, softhsm_conf=str(tokens.store.conf))
    root_path = home.publish_root(ca)
    chain, key = issue_tls_identity(ca, ("127.0.0.1", "localhost"), home.tls_dir)
    runner = ServiceRunner(build_app(ca), "127.0.0.1", 0, server_context(chain, key)).start()
    return RunningCa(home, ca, runner, admin, root_path.read_text(), root_path)


@pytest.fixture
def running_ca(tmp_path: Path, tokens: Tokens, storage: Storage) -> Iterator[RunningCa]:
    """A fresh CA per test; on PostgreSQL too where the module runs under ``postgres.storages()``."""
    rc = start_ca(tmp_path / "ca", tokens, db_url=storage.url("ca") if storage.is_postgres else None)
    yield rc
    rc.runner.stop()
    rc.home.close()


def request_body(signer: Any, key: str, name: str = "Alice Example", email: str | None = "alice@example.org",
                 csr: bytes | None = None) -> dict[str, str]:
    """A /register body as the client builds it (or with a given, possibly tampered, CSR)."""
    raw = regkeys.parse_key(key)
    reg_id = regkeys.registration_id(raw)
    if csr is None:
        csr = pki.build_csr(signer, signer.public_point(), name, email)
    mac = regkeys.request_mac(regkeys.mac_key(raw), reg_id, csr)
    return {"registration_id": reg_id, "csr": base64.b64encode(csr).decode(), "mac": base64.b64encode(mac).decode()}


def raw_request(client: JsonClient, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    status, _ctype, data = client.request(method, path, body, headers)
    return status, json.loads(data)


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    assert shutil.which("openssl"), "openssl is needed"
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
