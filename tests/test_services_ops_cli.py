"""The operators of issue 16's services from the command line: ``semper certifier init``, ``semper mall init``,
``semper serve mall``, and what ``semper buy --service`` asks for before the TINGUIN opens.

Every command runs as its own process, as an operator would type it."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from served import REPO, Served
from test_services import PERMITS, SUBSCRIPTION

from semper.client.commerce.services.certificate import check
from semper.client.commerce.services.download import revocation_list
from semper.client.demo_world import CARD_PIN, World
from semper.client.support import pki
from semper.client.support.trust import TrustStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    env["SEMPER_HOME"] = str(tmp_path / "home")
    env["SEMPER_CONFIG"] = str(tmp_path / "prefs.toml")
    return env


def _semper(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


# ---- semper certifier init -------------------------------------------------------------------------------------
def test_certifier_init_serve_and_certify_as_an_operator_would(tmp_path: Path) -> None:
    """``semper certifier init`` makes the certifier's token, has the CA certify its key with the certifier's own
    key usage, writes its folder; ``semper serve certifier`` runs it, and a certificate it signs passes every
    check a buyer makes (its revocation list fetched from where the certificate says)."""
    env = _env(tmp_path)
    (tmp_path / "ca.pin").write_text("ca-pin-9876\n")
    (tmp_path / "certifier.pin").write_text("certifier-pin-5432\n")
    assert _semper(env, "ca", "init", "--create-token", "--pin-file", str(tmp_path / "ca.pin")).returncode == 0
    port = _free_port()
    base = ("certifier", "init", "--ca-pin-file", str(tmp_path / "ca.pin"), "--url", f"https://127.0.0.1:{port}")
    r = _semper(env, *base, "--create-token", "--pin-stdin", "--json", stdin="certifier-pin-5432\n")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    folder = tmp_path / "home" / "certifier"
    assert out["folder"] == str(folder) and out["url"] == f"https://127.0.0.1:{port}"
    cert = x509.load_pem_x509_certificate((folder / "certifier.pem").read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [u.dotted_string for u in eku] == [pki.ROLES["certifier"].role_oid]
    assert oct((folder / "admin-secret").stat().st_mode & 0o777) == "0o600"
    # a second init refuses, one line, exit 2; so do bad policies and plain-HTTP addresses
    again = _semper(env, *base, "--pin-file", str(tmp_path / "certifier.pin"))
    assert again.returncode == 2 and "already holds a certifier" in again.stderr and len(again.stderr.splitlines()) == 1
    (tmp_path / "policy.json").write_text('{"max_amount": 500, "modulez": ["cheque"]}')
    bad = _semper(env, *base, "--dir", str(tmp_path / "c2"), "--pin-file", str(tmp_path / "certifier.pin"),
                  "--policy", str(tmp_path / "policy.json"))
    assert bad.returncode == 2 and "unknown field(s) modulez" in bad.stderr, bad.stderr
    plain = _semper(env, "certifier", "init", "--dir", str(tmp_path / "c3"), "--ca-pin-file", str(tmp_path / "ca.pin"),
                    "--pin-file", str(tmp_path / "certifier.pin"), "--url", "http://127.0.0.1:1")
    assert plain.returncode == 2 and "HTTPS" in plain.stderr
    assert not (tmp_path / "c2").exists() and not (tmp_path / "c3").exists()

    served = Served("certifier", "certifier-pin-5432", env, "--port", str(port))
    try:
        (tmp_path / "doc.json").write_text(json.dumps(SUBSCRIPTION))
        (tmp_path / "permits.json").write_text(json.dumps(PERMITS))
        r = _semper(env, "certifier", "certify", str(tmp_path / "doc.json"), "--permits",
                    str(tmp_path / "permits.json"), "-o", str(tmp_path / "doc.cert"), "--url", served.url)
        assert r.returncode == 0, r.stderr
        root_pem = (tmp_path / "home" / "ca" / "ca.pem").read_text()
        rl = revocation_list(f"{served.url}/revocations", root_pem)
        checked = check(SUBSCRIPTION, (tmp_path / "doc.cert").read_bytes(), rl,
                        trust=TrustStore([x509.load_pem_x509_certificate(root_pem.encode())]), certifiers=[cert])
        assert checked.document.name == "tea-news" and checked.permit.max_amount == 500
    finally:
        served.stop()


# ---- one marketplace for the buyer's and the mall's commands (one World per process: one PKCS#11 module) ----------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World.create(tmp_path_factory.mktemp("market"))
    w.start_in_process()
    try:
        yield w
    finally:
        w.stop()


def _builtin(which: str, /, **changes: Any) -> dict[str, Any]:
    doc = json.loads((REPO / "client" / "commerce" / "services" / "documents" / f"{which}.json").read_text())
    return {**doc, **changes}


def test_buy_service_names_what_the_services_own_protocol_needs(world: World, tmp_path: Path) -> None:
    """``semper buy --service``: an information or contract service is a fair exchange, whatever --workflow
    says, so the third party and the mailbox's TLS files are asked for, named from the service's protocol,
    one line, exit 2, before the TINGUIN opens; a service paid only online asks for the bank."""
    services = world.shop_dir / "services"
    services.mkdir(exist_ok=True)
    (services / "tea-report.json").write_text(json.dumps(_builtin("information", name="tea-report")))
    (services / "tea-contract.json").write_text(json.dumps(_builtin("contract", name="tea-contract")))
    by_cheque = _builtin("mail-order", name="tea-by-cheque", anonymity=False,
                         payment={"modules": ["cheque"], "max_amount": 5000, "currency": 978})
    (services / "tea-by-cheque.json").write_text(json.dumps(by_cheque))
    (tmp_path / "ca.pem").write_text(world.root_pem)
    (tmp_path / "pin").write_bytes(CARD_PIN)
    (tmp_path / "mailbox").mkdir()
    (tmp_path / "mailbox" / "cert.pem").write_text(world.root_pem)      # there: the check is only that it is
    env = _env(tmp_path)

    def buy(service: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return _semper(env, "buy", world.services.shop, "--service", service, "tea-sampler", "--image",
                       str(world.buyer_card), "--ca-root", str(tmp_path / "ca.pem"), "--certifiers",
                       str(tmp_path / "ca.pem"), "--script", str(tmp_path / "pin"), *extra)
    r = buy("tea-report")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("semper: the service 'tea-report' is an information deal, a fair exchange through "
                                "the third party: pass --ttp URL (or semper prefs set servers.ttp URL)")
    r = buy("tea-report", "--ttp", world.services.ttp)
    assert r.returncode == 2 and "the service 'tea-report' is an information deal, a fair exchange: it needs your " \
        "mailbox's TLS key and chain" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    r = buy("tea-report", "--ttp", world.services.ttp, "--tls-dir", str(tmp_path / "mailbox"))
    assert r.returncode == 2 and "--purse-root" in r.stderr, r.stderr
    r = buy("tea-contract")
    assert r.returncode == 2 and "the service 'tea-contract' is a contract deal, a fair exchange through the third " \
        "party: pass --ttp URL" in r.stderr, r.stderr
    r = buy("tea-by-cheque")
    assert r.returncode == 2 and "the service 'tea-by-cheque' is a mail-order deal paid with cheque, which needs " \
        "the bank: --bank URL" in r.stderr, r.stderr
    assert not (tmp_path / "home" / "evidence.sqlite3").exists()            # nothing started


# ---- semper mall init, semper serve mall, and a purchase through the mall ---------------------------------------
def test_mall_init_serve_and_a_purchase_from_the_command_line(world: World, tmp_path: Path) -> None:
    """An operator sets the mall up over two shops given by URL, with its account at the bank; ``semper serve
    mall`` reads its index from the shops; its certified ``mall-basket`` service, bought with ``semper buy
    --service``, takes one cheque from the buyer and settles with both shops: money is conserved."""
    from semper.bench.policy_ui import PolicyUI
    from semper.client.commerce.setup import BuyerConfig, open_buyer, register_card
    from semper.client.demo_world import TOKEN_PIN
    from semper.client.servers.ca_home import issue_tls_identity
    from semper.client.support.channels import JsonClient
    from semper.hardware.simulator import open_card
    s = world.services
    world.start_mall()                               # the second shop (and an in-process mall this test ignores)
    opened = world.start_certifier()
    env = _env(tmp_path)
    (tmp_path / "ca.pem").write_text(world.root_pem)
    tls = issue_tls_identity(world.ca, ("127.0.0.1", "localhost"), tmp_path / "mall-tls", name="Tea Mall")
    init = ("mall", "init", "--dir", str(tmp_path / "mall"), "--name", "Tea Mall", "--token", "mall", "--token-dir",
            str(Path(world.store.conf).parent), "--account", world.accounts["mall"], "--bank", s.bank,
            "--bank-tls-root", str(world.bank_tls_root), "--tls-dir", str(tls[0].parent), "--ca-dir",
            str(world.ca_dir), "--ca-pin-file", str(world.pin_file), "--purchasing-email", "orders@mall.example")
    bad = _semper(env, *init, "--shop", f"teapots={s.shop}", "--shop", "Kettles=" + s.shop2)
    assert bad.returncode == 2 and "--shop 'Kettles=" in bad.stderr and len(bad.stderr.splitlines()) == 1
    gone = _semper(env, *init, "--shop", f"teapots={s.shop}", "--shop", f"kettles=https://127.0.0.1:{_free_port()}")
    assert gone.returncode == 1 and "cannot read the catalogue of the shop" in gone.stderr, gone.stderr
    assert not (tmp_path / "mall").exists()
    r = _semper(env, *init, "--shop", f"teapots={s.shop}", "--shop", f"kettles={s.shop2}", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [(x["key"], x["name"]) for x in out["shops"]] == [("teapots", "Teapot Shop"), ("kettles", "Kettle Shop")]
    purchasing = x509.load_der_x509_certificate((tmp_path / "mall" / "orders.der").read_bytes())
    assert purchasing.public_key() == x509.load_pem_x509_certificate(
        (tmp_path / "mall" / "mall.pem").read_bytes()).public_key()            # the same key, as a customer
    again = _semper(env, *init, "--shop", f"teapots={s.shop}")
    assert again.returncode == 2 and "already holds a mall" in again.stderr

    # the operator has the mall's service certified, and serves the mall
    basket = tmp_path / "mall" / "services" / "mall-basket.json"
    (tmp_path / "permits.json").write_text(json.dumps({"modules": ["cheque", "setpay"], "max_amount": 100_000,
                                                       "currency": 978, "card_signature": True, "anonymity": False,
                                                       "max_periods": 1}))
    r = _semper(env, "certifier", "certify", str(basket), "--permits", str(tmp_path / "permits.json"), "-o",
                str(basket.with_suffix(".cert")), "--dir", str(world.certifier_dir), "--url", s.certifier)
    assert r.returncode == 0, r.stderr
    mall = Served("mall", TOKEN_PIN.decode(), env, "--dir", str(tmp_path / "mall"), timeout=60)
    try:
        with JsonClient(mall.url, world.root_pem, name="the mall") as c:
            index = c.get("/mall/index")
        assert {sh["name"] for sh in index["shops"]} == {"Teapot Shop", "Kettle Shop"}
        assert {"teapots--teapot", "kettles--kettle"} <= {i["sku"] for i in index["items"]}
        # the buyer: card registered and prefs set as in docs/getting-started.md
        with open_card(world.buyer_card, sync=False) as card:
            cfg = BuyerConfig(shop_url=s.shop, ca_root_pem=world.root_pem, archive=tmp_path / "setup.sqlite3",
                              bank_url=s.bank, bank_tls_root=world.bank_tls_root, account=world.accounts["buyer"])
            session = open_buyer(cfg, PolicyUI(pin=CARD_PIN), card)
            register_card(session, ca_url=s.ca, ca_root_pem=world.root_pem, registration_key=world.registration_key(),
                          name="Bob Buyer", email="bob@buyer.example", save_dir=tmp_path / "certs")
            session.close()
        for key, value in (("trust.certifiers", str(world.certifier_dir / "certifier.pem")),
                           ("trust.ca_root", str(tmp_path / "ca.pem")), ("servers.bank", s.bank),
                           ("trust.bank_tls_root", str(world.bank_tls_root)),
                           ("payment.account", world.accounts["buyer"])):
            assert _semper(env, "prefs", "set", key, value).returncode == 0
        (tmp_path / "pin").write_bytes(CARD_PIN)
        before = world.balances()
        r = _semper(env, "buy", mall.url, "--service", "mall-basket", "teapots--teapot", "kettles--kettle", "--pay",
                    "cheque", "--image", str(world.buyer_card), "--script", str(tmp_path / "pin"), "-f",
                    "name=Bob Buyer", "-f", "street=1 Teapot Lane", "-f", "postcode=10115", "-f", "city=Berlin",
                    "-f", "country=DE", "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        result = json.loads(r.stdout)
        assert result["status"] == "satisfied" and "by 2 shops, each part signed by its shop" in result["summary"]
        after = world.balances()
        assert after["buyer account"] == before["buyer account"] - (1250 + 2490)      # one cheque, to the mall
        assert after["mall account"] == before["mall account"]                        # all of it to the shops
        assert after["seller account"] == before["seller account"] + 1250
        assert after["shop2 account"] == before["shop2 account"] + 2490
    finally:
        mall.stop()
        opened.close()
