"""The same Pkcs11Signer over OpenSC's PKCS#11 module, signing with the simulated PIV card through pcscd.

Two cards are served (two virtual readers): one to sign with, one whose PIN the lock test blocks.
The card blocks its PIN after 3 wrong tries, so CKR_PIN_LOCKED is met for real here (SoftHSM2 never
locks). The fixtures live in a class so pcscd is stopped before the bench smoke test starts its own.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCHEME_PIN
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from semper.client.support.personalisation import CardProfile, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware import errors as hw
from semper.hardware.pcscd import VirtualCards
from semper.hardware.signer import sign_message
from semper.hsm.module import OPENSC_MODULE, load
from semper.hsm.signer import Pkcs11Signer

pytestmark = [pytest.mark.pcsc, pytest.mark.skipif(not Path(OPENSC_MODULE).exists(), reason="opensc missing")]
PIN, PUK = b"246810", b"13579135"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="class")
def cards(tmp_path_factory: pytest.TempPathFactory):
    """Two issued cards served through pcscd for the tests of one class, then pcscd stops."""
    folder = tmp_path_factory.mktemp("opensc")
    with Scheme.load_or_create(folder / "scheme", SCHEME_PIN) as scheme:
        signing = personalise_purse_card(folder / "signing", scheme, CardProfile(PIN, PUK), sync=False)
        locking = personalise_purse_card(folder / "locking", scheme, CardProfile(PIN, PUK), sync=False)
    with VirtualCards([folder / "signing", folder / "locking"], sync=False):
        yield (f"semper card holder {signing.card_id}", f"semper card holder {locking.card_id}", signing.card_id)


class TestCardThroughOpenSC:
    def test_token_label_is_found_though_opensc_cuts_it(self, cards) -> None:
        label, _, card_id = cards
        shown = [t for t in load(OPENSC_MODULE).tokens() if t.serial.upper() == card_id]
        assert len(shown) == 1 and shown[0].label.endswith("...")      # 32-byte label field
        assert load(OPENSC_MODULE).token(label).serial.decode().upper() == card_id

    def test_9c_signs_and_verifies_against_the_card_certificate(self, cards) -> None:
        label, _, card_id = cards
        with Pkcs11Signer(load(OPENSC_MODULE), label, b"\x02") as signer:
            cert = x509.load_der_x509_certificate(signer.certificate())
            assert card_id in cert.subject.rfc4514_string()
            assert cert.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint) == \
                signer.public_point()
            signer.verify_pin(PIN)
            message = b"order 18: 2 tyres, 40.00 EUR"
            sig = sign_message(signer, message)
            cert.public_key().verify(sig, message, ec.ECDSA(hashes.SHA256()))
            with pytest.raises(InvalidSignature):
                cert.public_key().verify(sig, b"order 18: 2 tyres, 4.00 EUR", ec.ECDSA(hashes.SHA256()))

    def test_9c_needs_the_pin_for_every_signature(self, cards) -> None:
        label, _, _ = cards
        with Pkcs11Signer(load(OPENSC_MODULE), label, b"\x02") as signer:
            signer.verify_pin(PIN)
            signer.sign_digest(hashlib.sha256(b"first").digest())
            with pytest.raises(hw.PinRequiredError, match="every signature"):
                signer.sign_digest(hashlib.sha256(b"second").digest())
            signer.verify_pin(PIN)
            signer.sign_digest(hashlib.sha256(b"second").digest())

    def test_9a_signs_many_after_one_pin(self, cards) -> None:
        label, _, _ = cards
        with Pkcs11Signer(load(OPENSC_MODULE), label, b"\x01") as signer:
            signer.verify_pin(PIN)
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), signer.public_point())
            for i in range(3):
                m = f"auth {i}".encode()
                key.verify(sign_message(signer, m), m, ec.ECDSA(hashes.SHA256()))

    def test_two_keys_need_a_key_id(self, cards) -> None:
        label, _, _ = cards
        with pytest.raises(hw.TokenError, match="01, 02"):
            Pkcs11Signer(load(OPENSC_MODULE), label)

    def test_wrong_pins_then_locked(self, cards) -> None:
        _, label, _ = cards
        with Pkcs11Signer(load(OPENSC_MODULE), label, b"\x02") as signer:
            assert signer.pin_status().blocked is False
            with pytest.raises(hw.WrongPinError):
                signer.verify_pin(b"111111")
            with pytest.raises(hw.WrongPinError) as e:
                signer.verify_pin(b"111111")
            assert e.value.tries_left == 1                              # OpenSC's "final try" flag
            with pytest.raises(hw.WrongPinError) as e:
                signer.verify_pin(b"111111")
            assert e.value.tries_left == 0 and "blocked" in str(e.value)
            with pytest.raises(hw.PinBlockedError) as blocked:          # now CKR_PIN_LOCKED, even for the right PIN
                signer.verify_pin(PIN)
            assert blocked.value.ckr == "CKR_PIN_LOCKED"
            assert label in str(blocked.value) and "PUK" in str(blocked.value)
            assert signer.pin_status().blocked is True

    def test_cli_lists_the_card_as_a_token(self, cards) -> None:
        _, _, card_id = cards
        r = subprocess.run([sys.executable, "-m", "semper.client.cli", "token", "list", "--module", OPENSC_MODULE],
                           check=False, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert f"serial {card_id.lower()}" in r.stdout and "semper card holder" in r.stdout


@pytest.mark.skipif(shutil.which("pcscd") is None, reason="pcscd missing")
def test_bench_sign_smoke() -> None:
    from semper.bench.sign import bench_sign
    result = bench_sign(count=5, progress=False)
    kinds = ("raw_cryptography", "softhsm_pkcs11", "card_piv_9a_pcscd", "card_opensc_9a_pcscd",
             "card_opensc_9c_pin_each_pcscd")
    for kind in kinds:
        figures = result[kind]
        assert isinstance(figures, dict)
        assert figures["n"] == 5 and figures["verified"] is True
        assert figures["signatures_per_s"] > 0 and figures["p95_us"] >= figures["median_us"] > 0
    ratios = result["ratios_to_raw"]
    assert isinstance(ratios, dict) and set(ratios) == set(kinds[1:])
    assert all(r["median_over_raw"] > 0 for r in ratios.values())
