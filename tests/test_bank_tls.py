"""The bank served with a TLS certificate from the project CA (``semper ca tls-cert``).

The whole path as an operator runs it, each command its own process (as in production, and so
that SoftHSM2 token creation never disturbs tokens this test process has open): ``semper ca init``,
``semper ca tls-cert``, ``semper bank init --tls-cert/--tls-key``, ``semper serve bank``; then a
client that pins only the CA root reaches the bank. Bad pairs are refused before anything is made.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from served import Served

from semper.client.servers.bank_home import check_tls_identity, make_tls_identity
from semper.client.servers.bank_store import BankRefusal
from semper.client.support.channels import ChannelError, JsonClient

REPO = Path(__file__).resolve().parents[1]
CA_PIN = "ca-operator-pin-1"
BANK_PIN = "bank-operator-pin-2"


def semper(env: dict[str, str], *args: str, stdin: str = "", timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], input=stdin, capture_output=True,
                          text=True, check=False,
                          env=env, cwd=REPO, timeout=timeout)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    e.update(SEMPER_HOME=str(tmp_path / "home"), SEMPER_CONFIG=str(tmp_path / "config"))
    pin = tmp_path / "scheme.pin"                       # 'bank init' makes the purse scheme in SEMPER_HOME on first use
    pin.write_text("scheme-pin-2580\n")
    e["SEMPER_SCHEME_PIN_FILE"] = str(pin)
    return e


class ServedBank(Served):
    def __init__(self, env: dict[str, str], *extra: str, timeout: float = 30.0) -> None:
        super().__init__("bank", BANK_PIN, env, *extra, timeout=timeout)


@pytest.fixture
def ca_tls(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(the project CA root, the folder with the bank's CA-issued cert.pem and key.pem)."""
    r = semper(env, "ca", "init", "--create-token", "--name", "Project Root", "--pin-stdin", stdin=CA_PIN + "\n")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "bank-tls"
    r = semper(env, "ca", "tls-cert", "--host", "127.0.0.1", "--host", "localhost", "--name", "semper bank",
               "--out", str(out), "--pin-stdin", stdin=CA_PIN + "\n")
    assert r.returncode == 0, r.stderr
    yield tmp_path / "home" / "ca" / "ca.pem", out


def test_bank_with_a_ca_issued_certificate_is_reached_by_a_client_pinning_only_the_ca_root(
        env: dict[str, str], ca_tls: tuple[Path, Path], tmp_path: Path) -> None:
    ca_root, tls = ca_tls
    r = semper(env, "bank", "init", "--pin-stdin", "--denominations", "1", "--tls-cert", str(tls / "cert.pem"),
               "--tls-key", str(tls / "key.pem"), stdin=BANK_PIN + "\n")
    assert r.returncode == 0, r.stderr
    assert "the CA root of --tls-cert" in r.stdout
    bank_tls = tmp_path / "home" / "bank" / "tls"
    published = x509.load_pem_x509_certificate((bank_tls / "tls-root.pem").read_bytes())
    assert published == x509.load_pem_x509_certificate(ca_root.read_bytes())      # clients pin the project CA root
    assert oct((bank_tls / "key.pem").stat().st_mode & 0o777) == "0o600"
    served = ServedBank(env)
    try:
        info = JsonClient(served.url, ca_root.read_text(), name="the bank").get("/info")
        assert str(info["bank_id"]).startswith("BANK-")
        foreign = tmp_path / "foreign"
        make_tls_identity(foreign, ("127.0.0.1",))                                 # a root the bank never used
        with pytest.raises(ChannelError):
            JsonClient(served.url, (foreign / "tls-root.pem").read_text(), name="the bank").get("/info")
    finally:
        served.stop()


def test_without_a_ca_certificate_the_bank_makes_its_own_root(env: dict[str, str], tmp_path: Path) -> None:
    r = semper(env, "bank", "init", "--pin-stdin", "--denominations", "1", stdin=BANK_PIN + "\n")
    assert r.returncode == 0, r.stderr
    assert "the bank's own TLS root" in r.stdout
    root = x509.load_pem_x509_certificate((tmp_path / "home" / "bank" / "tls" / "tls-root.pem").read_bytes())
    assert root.subject.rfc4514_string() == "CN=semper bank TLS root"
    served = ServedBank(env)
    try:
        assert JsonClient(served.url, tmp_path / "home" / "bank" / "tls" / "tls-root.pem").get("/info")["bank_id"]
    finally:
        served.stop()


def test_bad_pairs_are_refused_before_a_bank_is_made(env: dict[str, str], tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_tls_identity(a, ("127.0.0.1",))
    make_tls_identity(b, ("127.0.0.1",))
    assert check_tls_identity(a / "cert.pem", a / "key.pem").subject.rfc4514_string() == "CN=semper bank TLS root"
    with pytest.raises(BankRefusal, match="does not belong"):
        check_tls_identity(a / "cert.pem", b / "key.pem")
    leaf_only = tmp_path / "leaf.pem"
    leaf_only.write_bytes(a.joinpath("cert.pem").read_bytes().split(b"-----END CERTIFICATE-----")[0]
                          + b"-----END CERTIFICATE-----\n")
    with pytest.raises(BankRefusal, match="ending with the self-signed CA root"):
        check_tls_identity(leaf_only, a / "key.pem")
    swapped = tmp_path / "swapped.pem"                      # root first: not a chain from the server certificate
    certs = x509.load_pem_x509_certificates(a.joinpath("cert.pem").read_bytes())
    swapped.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs[::-1]))
    with pytest.raises(BankRefusal):
        check_tls_identity(swapped, a / "key.pem")
    r = semper(env, "bank", "init", "--pin-stdin", "--denominations", "1", "--tls-cert", str(a / "cert.pem"),
               "--tls-key", str(b / "key.pem"), stdin=BANK_PIN + "\n")
    assert r.returncode == 1 and "does not belong" in r.stderr
    assert not (tmp_path / "home" / "bank" / "bank.json").exists()
    r = semper(env, "bank", "init", "--pin-stdin", "--tls-cert", str(a / "cert.pem"), stdin=BANK_PIN + "\n")
    assert r.returncode == 2 and "go together" in r.stderr
