"""PKCS#11 tokens on real SoftHSM2 2.6 tokens, each in a temporary folder with its own softhsm2.conf.

No mocks: the tokens are made through the PKCS#11 API, signatures come from SoftHSM2, and other
programs (pkcs11-tool, the semper CLI in a subprocess) look at the same folder.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pkcs11.exceptions as p11x
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, ObjectClass

from semper.hardware import errors as hw
from semper.hardware.signer import Signer, sign_message
from semper.hsm import errors as hsm_errors
from semper.hsm.module import DEFAULT_MODULE, load
from semper.hsm.signer import Pkcs11Signer
from semper.hsm.softhsm import SoftHsmStore, provision

pytestmark = pytest.mark.skipif(not Path(DEFAULT_MODULE).exists(), reason="softhsm2 missing")
PIN, SO_PIN = b"123456", b"87654321"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> SoftHsmStore:
    return SoftHsmStore.in_folder(tmp_path / "tokens")


@pytest.fixture
def made(store: SoftHsmStore):
    return provision(store, "alice", PIN, SO_PIN)


@pytest.fixture
def signer(made, store: SoftHsmStore):
    with Pkcs11Signer.open("alice", softhsm_conf=store.conf) as s:
        yield s


def point_key(point: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def issue(point: bytes, cn: str = "alice") -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A certificate for ``point`` from a throwaway CA (the real CA is another part of semper)."""
    ca = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]))
            .public_key(point_key(point)).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca, hashes.SHA256()))
    return cert.public_bytes(Encoding.DER), ca


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "SEMPER_HOME")}
    return {**env, **extra}


def semper(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], input=stdin, check=False,
                          capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env or clean_env())


# ---- signing ------------------------------------------------------------------------------------
def test_sign_and_verify_against_the_public_point(signer: Pkcs11Signer, made) -> None:
    as_protocol: Signer = signer                              # the protocol the layers use (checked by mypy)
    assert all(callable(getattr(as_protocol, m)) for m in
               ("certificate", "public_point", "pin_status", "verify_pin", "sign_digest")) and signer.label == "alice"
    assert signer.public_point() == made.public_point and len(made.public_point) == 65
    signer.verify_pin(PIN)
    message = b"order 17: 1 bicycle, 250.00 EUR"
    sig = sign_message(signer, message)
    r, s = decode_dss_signature(sig)                          # DER, not the token's raw r||s
    assert r > 0 and s > 0 and sig[0] == 0x30
    point_key(signer.public_point()).verify(sig, message, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        point_key(signer.public_point()).verify(sig, b"order 17: 1 bicycle, 2.50 EUR", ec.ECDSA(hashes.SHA256()))
    assert sign_message(signer, message) != sig               # ECDSA is randomised: a fresh k each time


def test_certificate_on_the_token(signer: Pkcs11Signer) -> None:
    with pytest.raises(hw.NotFoundError, match="no certificate"):
        signer.certificate()
    der, ca = issue(signer.public_point())
    signer.verify_pin(PIN)
    signer.store_certificate(der)
    assert signer.certificate() == der
    cert = x509.load_der_x509_certificate(signer.certificate())
    message = b"receipt 17"
    cert.public_key().verify(sign_message(signer, message), message,
                             ec.ECDSA(hashes.SHA256()))
    cert.verify_directly_issued_by(_ca_cert(ca))
    other, _ = issue(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint))
    with pytest.raises(hw.InvalidInputError, match="not for key"):
        signer.store_certificate(other)
    assert signer.certificate() == der                        # the refused one did not replace it



def test_every_signature_of_a_token_is_checked_against_its_certificate(signer: Pkcs11Signer) -> None:
    """Not only the first: a token that signs once with its key and then with another (a fault, an object
    file replaced under the open session) must not get the second statement out as evidence. Checking once
    per key handle was tried for speed (2026-12-08) and withdrawn: a faulty signature would leave the shop."""
    from semper.client.support import cms
    der, _ = issue(signer.public_point())
    signer.verify_pin(PIN)
    signer.store_certificate(der)
    stranger = ec.generate_private_key(ec.SECP256R1())

    class Faulty(Pkcs11Signer):
        signed = 0

        def sign_digest(self, digest: bytes) -> bytes:
            self.signed += 1
            if self.signed == 1:
                return super().sign_digest(digest)
            return stranger.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    faulty = Faulty(signer.module, "alice")
    faulty.verify_pin(PIN)
    cms.check_integrity(cms.parse_statement(cms.sign_statement(faulty, {"type": "receipt", "n": 1})).parts)
    with pytest.raises(cms.SigningError, match="does not match its certificate"):
        cms.sign_statement(faulty, {"type": "receipt", "n": 2})

def _ca_cert(ca: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca, hashes.SHA256()))


def test_private_key_was_made_on_the_token_and_cannot_leave(made,
                                                            store: SoftHsmStore) -> None:
    token = load(softhsm_conf=store.conf).token("alice")
    with token.open(user_pin=PIN.decode()) as session:
        (key,) = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        assert key[Attribute.ID] == made.key_id == hashlib.sha1(made.public_point).digest()
        assert key[Attribute.SENSITIVE] and key[Attribute.ALWAYS_SENSITIVE]
        assert not key[Attribute.EXTRACTABLE] and key[Attribute.NEVER_EXTRACTABLE]
        assert key[Attribute.LOCAL]                            # generated on the token, not imported
        assert key[Attribute.TOKEN] and key[Attribute.PRIVATE]
        with pytest.raises(p11x.AttributeSensitive):
            key[Attribute.VALUE]


def test_digest_must_be_sha256_sized(signer: Pkcs11Signer) -> None:
    signer.verify_pin(PIN)
    with pytest.raises(hw.InvalidInputError, match="32-byte"):
        signer.sign_digest(b"\x01" * 20)


# ---- PIN ----------------------------------------------------------------------------------------
def test_pin_required_then_verified(signer: Pkcs11Signer) -> None:
    assert signer.pin_status().verified is False
    with pytest.raises(hw.PinRequiredError, match="PIN"):
        signer.sign_digest(bytes(32))
    signer.verify_pin(PIN)
    assert signer.pin_status().verified is True
    signer.sign_digest(bytes(32))


def test_wrong_pin_is_wrong_pin_error(signer: Pkcs11Signer) -> None:
    signer.verify_pin(PIN)
    with pytest.raises(hw.WrongPinError) as e:
        signer.verify_pin(b"999999")
    assert e.value.tries_left is None                         # PKCS#11 does not count for us
    assert "wrong PIN" in str(e.value) and "alice" in str(e.value)
    assert not str(e.value).startswith("CKR_")
    assert signer.pin_status().verified is False              # the standing login was ended first
    with pytest.raises(hw.PinRequiredError):
        signer.sign_digest(bytes(32))
    signer.verify_pin(PIN)
    signer.sign_digest(bytes(32))


def test_softhsm_does_not_lock_the_pin(signer: Pkcs11Signer) -> None:
    """Measured fact: SoftHSM2 2.6 keeps no retry limit, so CKR_PIN_LOCKED is tested on the mapping
    (below) and for real on the simulated card through OpenSC (test_token_opensc.py)."""
    for _ in range(12):
        with pytest.raises(hw.WrongPinError):
            signer.verify_pin(b"000000")
    assert signer.pin_status().blocked is False
    signer.verify_pin(PIN)


def test_pin_locked_maps_to_pin_blocked_error() -> None:
    for err in (hsm_errors.from_rv(0xA4, token="alice"), hsm_errors.from_exception(p11x.PinLocked(), token="alice")):
        assert isinstance(err, hw.PinBlockedError)
        assert "blocked" in str(err) and "alice" in str(err) and "SO PIN" in str(err)
        assert err.ckr == "CKR_PIN_LOCKED"
    err = hsm_errors.from_exception(p11x.PinIncorrect(), token="alice")
    assert isinstance(err, hw.WrongPinError) and err.tries_left is None


@pytest.mark.parametrize("rv", sorted(hsm_errors.CKR))
def test_every_mapped_code_says_more_than_its_name(rv: int) -> None:
    err = hsm_errors.from_rv(rv, token="alice", action="sign")
    assert isinstance(err, hw.HardwareError)
    text = re.sub(r"\(CKR_[A-Z_]+\)", "", str(err))
    assert len(text.split()) >= 4 and "CKR_" not in text


def test_unknown_pkcs11_exception_still_a_token_error() -> None:
    err = hsm_errors.from_exception(p11x.RandomNoRNG(), token="alice", action="sign")
    assert isinstance(err, hw.TokenError) and "alice" in str(err) and "RandomNoRNG" in str(err)


def test_bad_pin_length_at_init_is_refused(store: SoftHsmStore) -> None:
    with pytest.raises(hw.InvalidInputError, match="4 to 255"):
        provision(store, "bob", b"12", SO_PIN)
    assert [t.label for t in load(softhsm_conf=store.conf).tokens() if t.label] == []


# ---- finding tokens and modules ---------------------------------------------------------------------
def test_missing_token_names_the_label(made, store: SoftHsmStore) -> None:
    with pytest.raises(hw.TokenError) as e:
        Pkcs11Signer.open("no such token", softhsm_conf=store.conf)
    text = str(e.value)
    assert "'no such token'" in text and "'alice'" in text and "semper token init" in text


def test_missing_module_file(tmp_path: Path) -> None:
    with pytest.raises(hw.TokenError, match=f"no PKCS#11 module at {tmp_path}/nope.so"):
        load(tmp_path / "nope.so")


def test_not_a_pkcs11_module(tmp_path: Path) -> None:
    text_file = tmp_path / "lib.so"
    text_file.write_text("not a library")
    with pytest.raises(hw.TokenError, match="could not be loaded as a PKCS#11 module"):
        load(text_file)
    libc = Path("/lib/x86_64-linux-gnu/libm.so.6")
    if libc.exists():                                         # a real library without C_GetFunctionList
        with pytest.raises(hw.TokenError, match="PKCS#11"):
            load(libc)
    with pytest.raises(hw.TokenError, match="folder"):
        load(tmp_path)


def test_tokens_in_other_folders_stay_apart(made, tmp_path: Path) -> None:
    other = SoftHsmStore.in_folder(tmp_path / "elsewhere")
    provision(other, "bob", PIN, SO_PIN)
    assert [t.label for t in load(softhsm_conf=other.conf).tokens() if t.label] == ["bob"]
    with pytest.raises(hw.TokenError, match="'alice'"):
        Pkcs11Signer.open("alice", softhsm_conf=other.conf)
    with Pkcs11Signer.open("alice", softhsm_conf=made.store.conf) as s:       # switching back re-initialises
        assert s.key_id == made.key_id


def test_duplicate_label_refused(made, store: SoftHsmStore) -> None:
    with pytest.raises(hw.TokenError, match="already exists"):
        provision(store, "alice", PIN, SO_PIN)


def test_signer_after_module_reinitialised(signer: Pkcs11Signer, store: SoftHsmStore) -> None:
    signer.verify_pin(PIN)
    load(softhsm_conf=store.conf).reinitialize()              # e.g. another signer looked for a new token
    with pytest.raises(hw.PinRequiredError):                  # the session is reopened; the login is gone
        signer.sign_digest(bytes(32))
    signer.verify_pin(PIN)
    point_key(signer.public_point()).verify(signer.sign_digest(bytes(32)), bytes(32),
                                            ec.ECDSA(Prehashed(hashes.SHA256())))


def test_a_mistyped_label_does_not_end_other_logins(signer: Pkcs11Signer, store: SoftHsmStore) -> None:
    signer.verify_pin(PIN)
    before = load(softhsm_conf=store.conf).generation
    with pytest.raises(hw.TokenError, match="'alcie'"):
        Pkcs11Signer.open("alcie", softhsm_conf=store.conf)
    assert load(softhsm_conf=store.conf).generation == before     # nothing new on disk: no re-initialisation
    signer.sign_digest(bytes(32))                                  # still logged in


def test_after_reinitialisation_the_pin_error_says_why(signer: Pkcs11Signer, store: SoftHsmStore) -> None:
    signer.verify_pin(PIN)
    provision(store, "zoe", PIN, SO_PIN)                           # provisioning re-initialises the module
    with pytest.raises(hw.PinRequiredError, match="re-initialised"):
        signer.sign_digest(bytes(32))


# ---- other programs see the same tokens ----------------------------------------------------------
@pytest.mark.skipif(shutil.which("pkcs11-tool") is None, reason="opensc missing")
def test_pkcs11_tool_lists_the_key_semper_made(made, store: SoftHsmStore) -> None:
    r = subprocess.run(["pkcs11-tool", "--module", DEFAULT_MODULE, "--token-label", "alice", "--login",
                        "--pin", PIN.decode(), "-O"], check=False, capture_output=True, text=True, timeout=60,
                        env=store.env())
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Private Key Object; EC" in out and "Public Key Object; EC" in out
    assert out.count(f"ID:         {made.key_id.hex()}") == 2
    assert "never extractable" in out and "sensitive" in out
    r = subprocess.run(["pkcs11-tool", "--module", DEFAULT_MODULE, "-L"], check=False, capture_output=True, text=True,
                       timeout=60, env=clean_env())                     # without SOFTHSM2_CONF: not there
    assert "alice" not in r.stdout


def test_cli_token_init_list_info(tmp_path: Path) -> None:
    folder = tmp_path / "cli-tokens"
    r = semper("token", "init", "--label", "carol", "--dir", str(folder), "--pin-stdin", stdin="123456\n87654321\n")
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line and not line.startswith("("))
    assert fields["label"] == "carol"
    assert f"SOFTHSM2_CONF={folder / 'softhsm2.conf'}" in r.stdout
    key_id = bytes.fromhex(fields["key id"])
    # this process had the module loaded before the token existed: found after re-initialising
    with Pkcs11Signer.open("carol", softhsm_conf=folder / "softhsm2.conf") as s:
        assert s.key_id == key_id and s.public_point().hex() == fields["public point"]
        s.verify_pin(b"123456")
        point_key(s.public_point()).verify(sign_message(s, b"x"), b"x", ec.ECDSA(hashes.SHA256()))
    listed = semper("token", "list", "--dir", str(folder))
    assert listed.returncode == 0 and "'carol'" in listed.stdout and "ready" in listed.stdout
    info = semper("token", "info", "--label", "carol", "--dir", str(folder), "--json")
    assert info.returncode == 0, info.stderr
    assert f'"id": "{key_id.hex()}"' in info.stdout and '"kind": "public key"' in info.stdout
    again = semper("token", "init", "--label", "carol", "--dir", str(folder), "--pin-stdin", stdin="123456\n87654321\n")
    assert again.returncode == 1 and "already exists" in again.stderr
    missing = semper("token", "info", "--label", "dave", "--dir", str(folder))
    assert missing.returncode == 1 and "'dave'" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_import_cert(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    made = provision(SoftHsmStore.in_folder(folder), "erin", PIN, SO_PIN)
    der, _ = issue(made.public_point, "erin")
    (tmp_path / "erin.der").write_bytes(der)
    r = semper("token", "import-cert", "--label", "erin", "--dir", str(folder), "--cert", str(tmp_path / "erin.der"),
               "--pin-stdin", stdin="123456\n")
    assert r.returncode == 0, r.stderr
    with Pkcs11Signer.open("erin", softhsm_conf=folder / "softhsm2.conf") as s:
        assert s.certificate() == der


def test_cli_default_folder_and_softhsm2_conf(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = semper("token", "init", "--label", "frank", "--pin-stdin", stdin="123456\n87654321\n",
               env=clean_env(SEMPER_HOME=str(home)))
    assert r.returncode == 0, r.stderr
    assert (home / "tokens" / "softhsm2.conf").exists()
    assert f"SOFTHSM2_CONF={home / 'tokens' / 'softhsm2.conf'}" in r.stdout
    # SOFTHSM2_CONF, when set, wins over SEMPER_HOME
    other = SoftHsmStore.in_folder(tmp_path / "by-env")
    r = semper("token", "init", "--label", "gina", "--pin-stdin", stdin="123456\n87654321\n",
               env=clean_env(SEMPER_HOME=str(home), SOFTHSM2_CONF=str(other.conf)))
    assert r.returncode == 0, r.stderr
    assert [t.label for t in load(softhsm_conf=other.conf).tokens() if t.label] == ["gina"]
    bad = semper("token", "init", "--label", "hal", "--pin-stdin", stdin="12\n87654321\n",
                 env=clean_env(SEMPER_HOME=str(home)))
    assert bad.returncode == 2 and "4 to 255" in bad.stderr


def test_cli_missing_module() -> None:
    r = semper("token", "list", "--module", "/nonexistent/libfoo.so")
    assert r.returncode == 1 and "no PKCS#11 module at /nonexistent/libfoo.so" in r.stderr


def test_cli_bench_sign_without_card() -> None:
    import json
    r = semper("bench", "sign", "--count", "10", "--no-card")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["raw_cryptography"]["n"] == 10 and result["softhsm_pkcs11"]["verified"] is True
    assert set(result["ratios_to_raw"]) == {"softhsm_pkcs11"}
    assert semper("bench", "sign", "--count", "3").returncode == 2
