"""A whole marketplace made from nothing in one folder: the demo's, the benchmark's and the tests' world.

What it makes (all throwaway, all real): a purse scheme root; SoftHSM2 tokens for the CA, the
seller, the bank, the third party and the buyer's e-cash wallet (provisioned first: provisioning
re-initialises the PKCS#11 module, which would end earlier logins); a semper CA that certifies the
seller, the third party and the services' TLS keys; the bank (issuer, acquirer, accounts, mint)
with the seller's and the buyer's accounts, the buyer's card and the seller's PSAM linked; the third
party; the buyer's card (purse + PIV) and the seller's PSAM as card images; the shop's folder.

Services run either in this process (:meth:`World.start_in_process`, tests and benchmark: one
SoftHSM2 module for all) or as the real ``semper serve ...`` processes (:meth:`World.start_processes`,
the demo), each announcing its URL; :meth:`World.stop` ends whatever was started.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from .support.closing import close_all
from .support.secret_files import write_secret

TOKEN_PIN = b"demo-token-2468"
SO_PIN = b"demo-so-13579135"
CARD_PIN = b"1234"
CARD_PUK = b"12345678"
EUR = 978
TOKENS = ("ca", "seller", "bank", "ttp", "wallet", "certifier", "mall", "shop2")
DENOMINATIONS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
SHOP_NAME = "Teapot Shop"
CERTIFIER_NAME = "semper service certifier"
MALL_NAME = "Tea Mall"
SHOP2_NAME = "Kettle Shop"
BUYER_NAME = "Bob Buyer"
BUYER_EMAIL = "bob@buyer.example"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Services:
    ca: str = ""
    bank: str = ""
    ttp: str = ""
    shop: str = ""
    certifier: str = ""
    shop2: str = ""
    mall: str = ""
    runners: list[Any] = field(default_factory=list)        # in-process ServiceRunners
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    closers: list[Any] = field(default_factory=list)
    opened_shop: Any = None                                  # the in-process shop (tests, benchmark)


@dataclass
class World:
    folder: Path
    scheme: Any                       # client.support.scheme.Scheme
    store: Any                        # hsm.softhsm.SoftHsmStore
    ca: Any                           # client.servers.ca.CertificationAuthority (operator's handle)
    root_pem: str
    buyer_card: Path
    psam_card: Path
    accounts: dict[str, str]
    services: Services = field(default_factory=Services)
    bank: Any = None                  # client.servers.bank.Bank (operator's handle: balances)
    dbs: dict[str, str] = field(default_factory=dict)    # service -> storage URL (none: SQLite in its folder)

    # ---- paths ----------------------------------------------------------------------------------
    ca_dir = property(lambda self: self.folder / "ca")
    bank_dir = property(lambda self: self.folder / "bank")
    ttp_dir = property(lambda self: self.folder / "ttp")
    shop_dir = property(lambda self: self.folder / "shop")
    buyer_dir = property(lambda self: self.folder / "buyer")
    certifier_dir = property(lambda self: self.folder / "certifier")
    pin_file = property(lambda self: self.folder / "token.pin")

    @property
    def ca_root(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.root_pem.encode())

    @property
    def bank_tls_root(self) -> Path:
        return self.bank_dir / "tls" / "tls-root.pem"

    # ---- making it ----------------------------------------------------------------------------------
    def db_args(self, service: str) -> list[str]:
        """``--db URL`` for a service's command when the world keeps it in a database of its own choosing."""
        url = self.dbs.get(service)
        return ["--db", url] if url else []

    @classmethod
    def create(cls, folder: Path, *, card_sync: bool = False, say: Any = None, people: tuple[str, ...] = (),
               dbs: dict[str, str] | None = None) -> World:
        """``people``: more persons, each with a token of that label, a CA certificate and a bank account
        (``accounts[name]``): the parties of person-to-person exchanges (``semper exchange``, its tests).
        ``dbs``: storage URLs by service (``ca``, ``bank``, ``ttp``, ``shop``), e.g. PostgreSQL databases; a
        service not named keeps SQLite in its folder."""
        from semper.hsm.signer import Pkcs11Signer
        from semper.hsm.softhsm import SoftHsmStore, provision

        from .servers.bank_home import BankHome
        from .servers.ca import CertificationAuthority
        from .servers.ca_home import CaHome
        from .servers.ttp_home import TtpHome
        from .support import pki
        from .support.personalisation import CardProfile, personalise_psam, personalise_purse_card
        from .support.scheme import Scheme
        tell = say or (lambda _line: None)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "home").mkdir(exist_ok=True)
        pin_file = folder / "token.pin"
        write_secret(pin_file, TOKEN_PIN)
        tell("purse scheme root and SoftHSM2 tokens (CA, seller, bank, third party, wallet)")
        scheme = Scheme.load_or_create(folder / "scheme", TOKEN_PIN)     # the PIN file is beside, not in, it
        store = SoftHsmStore.in_folder(folder / "softhsm")
        for label in TOKENS + tuple(people):
            provision(store, label, TOKEN_PIN, SO_PIN)
        conf = str(store.conf)
        tell("the CA: self-signed root in its token")
        ca_signer = Pkcs11Signer.open("ca", softhsm_conf=conf)
        ca_signer.verify_pin(TOKEN_PIN)
        dbs = dict(dbs or {})
        ca_home = CaHome(folder / "ca", dbs.get("ca"))
        ca_home.folder.mkdir(parents=True, exist_ok=True)
        ca = CertificationAuthority(ca_home.db, ca_signer)
        secret = ca.initialise("semper demo CA", token_label="ca", softhsm_conf=conf)
        write_secret(ca_home.admin_secret_file, secret)
        ca_home.publish_root(ca)
        root_pem = pki.pem(ca.certificate())
        root = x509.load_pem_x509_certificate(root_pem.encode())
        tell("the seller's key (token) certified by the CA")
        seller = Pkcs11Signer.open("seller", softhsm_conf=conf)
        seller.verify_pin(TOKEN_PIN)
        seller_cert = ca.issue_direct(pki.Subject(SHOP_NAME, "seller", "sales@teapot.example"),
                                      seller.public_point()).certificate
        seller.store_certificate(seller_cert)
        tell("the service certifier's key (its own token, role certifier) certified by the CA")
        certifier = Pkcs11Signer.open("certifier", softhsm_conf=conf)
        certifier.verify_pin(TOKEN_PIN)
        certifier.store_certificate(ca.issue_direct(pki.Subject(CERTIFIER_NAME, "certifier"),
                                                    certifier.public_point()).certificate)
        certifier.close()
        tell("the mall's key (seller to buyers, customer to its shops) and a second shop's key")
        mall = Pkcs11Signer.open("mall", softhsm_conf=conf)
        mall.verify_pin(TOKEN_PIN)
        mall_cert = ca.issue_direct(pki.Subject(MALL_NAME, "seller", "billing@mall.example"),
                                    mall.public_point()).certificate
        mall.store_certificate(mall_cert)
        (folder / "mall").mkdir(exist_ok=True)
        (folder / "mall" / "orders.der").write_bytes(ca.issue_direct(
            pki.Subject(MALL_NAME + " purchasing", "person", "orders@mall.example"), mall.public_point()).certificate)
        mall.close()
        shop2 = Pkcs11Signer.open("shop2", softhsm_conf=conf)
        shop2.verify_pin(TOKEN_PIN)
        shop2_cert = ca.issue_direct(pki.Subject(SHOP2_NAME, "seller", "sales@kettles.example"),
                                     shop2.public_point()).certificate
        shop2.store_certificate(shop2_cert)
        shop2.close()
        tell("the bank: issuer key, payment-instruction key and mint keys in its token")
        bank_home = BankHome(folder / "bank", dbs.get("bank"))
        bank_home.init(scheme, TOKEN_PIN, token_label="bank", softhsm_conf=Path(conf), denominations=DENOMINATIONS,
                       extra_roots=(root,), bank_id="BANK-DEMO")
        bank = bank_home.open(TOKEN_PIN)
        issuer_point = bank.keys.signer.public_point()
        tell("the third party: signing, escrow and time-stamping keys in its token")
        TtpHome.create(folder / "ttp", ca=ca, token_label="ttp", pin=TOKEN_PIN, softhsm_conf=conf,
                       purse_root=scheme.root_cert, dsn=dbs.get("ttp"))
        tell("the buyer's card (purse + PIV) and the seller's PSAM")
        cards = folder / "cards"
        cards.mkdir(exist_ok=True)
        buyer_card, psam_card = cards / "buyer.card", cards / "psam.card"
        personalise_purse_card(buyer_card, scheme, CardProfile(CARD_PIN, CARD_PUK, max_balance=50_000),
                               sync=card_sync, issuer_point=issuer_point)
        personalise_psam(psam_card, scheme, sync=card_sync)
        from semper.hardware import cards as card_access
        from semper.hardware.iso7816 import AID
        from semper.hardware.piv import PivSession, Slot
        from semper.hardware.psam import PsamSession
        from semper.hardware.purse import PurseSession
        with card_access.connection(AID.PURSE, image=buyer_card, sync=card_sync) as c:
            piv_cert = PivSession(c).certificate(Slot.SIGNATURE)
            purse_cert = PurseSession(c).certificate()
        with card_access.connection(AID.PSAM, image=psam_card, sync=card_sync) as c:
            psam_cert = PsamSession(c).certificate()
        tell("accounts: the seller's and the buyer's (100.00 EUR); card and PSAM linked")
        accounts = {"seller": bank.open_account(SHOP_NAME, EUR, seller_cert),
                    "buyer": bank.open_account(BUYER_NAME, EUR, piv_cert),
                    "mall": bank.open_account(MALL_NAME, EUR, mall_cert),
                    "shop2": bank.open_account(SHOP2_NAME, EUR, shop2_cert)}
        bank.link_card(purse_cert, accounts["buyer"])
        bank.link_psam(psam_cert, accounts["seller"])
        bank.cash_in(accounts["buyer"], 10_000)
        closers = [seller.close]
        for name in people:
            person = Pkcs11Signer.open(name, softhsm_conf=conf)
            person.verify_pin(TOKEN_PIN)
            cert = ca.issue_direct(pki.Subject(name.title(), "person", f"{name}@people.example"),
                                   person.public_point()).certificate
            person.store_certificate(cert)
            accounts[name] = bank.open_account(name.title(), EUR, cert)
            bank.cash_in(accounts[name], 10_000)
            closers.append(person.close)
        world = cls(folder, scheme, store, ca, root_pem, buyer_card, psam_card, accounts, bank=bank, dbs=dbs)
        world.services.closers += closers
        return world

    def add_psam(self, name: str) -> Path:
        """One more PSAM card for the seller (``cards/<name>.card``), its key certified by the scheme and linked
        at the bank to the seller's account like the first: a shop with several readers (``more_psams`` of
        :meth:`start_shop_process`) clears what each of them took."""
        from semper.hardware import cards as card_access
        from semper.hardware.iso7816 import AID
        from semper.hardware.psam import PsamSession

        from .support.personalisation import personalise_psam
        if self.bank is None:
            raise RuntimeError("this world's bank is not open here: it cannot link another PSAM")
        card = self.psam_card.parent / f"{name}.card"
        personalise_psam(card, self.scheme, sync=False)
        with card_access.connection(AID.PSAM, image=card, sync=False) as c:
            self.bank.link_psam(PsamSession(c).certificate(), self.accounts["seller"])
        return card

    # ---- services -------------------------------------------------------------------------------------
    def child_env(self) -> dict[str, str]:
        """The environment of the service processes: the world's home, and the card key folder this
        process made the cards with (a child under another SEMPER_HOME would look elsewhere)."""
        from semper.hardware.simulator import card_key_folder
        env = {**os.environ, "SEMPER_HOME": str(self.folder / "home"), "SEMPER_CARD_KEYS": str(card_key_folder())}
        env.pop("SOFTHSM2_CONF", None)
        return env

    def _shop_home(self, psam_reader: str | None, ttp_url: str, bank_url: str, catalogue: Any = None,
                   more_psams: tuple[str, ...] = ()) -> Any:
        from .commerce.catalogue import demo_catalogue
        from .servers.ca_home import issue_tls_identity
        from .servers.shop_home import ShopHome
        from .servers.ttp_home import TtpHome
        tls = issue_tls_identity(self.ca, ("127.0.0.1", "localhost"), self.folder / "shop-tls", name=SHOP_NAME)
        ttp = TtpHome(self.ttp_dir)
        return ShopHome.create(self.shop_dir, name=SHOP_NAME, token_label="seller", softhsm_conf=str(self.store.conf),
                               account=self.accounts["seller"], bank_url=bank_url, bank_tls_root=self.bank_tls_root,
                               ca_root=self.ca_root, purse_root=self.scheme.root_cert,
                               catalogue=catalogue or demo_catalogue(),
                               tls=tls, psam_reader=psam_reader, psam_image=None if psam_reader else self.psam_card,
                               ttp_url=ttp_url, ttp_cert=ttp.certificate(), escrow=ttp.escrow_file.read_bytes(),
                               more_psams=tuple({"reader": r} for r in more_psams))

    def start_in_process(self, *, psam_reader: str | None = None, shop: bool = True) -> Services:
        """CA, bank, third party and (unless ``shop`` is false) the shop in this process, each on its own
        loopback port."""
        from .servers.bank_home import BankHome
        from .servers.ca_home import issue_tls_identity
        from .servers.ca_http import build_app as ca_app
        from .servers.ttp_home import TtpHome
        from .support.channels import server_context
        from .support.http_service import ServiceRunner
        s = self.services
        ca_tls = issue_tls_identity(self.ca, ("127.0.0.1", "localhost"), self.ca_dir / "tls", name="semper demo CA")
        s.runners.append(ServiceRunner(ca_app(self.ca), "127.0.0.1", 0, server_context(*ca_tls)).start())
        s.ca = s.runners[-1].url
        bank_home = BankHome(self.bank_dir)
        from .servers.bank_http import build_app as bank_app
        s.runners.append(ServiceRunner(bank_app(self.bank), "127.0.0.1", 0,
                                       server_context(bank_home.tls_dir / "cert.pem",
                                                      bank_home.tls_dir / "key.pem")).start())
        s.bank = s.runners[-1].url
        ttp_home = TtpHome(self.ttp_dir, self.dbs.get("ttp"))
        ttp_home.connect_bank(s.bank, self.bank_tls_root)       # payments in fair exchanges, at the bank
        opened = ttp_home.open(TOKEN_PIN)
        s.closers.append(opened.close)
        s.runners.append(ServiceRunner(opened.app(), "127.0.0.1", 0, server_context(*opened.tls)).start())
        s.ttp = s.runners[-1].url
        if not shop:
            return s
        home = self._shop_home(psam_reader, s.ttp, s.bank)
        opened = home.open(TOKEN_PIN, db=self.dbs.get("shop"))
        s.opened_shop = opened
        s.closers.append(opened.close)
        s.runners.append(ServiceRunner(opened.app(), "127.0.0.1", 0, server_context(*opened.tls)).start())
        s.shop = s.runners[-1].url
        return s

    def start_certifier(self) -> Any:
        """The service certifier in this process (its folder made on first use); returns the open
        certifier (``.certifier``), its URL in ``services.certifier``."""
        from .servers.ca_home import issue_tls_identity
        from .servers.certifier_home import CertifierHome
        from .support.channels import server_context
        from .support.http_service import ServiceRunner
        s = self.services
        home = CertifierHome(self.certifier_dir)
        if not home.config_file.exists():
            from semper.hsm.signer import Pkcs11Signer
            signer = Pkcs11Signer.open("certifier", softhsm_conf=str(self.store.conf))
            try:
                cert = signer.certificate()
            finally:
                signer.close()
            tls = issue_tls_identity(self.ca, ("127.0.0.1", "localhost"), self.folder / "certifier-tls",
                                     name=CERTIFIER_NAME)
            CertifierHome.create(self.certifier_dir, token_label="certifier", softhsm_conf=str(self.store.conf),
                                 certificate=cert, ca_root=self.ca_root, url="https://127.0.0.1:8447", tls=tls)
        opened = home.open(TOKEN_PIN)
        s.closers.append(opened.close)
        s.runners.append(ServiceRunner(opened.app(), "127.0.0.1", 0, server_context(*opened.tls)).start())
        s.certifier = s.runners[-1].url
        opened.certifier.url = s.certifier              # its revocation list is published where it listens
        return opened

    def start_mall(self) -> Any:
        """A second shop (no PSAM: online payments) and the mall over both shops, in this process, after
        :meth:`start_in_process`; returns the mall (its URL in ``services.mall``, the second shop's in
        ``services.shop2``). The mall's folder is written as ``semper mall init`` writes it
        (:meth:`MallHome.create`; each time: it names the shops' URLs of this run) and opened as ``semper
        serve mall`` opens it (:meth:`MallHome.open`)."""
        from semper.hsm.signer import Pkcs11Signer

        from .commerce.catalogue import Catalogue, CatalogueItem
        from .servers.ca_home import issue_tls_identity
        from .servers.mall_home import MallHome
        from .servers.shop_home import ShopHome
        from .support.channels import server_context
        from .support.http_service import ServiceRunner
        s = self.services
        conf = str(self.store.conf)
        kettles = Catalogue.of([CatalogueItem("kettle", "Kettle, stainless steel, 1.7 l", "physical", 2490),
                                CatalogueItem("tea-cups", "Tea cups, set of four", "physical", 1600)])
        tls2 = issue_tls_identity(self.ca, ("127.0.0.1", "localhost"), self.folder / "shop2-tls", name=SHOP2_NAME)
        home2 = ShopHome.create(self.folder / "shop2", name=SHOP2_NAME, token_label="shop2", softhsm_conf=conf,
                                account=self.accounts["shop2"], bank_url=s.bank, bank_tls_root=self.bank_tls_root,
                                ca_root=self.ca_root, purse_root=self.scheme.root_cert, catalogue=kettles, tls=tls2,
                                modules=("cheque", "setpay"))
        opened2 = home2.open(TOKEN_PIN, with_exchange=False)
        s.closers.append(opened2.close)
        s.runners.append(ServiceRunner(opened2.app(), "127.0.0.1", 0, server_context(*opened2.tls)).start())
        s.shop2 = s.runners[-1].url
        signer = Pkcs11Signer.open("mall", softhsm_conf=conf)
        try:
            certificate = x509.load_der_x509_certificate(signer.certificate())
        finally:
            signer.close()
        mall_dir = self.folder / "mall"                  # orders.der is there since the world was made
        tls = issue_tls_identity(self.ca, ("127.0.0.1", "localhost"), self.folder / "mall-tls", name=MALL_NAME)
        home = MallHome.create(mall_dir, name=MALL_NAME, token_label="mall", softhsm_conf=conf,
                               account=self.accounts["mall"], bank_url=s.bank, bank_tls_root=self.bank_tls_root,
                               ca_root=self.ca_root, certificate=certificate,
                               purchasing=(mall_dir / "orders.der").read_bytes(), tls=tls,
                               shops=[("teapots", s.shop), ("kettles", s.shop2)], currency=EUR)
        opened = home.open(TOKEN_PIN)
        s.closers.append(opened.close)
        s.runners.append(ServiceRunner(opened.app(), "127.0.0.1", 0, server_context(*opened.tls)).start())
        s.mall = s.runners[-1].url
        return opened.mall

    def start_shop_process(self, *, psam_reader: str, catalogue: Any = None,
                           launcher: tuple[str, ...] = ("-m", "semper.client.cli", "serve", "shop"),
                           extra: tuple[str, ...] = (), timeout: float = 60.0, more_psams: tuple[str, ...] = ()
                           ) -> subprocess.Popen[str]:
        """The real ``semper serve shop`` process (its PSAM in ``psam_reader``, more in the readers
        ``more_psams``: see :meth:`add_psam`), beside services already started; returns the process (its URL
        is in ``services.shop``). ``launcher``: what runs it (a bench passes its profiling wrapper); ``extra``:
        more options (``--workers N``)."""
        s = self.services
        env = self.child_env()
        self._shop_home(psam_reader, s.ttp, s.bank, catalogue, more_psams)
        proc = _spawn([sys.executable, *launcher, "--dir", str(self.shop_dir), "--port", "0",
                       "--pin-file", str(self.pin_file), *self.db_args("shop"), *extra], env)
        s.processes.append(proc)
        s.shop = _announced(proc, "shop", timeout)
        return proc

    def start_processes(self, *, psam_reader: str | None, timeout: float = 60.0) -> Services:
        """The real ``semper serve ca|bank|ttp|shop`` processes, one after the other.

        Not in parallel: their tokens share one SoftHSM2 folder, and a process that lists the tokens
        while another one logs in can get CKR_GENERAL_ERROR (seen here once in a few runs).
        """
        s = self.services
        env = self.child_env()
        base = [sys.executable, "-m", "semper.client.cli", "serve"]
        pin = ["--pin-file", str(self.pin_file)]
        commands = {"ca": base + ["ca", "--ca-dir", str(self.ca_dir), "--port", "0"] + pin + self.db_args("ca"),
                    "bank": base + ["bank", "--bank-dir", str(self.bank_dir), "--port", "0"] + pin
                    + self.db_args("bank"),
                    "ttp": base + ["ttp", "--dir", str(self.ttp_dir), "--port", "0"] + pin + self.db_args("ttp")}
        for name, cmd in commands.items():
            if name == "ttp":
                from .servers.ttp_home import TtpHome
                TtpHome(self.ttp_dir).connect_bank(s.bank, self.bank_tls_root)
            proc = _spawn(cmd, env)
            s.processes.append(proc)
            setattr(s, name, _announced(proc, name, timeout))
        self._shop_home(psam_reader, s.ttp, s.bank)
        shop = _spawn(base + ["shop", "--dir", str(self.shop_dir), "--port", "0"] + pin + self.db_args("shop"), env)
        s.processes.append(shop)
        s.shop = _announced(shop, "shop", timeout)
        return s

    def stop(self) -> None:
        s = self.services
        for proc in reversed(s.processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(s.processes):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        s.processes.clear()
        for r in reversed(s.runners):
            r.stop()
        s.runners.clear()
        close_all(s.closers)
        s.closers.clear()

    # ---- the operator's and the buyer's conveniences ---------------------------------------------------
    def balances(self, purse: Any = None) -> dict[str, int]:
        out = {"buyer account": self.bank.balance(self.accounts["buyer"]),
               "seller account": self.bank.balance(self.accounts["seller"])}
        for extra in ("mall", "shop2"):
            if extra in self.accounts:
                out[f"{extra} account"] = self.bank.balance(self.accounts[extra])
        if purse is not None:
            purse.select()
            out["buyer purse"] = purse.info().balance
        return out

    def registration_key(self) -> str:
        """The operator registers the buyer at the CA (out of band); the key goes to the buyer."""
        _reg_id, key = self.ca.add_person(BUYER_NAME, email=BUYER_EMAIL)
        return str(key)

    def buyer_tls(self) -> tuple[Path, Path]:
        from .servers.ca_home import issue_tls_identity
        return issue_tls_identity(self.ca, ("127.0.0.1", "localhost"), self.buyer_dir / "tls", name="buyer client")

    def ttp_files(self) -> tuple[x509.Certificate, bytes]:
        from .servers.ttp_home import TtpHome
        t = TtpHome(self.ttp_dir)
        return t.certificate(), t.escrow_file.read_bytes()

    def wallet_keys(self) -> Any:
        from semper.hsm.module import load
        from semper.hsm.rsa import RsaTokenKeys
        return RsaTokenKeys(load(softhsm_conf=str(self.store.conf)), "wallet", TOKEN_PIN)


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def _announced(proc: subprocess.Popen[str], name: str, timeout: float) -> str:
    """The URL a ``semper serve`` process prints when it listens (bounded wait)."""
    assert proc.stdout is not None
    box: dict[str, str] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "listening on" in line:
                box["url"] = line.strip().rsplit(" ", 1)[-1]
                return
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    if "url" not in box:
        proc.kill()
        err = proc.stderr.read() if proc.stderr is not None else ""
        raise RuntimeError(f"semper serve {name} did not start within {timeout:.0f} s: {err.strip()[-800:]}")
    threading.Thread(target=_drain, args=(proc,), daemon=True).start()
    return box["url"]


def _drain(proc: subprocess.Popen[str]) -> None:
    """Keep reading a service's output so that it never blocks on a full pipe."""
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            threading.Thread(target=lambda s=stream: [None for _ in s], daemon=True).start()


__all__ = ["CARD_PIN", "EUR", "Services", "TOKEN_PIN", "World"]
