"""``semper register`` against a CA on loopback HTTPS, with the simulated card in process and a token.

Every refusal must leave the card's certificate and the CA's registration exactly as they were, and
the right registration must still work afterwards.
"""
from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest
from conftest import SCHEME_PIN
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from test_ca_support import USER_PIN, RunningCa, Tokens, openssl, running_ca, tokens

from semper.client.cli import main
from semper.client.support import pki, regkeys
from semper.client.support.channels import JsonClient
from semper.client.support.personalisation import (
    CardProfile,
    personalise_psam,
    personalise_purse_card,
)
from semper.client.support.registration import RegistrationError, register
from semper.client.support.scheme import Scheme
from semper.hardware import errors as hw
from semper.hardware.piv import PivSession, PivSigner, Slot
from semper.hardware.signer import sign_message
from semper.hardware.simulator import create_card, open_card

PIN = "135790"
NAME, EMAIL = "Alice Example", "alice@example.org"


@pytest.fixture(scope="module")
def pristine_cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("regcards")
    with Scheme.load_or_create(d / "scheme", SCHEME_PIN) as scheme:
        for name in ("a", "b"):
            personalise_purse_card(d / f"{name}.card", scheme, CardProfile(PIN.encode(), b"24682468"), sync=False)
        personalise_psam(d / "psam.card", scheme, sync=False)
    create_card(d / "blank.card", ["piv"], sync=False).close()      # PIV applet, no key generated
    return {n: d / f"{n}.card" for n in ("a", "b", "psam", "blank")}


@pytest.fixture
def card(tmp_path: Path, pristine_cards: dict[str, Path]):
    def copy(name: str = "a") -> Path:
        dest = tmp_path / f"{name}.card"
        shutil.copyfile(pristine_cards[name], dest)
        return dest
    return copy


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEMPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEMPER_CONFIG", str(tmp_path / "config"))
    return tmp_path / "home"


def cert_9c(image: Path) -> bytes:
    with open_card(image, sync=False) as conn:
        return PivSession(conn).certificate(Slot.SIGNATURE)


def run(args: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def cli(rc: RunningCa, key: str, *device: str, name: str = NAME, email: str = EMAIL, url: str | None = None,
        root: Path | None = None) -> list[str]:
    return ["register", "--ca", url or rc.url, "--ca-root", str(root or rc.root_path), "--registration-key", key,
            "--name", name, "--email", email, *device, "--pin-stdin"]


def check_issued_on_card(rc: RunningCa, image: Path, tmp_path: Path) -> x509.Certificate:
    der = cert_9c(image)
    cert = x509.load_der_x509_certificate(der)
    assert cert.issuer == x509.load_pem_x509_certificate(rc.root_pem.encode()).subject
    path = tmp_path / "on-card.pem"
    path.write_text(pki.pem(der))
    r = openssl("verify", "-CAfile", str(rc.root_path), str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.content_commitment
    # the card signs with the key the certificate names
    with open_card(image, sync=False) as conn:
        signer = PivSigner(PivSession(conn))
        signer.verify_pin(PIN.encode())
        sig = sign_message(signer, b"order 42")
    import hashlib
    cert.public_key().verify(sig, hashlib.sha256(b"order 42").digest(),
                             ec.ECDSA(Prehashed(hashes.SHA256())))
    return cert


def test_register_the_simulated_card_in_process(running_ca: RunningCa, card, tmp_path: Path, home: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    image = card()
    key = running_ca.add_person()
    code, out, err = run(cli(running_ca, key, "--image", str(image)), PIN + "\n", monkeypatch, capsys)
    assert code == 0, err
    cert = check_issued_on_card(running_ca, image, tmp_path)
    serial = format(cert.serial_number, "X")
    assert serial in out and "written" in out
    assert (home / "certificates" / f"{serial}.pem").exists()
    assert running_ca.registration(key)["serial"] == serial


def test_register_a_token(running_ca: RunningCa, tokens: Tokens, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(tokens.store.conf))
    key = running_ca.add_person("Bea Token", "bea@example.org")
    code, out, err = run(cli(running_ca, key, "--token", "user-a", name="Bea Token", email="bea@example.org"),
                         USER_PIN.decode() + "\n", monkeypatch, capsys)
    assert code == 0, err
    with tokens.signer("user-a") as signer:
        cert = x509.load_der_x509_certificate(signer.certificate())
        assert pki.point_of(cert) == signer.public_point()
    assert format(cert.serial_number, "X") == running_ca.registration(key)["serial"]
    r = subprocess_pkcs11_list(tokens)
    assert "Bea Token" in r


def subprocess_pkcs11_list(tokens: Tokens) -> str:
    import subprocess
    r = subprocess.run(["pkcs11-tool", "--module", "/usr/lib/softhsm/libsofthsm2.so", "--token-label", "user-a",
                        "--list-objects", "--type", "cert"], capture_output=True, text=True, timeout=60,
                       env=tokens.store.env())
    return r.stdout + r.stderr


REFUSALS = ["wrong_key", "malformed_key", "name", "email", "unreachable", "other_root", "wrong_pin"]


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_leave_nothing_changed(case: str, running_ca: RunningCa, card, tmp_path: Path, tokens: Tokens,
                                        monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    image = card()
    before = cert_9c(image)
    key = running_ca.add_person()
    args = cli(running_ca, key, "--image", str(image))
    pin = PIN
    if case == "wrong_key":
        args = cli(running_ca, regkeys.new_key(), "--image", str(image))
    elif case == "malformed_key":
        args = cli(running_ca, key[:-2] + "01", "--image", str(image))
    elif case == "name":
        args = cli(running_ca, key, "--image", str(image), name="Mallory")
    elif case == "email":
        args = cli(running_ca, key, "--image", str(image), email="mallory@example.org")
    elif case == "unreachable":
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = cli(running_ca, key, "--image", str(image), url=f"https://127.0.0.1:{port}")
    elif case == "other_root":
        from test_ca_support import start_ca
        other = start_ca(tmp_path / "other", tokens, label="ca-other")
        other.runner.stop()
        args = cli(running_ca, key, "--image", str(image), root=other.root_path)
    elif case == "wrong_pin":
        pin = "000000"
    code, out, err = run(args, pin + "\n", monkeypatch, capsys)
    assert code in (1, 2) and out == ""
    assert err.startswith("semper: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "unexpected" not in err
    expected = {"wrong_key": "registration key is not valid", "malformed_key": "letters", "name": "name",
                "email": "e-mail", "unreachable": "unreachable", "other_root": "pinned", "wrong_pin": "wrong PIN"}
    assert expected[case] in err, err
    assert cert_9c(image) == before                               # the card is as it was
    assert running_ca.registration(key)["used_at"] is None       # the registration key is not burnt
    assert running_ca.issued() == []
    code, _out, err = run(cli(running_ca, key, "--image", str(image)), PIN + "\n", monkeypatch, capsys)
    assert code == 0, err                                          # and the right attempt still works
    assert cert_9c(image) != before


def test_a_used_registration_key_is_refused_for_another_card(running_ca: RunningCa, card, monkeypatch, capsys) -> None:
    first, second = card("a"), card("b")
    key = running_ca.add_person()
    assert run(cli(running_ca, key, "--image", str(first)), PIN + "\n", monkeypatch, capsys)[0] == 0
    before = cert_9c(second)
    code, _out, err = run(cli(running_ca, key, "--image", str(second)), PIN + "\n", monkeypatch, capsys)
    assert code == 1 and "already used" in err
    assert cert_9c(second) == before
    assert len(running_ca.issued()) == 1


@pytest.mark.parametrize("which, message", [("blank", "has no signature key"), ("psam", "has no PIV applet")])
def test_a_card_without_a_key_is_refused_before_the_pin(which: str, message: str, running_ca: RunningCa, card,
                                                        monkeypatch, capsys) -> None:
    image = card(which)
    key = running_ca.add_person()
    code, out, err = run(cli(running_ca, key, "--image", str(image)), "", monkeypatch, capsys)   # no PIN given
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert running_ca.registration(key)["used_at"] is None
    assert running_ca.issued() == []


def test_a_failed_write_after_issuance_is_recovered_by_running_again(running_ca: RunningCa, card,
                                                                      tmp_path: Path) -> None:
    image = card()
    key = running_ca.add_person()
    client = JsonClient(running_ca.url, running_ca.root_pem)

    def broken_write(_der: bytes) -> None:
        raise hw.CardRemovedError("the card was pulled")

    with open_card(image, sync=False) as conn:
        session = PivSession(conn)
        signer = PivSigner(session)
        before = signer.certificate()
        with pytest.raises(RegistrationError, match="Run the same command again") as e:
            register(signer, pin=PIN.encode(), client=client, root_pem=running_ca.root_pem, registration_key=key,
                     name=NAME, email=EMAIL, write=broken_write, save_dir=tmp_path / "saved")
        assert "saved in" in str(e.value)
        assert signer.certificate() == before
        assert running_ca.registration(key)["used_at"] is not None      # the CA did issue
        done = register(signer, pin=PIN.encode(), client=client, root_pem=running_ca.root_pem,
                        registration_key=key, name=NAME, email=EMAIL,
                        write=lambda der: session.put_certificate(Slot.SIGNATURE, der),
                        read_back=signer.certificate, save_dir=tmp_path / "saved")
        assert done.repeated and signer.certificate() == done.certificate
    assert len(running_ca.issued()) == 1
