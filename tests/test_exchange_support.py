"""Helpers for the transfer, exchange, third-party and judge tests (no tests here).

Real parts only: SoftHSM2 tokens for the seller, the buyer and the third party (provisioned once
per session, before any key is logged in, because provisioning re-initialises the PKCS#11 module),
a semper CA on its own token that certifies them, the simulated buyer card and seller PSAM in
process (personalised once by ``conftest.py``), and every party on HTTPS on loopback.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from postgres import Storage

from semper.chaos.party_faults import Faults
from semper.client.exchange.identity import Identity, TtpInfo
from semper.client.exchange.party import Party, ResponsePlan
from semper.client.payment.item import ItemPayee, ItemPayer, ItemPayments, item_verifiers
from semper.client.payment.manager import PaymentManager as Payments
from semper.client.payment.module import PartyContext
from semper.client.servers.ca import CertificationAuthority
from semper.client.servers.ca_home import issue_tls_identity
from semper.client.servers.ttp import ThirdParty
from semper.client.servers.ttp_home import TtpHome
from semper.client.support import pki
from semper.client.support.channels import JsonClient, server_context
from semper.client.support.db import Database
from semper.client.support.http_service import ServiceRunner
from semper.client.support.scheme import Scheme
from semper.client.support.trust import TrustStore
from semper.client.transfer.information import InformationManager, InformationOffer, describe
from semper.client.transfer.items import Description, PackageDescription
from semper.client.transfer.managers import Managers, PackageOffer
from semper.client.transfer.payment import PaymentOffer
from semper.client.transfer.statements import (
    CredentialManager,
    CredentialOffer,
    StatementManager,
    StatementOffer,
)
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card

PIN = b"party-pin-2468"
SO_PIN = b"so-pin-13579135"
LABELS = ("x-ca", "x-seller", "x-buyer", "x-ttp", "x-ttp-proc", "x-mallory")
EUR = 978
PRICE = 500
REPO = Path(__file__).resolve().parents[1]


@dataclass
class World:
    """Everything that lives for the whole session: tokens, CA, identities, the third party's keys."""

    folder: Path
    store: Any                                   # hsm.softhsm.SoftHsmStore
    ca: CertificationAuthority
    root_pem: str
    trust: TrustStore
    scheme: Scheme
    identities: dict[str, Identity]
    ttp_home: TtpHome
    ttp_proc_home: TtpHome
    opened: Any                                   # client.servers.ttp_home.OpenTtp (in-process T's keys)
    tls: tuple[Path, Path]

    @property
    def purse_root(self) -> x509.Certificate:
        return self.scheme.root_cert

    def ttp_info(self, url: str, home: TtpHome | None = None) -> TtpInfo:
        home = home or self.ttp_home
        return TtpInfo.load(url, home.certificate(), home.escrow_file.read_bytes(), self.trust)

    def escrow_ids(self, home: TtpHome | None = None) -> dict[str, str]:
        from semper.client.transfer.binding import cert_id
        info = self.ttp_info("https://127.0.0.1:1", home)
        assert info.escrow is not None
        return {cert_id(info.certificate): info.escrow.key_id}


def make_world(folder: Path, scheme: Scheme, store: Any = None, db_url: str | None = None) -> World:
    """``store``: a SoftHsmStore whose tokens ``LABELS`` were provisioned already (with ``PIN``), e.g. beside
    another world's in one folder; None makes and provisions one here. ``db_url``: the CA's storage
    (default: SQLite in ``folder``)."""
    from semper.hsm.signer import Pkcs11Signer
    from semper.hsm.softhsm import SoftHsmStore, provision
    if store is None:
        store = SoftHsmStore.in_folder(folder / "softhsm")
        for label in LABELS:
            provision(store, label, PIN, SO_PIN)
    conf = str(store.conf)
    ca_signer = Pkcs11Signer.open("x-ca", softhsm_conf=conf)
    ca_signer.verify_pin(PIN)
    ca = CertificationAuthority(Database(db_url or f"sqlite:///{folder / 'ca.db'}"), ca_signer)
    ca.initialise("semper exchange test CA", token_label="x-ca", softhsm_conf=conf)
    root_pem = pki.pem(ca.certificate())
    trust = TrustStore([ca.certificate()])
    identities = {}
    for label, role, name in (("x-seller", "seller", "Seller Shop"), ("x-buyer", "person", "Bob Buyer"),
                              ("x-mallory", "person", "Mallory")):
        signer = Pkcs11Signer.open(label, softhsm_conf=conf)
        signer.verify_pin(PIN)
        issued = ca.issue_direct(pki.Subject(name, role, f"{label}@example.org"), signer.public_point())
        signer.store_certificate(issued.certificate)
        identities[label.removeprefix("x-")] = Identity(signer)
    ttp_home = TtpHome.create(folder / "ttp", ca=ca, token_label="x-ttp", pin=PIN, softhsm_conf=conf,
                              purse_root=scheme.root_cert)
    ttp_proc_home = TtpHome.create(folder / "ttp-proc", ca=ca, token_label="x-ttp-proc", pin=PIN, softhsm_conf=conf,
                                   purse_root=scheme.root_cert, name="semper third party (process)")
    tls = issue_tls_identity(ca, ("127.0.0.1", "localhost"), folder / "tls", name="semper test party")
    opened = ttp_home.open(PIN)
    return World(folder, store, ca, root_pem, trust, scheme, identities, ttp_home, ttp_proc_home, opened, tls)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, scheme: Scheme, storage: Storage) -> Iterator[World]:
    """The session's exchange world, its CA on SQLite; once more on PostgreSQL for modules under
    ``postgres.storages()`` (their third parties take their databases from ``storage`` too)."""
    w = make_world(tmp_path_factory.mktemp(f"xworld-{storage.backend}"), scheme,
                   db_url=storage.url("xca") if storage.is_postgres else None)
    yield w
    w.opened.close()
    w.ca.db.close()


# ---- the third party ---------------------------------------------------------------------------------
@dataclass
class RunningTtp:
    ttp: ThirdParty
    runner: ServiceRunner | None
    url: str
    proc: subprocess.Popen[str] | None = None

    def stats(self) -> dict[str, Any]:
        return self.ttp.stats() if self.runner is not None else {}

    def requests(self) -> int:
        return int(self.stats()["total_requests"])

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        self.ttp.db.close()


def db_url(db: Path | str) -> str:
    """A storage URL: a path is a SQLite file, a string a URL already (``Storage.url``)."""
    return db if isinstance(db, str) else f"sqlite:///{db}"


def start_ttp(world: World, db: Path | str) -> RunningTtp:
    """A third party in this process (its own thread and loop) with a fresh database (a SQLite path or a URL)."""
    o = world.opened
    ttp = ThirdParty(Database(db_url(db)), o.ttp.signer, o.ttp.certificate, o.ttp.trust,
                     o.ttp.managers, o.ttp.escrow)
    from semper.client.servers.ttp_http import build_app
    runner = ServiceRunner(build_app(ttp, escrow_statement=o.escrow_statement, tsa=o.tsa), "127.0.0.1", 0,
                           server_context(*o.tls)).start()
    return RunningTtp(ttp, runner, runner.url)


def ttp_process(world: World, db: Path | str, crash_at: str | None = None, timeout: float = 30.0, port: int = 0,
                extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """``semper serve ttp`` as a real process (for kill-and-restart tests); returns (process, url). With
    ``crash_at`` (before-commit | after-commit) it is ``python -m semper.chaos.crashing_ttp`` instead: the
    same service, which ends itself (status 70) at that point of its first final decision."""
    pin_file = world.folder / "ttp-proc.pin"
    pin_file.write_bytes(PIN)
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF",)}
    env["SEMPER_HOME"] = str(world.folder / "home")
    env.update(extra_env or {})
    program = ["-m", "semper.chaos.crashing_ttp", "--crash-at", crash_at] if crash_at else \
        ["-m", "semper.client.cli", "serve", "ttp"]
    proc = subprocess.Popen([sys.executable, *program, "--dir", str(world.ttp_proc_home.folder),
                             "--db", db_url(db), "--pin-file", str(pin_file), "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "listening on" in line:
            return proc, line.strip().rsplit(" ", 1)[-1]
    proc.kill()
    raise AssertionError(f"semper serve ttp did not start: {proc.stderr.read() if proc.stderr else ''}")


def ttp_stats(world: World, url: str) -> dict[str, Any]:
    return JsonClient(url, world.root_pem, name="the third party", timeout=10).get("/stats")


# ---- parties ------------------------------------------------------------------------------------------
@dataclass
class Cards:
    purse: PurseSession
    psam: PsamSession
    closers: list[Callable[[], None]] = field(default_factory=list)

    def balance(self) -> int:
        return self.purse.info().balance

    def psam_total(self) -> int:
        return self.psam.info().lifetime_total


def cards(world: World, folder: Path, fresh_images: Callable[[Path], tuple[Path, Path]], load: int = 5000) -> Cards:
    from semper.client.payment.card_purse import load as load_purse
    buyer, psam = fresh_images(folder)
    b, p = open_card(buyer, sync=False), open_card(psam, sync=False)
    c = Cards(PurseSession(b), PsamSession(p), [b.close, p.close])
    load_purse(c.purse, world.scheme, load, b"1234")
    return c


def _escrows(world: World) -> dict[str, str]:
    return {**world.escrow_ids(), **world.escrow_ids(world.ttp_proc_home)}


def purse_payer(world: World, c: Cards) -> ItemPayer:
    """The buyer's card payments as production makes them: its payment manager's card-purse module, as an item."""
    payments = Payments(PartyContext(purse=c.purse, currency=EUR), only=["card-purse"])
    return ItemPayer(payments, "card-purse", item_verifiers(purse_root=world.purse_root)["card-purse"])


def purse_payee(world: World, c: Cards) -> ItemPayee:
    """The seller's side: a payment manager of its own each time (a restarted seller keeps nothing in memory)."""
    payments = Payments(PartyContext(psam=c.psam, currency=EUR, purse_root=world.purse_root), only=["card-purse"])
    return ItemPayee(payments, "card-purse", item_verifiers(purse_root=world.purse_root)["card-purse"],
                     account="seller", payee_name="seller")


def seller_managers(world: World, c: Cards | None) -> Managers:
    payees = {"card-purse": purse_payee(world, c)} if c is not None else {}
    return Managers(StatementManager(world.trust), CredentialManager(world.trust), InformationManager(_escrows(world)),
                    ItemPayments(item_verifiers(purse_root=world.purse_root), payees))


def buyer_managers(world: World) -> Managers:
    return Managers(StatementManager(world.trust), CredentialManager(world.trust), InformationManager(_escrows(world)),
                    ItemPayments(item_verifiers(purse_root=world.purse_root)))


def make_party(world: World, name: str, folder: Path, managers: Managers, ttp_url: str, *,
               step_timeout: float = 5.0, identity: str | None = None, ttp_home: TtpHome | None = None) -> Party:
    """A party whose outbox is a :class:`Faults` (honest until a test sets one: ``party.outbox.stop_before``)."""
    return Party(name, world.identities[identity or name], world.trust, managers, folder / f"{name}.archive",
                 tls=world.tls, root_pem=world.root_pem, ttp=world.ttp_info(ttp_url, ttp_home),
                 step_timeout=step_timeout, outbox=Faults())


REPORT = b"consultancy report: " + bytes(range(256)) * 8


@dataclass
class Deal:
    """One scenario: what the originator offers and wants, what the responder's plan is."""

    protocol: str
    offer: Any
    want: Any
    plan: ResponsePlan
    fair: bool = True


def purchase(world: World, c: Cards, *, seed: bytes = b"s" * 32, price: int = PRICE) -> Deal:
    """gen-ver: the seller's package (report + signed receipt) for the buyer's card payment."""
    seller = world.identities["seller"]
    receipt = {"type": "receipt", "goods": "consultancy report", "amount": price, "currency": EUR}
    offer = PackageOffer((InformationOffer(REPORT, "report.bin", seed=seed), StatementOffer(seller.sign, receipt)),
                         "report with receipt")
    want = Description("payment", {"module": "card-purse", "amount": price, "currency": EUR})
    expect = PackageDescription((describe(REPORT, "report.bin"),
                                 Description("statement", {"statement_type": "receipt",
                                                           "fields": {"amount": price, "currency": EUR}})))
    return Deal("gen-ver", offer, want, ResponsePlan(expect, PaymentOffer(purse_payer(world, c), price, EUR)))


def swap(world: World) -> Deal:
    """rev-rev: a revocable voucher (credential) for a revocable contract signature (statement)."""
    seller, buyer = world.identities["seller"], world.identities["buyer"]
    offer = CredentialOffer(seller.sign, {"voucher": "V-100", "value": 2500}, revocable=True)
    want = Description("statement", {"statement_type": "contract-signature", "fields": {"contract": "C-7"},
                                     "revocable": True})
    expect = Description("credential", {"attributes": {"voucher": "V-100", "value": 2500}, "revocable": True})
    mine = StatementOffer(buyer.sign, {"type": "contract-signature", "contract": "C-7"}, revocable=True)
    return Deal("rev-rev", offer, want, ResponsePlan(expect, mine))


def plain_sale(world: World, c: Cards) -> Deal:
    """plain: the report for a card payment, no fairness asked for."""
    offer = InformationOffer(REPORT, "report.bin")
    want = Description("payment", {"module": "card-purse", "amount": PRICE, "currency": EUR})
    return Deal("plain", offer, want, ResponsePlan(describe(REPORT, "report.bin"),
                                                   PaymentOffer(purse_payer(world, c), PRICE, EUR)), fair=False)


def run(coro: Any, timeout: float = 60.0) -> Any:
    """Run one test's coroutine with a bound on the whole."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
