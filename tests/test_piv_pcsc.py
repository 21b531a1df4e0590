"""The PIV applet as OpenSC sees it through pcscd + vpcd: pkcs11-tool lists, signs, counts PIN tries."""
from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest
from conftest import SCHEME_PIN
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from semper.client.support.personalisation import CardProfile, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware.pcscd import VirtualCards
from semper.hardware.piv import PivSession, PivSigner, Slot
from semper.hardware.signer import sign_message
from semper.hardware.transport import PcscConnection

pytestmark = [pytest.mark.pcsc, pytest.mark.skipif(shutil.which("pkcs11-tool") is None, reason="opensc missing")]
OPENSC = "/usr/lib/x86_64-linux-gnu/pkcs11/opensc-pkcs11.so"
PIN = "246810"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pivpcsc")
    image = folder / "card"
    with Scheme.load_or_create(folder / "scheme", SCHEME_PIN) as scheme:
        personalise_purse_card(image, scheme, CardProfile(PIN.encode(), b"13579135"), sync=False)
    with VirtualCards([image], sync=False) as vc:
        yield folder, vc.readers[0]


def tool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["pkcs11-tool", "--module", OPENSC, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_pkcs11_tool_lists_certificates_and_keys(served):
    listing = tool("--login", "--pin", PIN, "-O").stdout
    assert "Certificate for PIV Authentication" in listing
    assert "Certificate for Digital Signature" in listing
    assert listing.count("Private Key Object; EC") >= 2
    assert "ID:         02" in listing


def test_pkcs11_tool_signs_with_9c_and_openssl_verifies(served):
    folder, _reader = served
    data, sig, cert, pub = (folder / n for n in ("data", "sig", "cert.der", "pub.pem"))
    data.write_bytes(b"contract: 1 bicycle, 250.00 EUR")
    tool("--login", "--pin", PIN, "--sign", "--id", "02", "-m", "ECDSA-SHA256", "-i", str(data), "-o", str(sig),
         "--signature-format", "openssl")
    tool("--read-object", "--type", "cert", "--id", "02", "-o", str(cert))
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(cert), "-pubkey", "-noout", "-out", str(pub)],
                   check=True, timeout=30)
    ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(data)],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    data.write_bytes(b"contract: 1 bicycle, 2.50 EUR")                   # and a changed text does not verify
    bad = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(data)],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0


def test_wrong_pin_through_pkcs11_tool_decrements_the_card_counter(served):
    _folder, reader = served
    with PcscConnection(reader) as conn:
        piv = PivSession(conn)
        piv.logout()                                  # an earlier login may still stand on the card
        before = piv.pin_status().tries_left
        assert before == 3
    r = tool("--login", "--pin", "999999", "--sign", "--id", "02", "-m", "ECDSA", "-i", "/dev/null", check=False)
    assert r.returncode != 0 and "CKR_PIN_INCORRECT" in (r.stdout + r.stderr)
    with PcscConnection(reader) as conn:
        piv = PivSession(conn)
        assert piv.pin_status().tries_left == before - 1
        piv.verify_pin(PIN.encode())                                        # and the right PIN restores
        assert piv.pin_status().verified


def test_signer_protocol_through_pcscd(served):
    _folder, reader = served
    with PcscConnection(reader) as conn:
        signer = PivSigner(PivSession(conn), Slot.SIGNATURE)
        signer.verify_pin(PIN.encode())
        message = b"order #7"
        sig = sign_message(signer, message)
        x509.load_der_x509_certificate(signer.certificate()).public_key().verify(
            sig, message, ec.ECDSA(hashes.SHA256()))
        assert hashlib.sha256(message).digest()
