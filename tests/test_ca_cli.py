"""The operator's commands (``semper ca ...``) and ``semper serve ca`` as a real process."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCHEME_PIN
from cryptography import x509
from served import Served
from test_ca_support import openssl

from semper.client.cli import main
from semper.client.support.channels import JsonClient
from semper.client.support.personalisation import CardProfile, personalise_purse_card
from semper.client.support.scheme import Scheme

CA_PIN = "operator-pin-1"
CARD_PIN = "112233"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("SEMPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEMPER_CONFIG", str(tmp_path / "config"))
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)
    return {**os.environ}


def run(args: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


class Served(Served):
    def __init__(self, env: dict[str, str], timeout: float = 20.0) -> None:
        super().__init__("ca", CA_PIN, env, timeout=timeout)


def test_operator_cycle_with_a_served_ca(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys) -> None:
    home = tmp_path / "home"
    code, out, err = run(["ca", "init", "--create-token", "--name", "Test Root", "--pin-stdin"], CA_PIN + "\n",
                         monkeypatch, capsys)
    assert code == 0, err
    root = home / "ca" / "ca.pem"
    assert root.exists() and "SO PIN" in err
    assert oct((home / "ca" / "admin-secret").stat().st_mode & 0o777) == "0o600"
    # pkcs11-tool sees the CA's key in its token
    listing = subprocess.run(["pkcs11-tool", "--module", "/usr/lib/softhsm/libsofthsm2.so", "-L"],
                             capture_output=True, text=True, timeout=60,
                             env={**env, "SOFTHSM2_CONF": str(home / "ca" / "softhsm" / "softhsm2.conf")})
    assert "semper-ca" in listing.stdout
    code, _out, err = run(["ca", "init", "--pin-stdin"], CA_PIN + "\n", monkeypatch, capsys)
    assert code == 2 and "already initialised" in err

    code, out, err = run(["ca", "add-person", "--name", "Alice Example", "--email", "alice@example.org", "--json"], "",
                         monkeypatch, capsys)
    assert code == 0, err
    key = json.loads(out)["registration_key"]
    code, _out, err = run(["ca", "add-person", "--name", "X", "--role", "server"], "", monkeypatch, capsys)
    assert code == 1 and "--host" in err

    card = tmp_path / "card"
    with Scheme.load_or_create(tmp_path / "scheme", SCHEME_PIN) as scheme:
        personalise_purse_card(card, scheme, CardProfile(CARD_PIN.encode(), b"11223344"), sync=False)
    served = Served(env)
    try:
        code, out, err = run(["register", "--ca", served.url, "--ca-root", str(root), "--registration-key", key,
                              "--name", "Alice Example", "--email", "alice@example.org", "--image", str(card),
                              "--pin-stdin"], CARD_PIN + "\n", monkeypatch, capsys)
        assert code == 0, err
        serial = out.split()[1]
        code, out, err = run(["ca", "revoke", serial.lower(), "--reason", "key_compromise"], "", monkeypatch, capsys)
        assert code == 0 and "revoked" in out, err
        code, _out, err = run(["ca", "revoke", serial], "", monkeypatch, capsys)
        assert code == 1 and "already revoked" in err
        # the running service signs a fresh CRL that lists it, without a restart
        crl = x509.load_der_x509_crl(JsonClient(served.url, root.read_text()).get_bytes("/crl"))
        assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    finally:
        assert "stopped" in served.stop()

    out_file = tmp_path / "ca.crl"
    code, out, err = run(["ca", "crl", "--out", str(out_file), "--pin-stdin"], CA_PIN + "\n", monkeypatch, capsys)
    assert code == 0, err
    r = openssl("crl", "-in", str(out_file), "-CAfile", str(root), "-noout", "-text")
    assert r.returncode == 0 and "verify OK" in r.stderr and "Key Compromise" in r.stdout
    code, _out, err = run(["ca", "crl", "--pin-stdin"], "wrong-pin\n", monkeypatch, capsys)
    assert code == 1 and "wrong PIN" in err

    tls = tmp_path / "shop-tls"
    code, out, err = run(["ca", "tls-cert", "--host", "127.0.0.1", "--host", "shop.example", "--out", str(tls),
                          "--pin-stdin"], CA_PIN + "\n", monkeypatch, capsys)
    assert code == 0, err
    r = openssl("verify", "-CAfile", str(root), "-purpose", "sslserver", str(tls / "cert.pem"))
    assert r.returncode == 0, r.stdout + r.stderr

    code, out, _err = run(["ca", "list", "--json"], "", monkeypatch, capsys)
    listing = json.loads(out)
    assert listing["registrations"][0]["serial"] == serial
    assert any(c["serial"] == serial and c["reason"] == "key_compromise" for c in listing["certificates"])


def test_commands_without_a_ca_say_so(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    code, _out, err = run(["ca", "add-person", "--name", "A", "--email", "a@example.org"], "", monkeypatch, capsys)
    assert code == 2 and "semper ca init" in err
    with pytest.raises(SystemExit) as e:                      # a malformed storage URL is bad input: exit 2
        run(["ca", "list", "--db", "mysql://x"], "", monkeypatch, capsys)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "storage URL" in err and "postgresql://" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("pkcs11-tool") is None, reason="opensc missing")
def test_serve_refuses_a_wrong_pin(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert run(["ca", "init", "--create-token", "--pin-stdin"], CA_PIN + "\n", monkeypatch, capsys)[0] == 0
    r = subprocess.run([sys.executable, "-m", "semper.client.cli", "serve", "ca", "--port", "0", "--pin-stdin"],
                       input="not-the-pin\n", capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "wrong PIN" in r.stderr and r.stdout == ""
