"""``semper register`` with the simulated card behind pcscd (vpcd), the CA on loopback HTTPS.

The certificate the CA issues must end up in PIV slot 9C as OpenSC reads it (pkcs11-tool) and must
verify against the CA root with openssl; a refused registration must leave the card unchanged.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCHEME_PIN
from cryptography import x509
from test_ca_support import RunningCa, openssl, running_ca, tokens

from semper.client.cli import main
from semper.client.support.personalisation import CardProfile, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware.pcscd import VirtualCards
from semper.hardware.piv import PivSession, Slot
from semper.hardware.transport import PcscConnection

pytestmark = [pytest.mark.pcsc, pytest.mark.skipif(shutil.which("pkcs11-tool") is None, reason="opensc missing")]
OPENSC = "/usr/lib/x86_64-linux-gnu/pkcs11/opensc-pkcs11.so"
PIN = "246810"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("regpcsc")
    image = folder / "card"
    with Scheme.load_or_create(folder / "scheme", SCHEME_PIN) as scheme:
        personalise_purse_card(image, scheme, CardProfile(PIN.encode(), b"13579135"), sync=False)
    with VirtualCards([image], sync=False) as vc:
        yield vc.readers[0]


def cert_9c(reader: str) -> bytes:
    with PcscConnection(reader) as conn:
        return PivSession(conn).certificate(Slot.SIGNATURE)


def register(rc: RunningCa, key: str, reader: str, name: str, monkeypatch: pytest.MonkeyPatch, capsys
             ) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(PIN + "\n"))
    code = main(["register", "--ca", rc.url, "--ca-root", str(rc.root_path), "--registration-key", key,
                 "--name", name, "--email", "alice@example.org", "--reader", reader, "--pin-stdin"])
    return code, capsys.readouterr().err


def test_register_the_card_through_pcscd(served: str, running_ca: RunningCa, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("SEMPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEMPER_CONFIG", str(tmp_path / "config"))
    before = cert_9c(served)
    key = running_ca.add_person()
    code, err = register(running_ca, key, served, "Mallory", monkeypatch, capsys)        # data mismatch first
    assert code == 1 and "name" in err
    assert cert_9c(served) == before and running_ca.registration(key)["used_at"] is None

    code, err = register(running_ca, key, served, "Alice Example", monkeypatch, capsys)
    assert code == 0, err
    der = cert_9c(served)
    assert der != before
    cert = x509.load_der_x509_certificate(der)
    assert format(cert.serial_number, "X") == running_ca.registration(key)["serial"]
    # OpenSC sees the new certificate in the Digital Signature slot (id 02), and openssl verifies it
    out = tmp_path / "9c.der"
    r = subprocess.run(["pkcs11-tool", "--module", OPENSC, "--read-object", "--type", "cert", "--id", "02",
                        "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_bytes() == der
    pem = tmp_path / "9c.pem"
    assert openssl("x509", "-inform", "DER", "-in", str(out), "-out", str(pem)).returncode == 0
    r = openssl("verify", "-CAfile", str(running_ca.root_path), str(pem))
    assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr
    r = openssl("x509", "-in", str(pem), "-noout", "-ext", "keyUsage")
    assert "critical" in r.stdout and "Digital Signature, Non Repudiation" in r.stdout, r.stdout
