"""Helpers for the payment and bank tests (no tests here): a bank over HTTPS with its keys in a
SoftHSM2 token, parties with token or card keys, and purse cards personalised for that bank.

SoftHSM2 tokens are provisioned once per session, all in one folder, before any is opened:
provisioning re-initialises the PKCS#11 module, which would end the bank's login.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from postgres import Storage

from semper.client.payment.bank_client import BankClient
from semper.client.servers.bank import Bank
from semper.client.servers.bank_home import BankHome
from semper.client.servers.bank_http import build_app
from semper.client.support.channels import server_context
from semper.client.support.http_service import ServiceRunner
from semper.client.support.personalisation import CardProfile, personalise_psam, personalise_purse_card
from semper.client.support.scheme import Scheme

BANK_PIN = b"bank-pin-2468"
PARTY_PIN = b"party-pin-1357"
SO_PIN = b"so-pin-87654321"
CARD_PIN = b"1234"
EUR = 978
PARTY_TOKENS = ("seller", "buyer", "buyer2", "seller2")
DENOMS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def card_pin(purpose: str, session: Any) -> None:
    """A PIN entry for tests: the test's PIN straight to the card session (the TINGUIN does this for users)."""
    session.verify_pin(CARD_PIN)


@dataclass
class World:
    folder: Path
    scheme: Scheme
    hsm: Any                      # SoftHsmStore
    home: BankHome
    bank: Bank
    runner: ServiceRunner
    signers: dict[str, Any] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.runner.url

    def client(self, signer: Any = None, **kw: Any) -> BankClient:
        return BankClient(self.url, self.home.tls_root, signer, **kw)

    def party(self, name: str) -> tuple[Any, str]:
        return self.signers[name], self.accounts[name]

    def cards(self, folder: Path) -> tuple[Path, Path]:
        """A new buyer card (linked to the buyer's account) and a new seller PSAM (linked to the seller's).

        New ones, not copies of one card: the bank remembers every card's counters, load request
        sequence numbers and cleared proofs, and a copy of a card it has seen is a clone that replays
        old counters, which the issuer and the acquirer rightly refuse."""
        folder.mkdir(parents=True, exist_ok=True)
        from semper.hardware.psam import PsamSession
        from semper.hardware.purse import PurseSession
        from semper.hardware.simulator import open_card
        b, p = folder / "buyer.card", folder / "psam.card"
        personalise_purse_card(b, self.scheme, CardProfile(CARD_PIN, b"12345678", max_balance=200_000), sync=False,
                               issuer_point=self.bank.keys.signer.public_point())
        personalise_psam(p, self.scheme, sync=False)
        with open_card(b, sync=False) as c:
            self.bank.link_card(PurseSession(c).certificate(), self.accounts["buyer"])
        with open_card(p, sync=False) as c:
            self.bank.link_psam(PsamSession(c).certificate(), self.accounts["seller"])
        return b, p

    def ledger(self) -> list[tuple[Any, ...]]:
        """Everything that moved money, to compare before and after a refused request."""
        with self.bank.db.transaction() as tx:
            return tx.all("SELECT id, balance FROM accounts ORDER BY id") + tx.all(
                "SELECT COUNT(*) FROM entries") + tx.all("SELECT COUNT(*) FROM postings")


def make_world(folder: Path, scheme: Scheme, *, denominations: tuple[int, ...] = DENOMS, hsm: Any = None,
               db_url: str | None = None) -> World:
    """``hsm``: a SoftHsmStore to provision the tokens in (one PKCS#11 module serves one token folder at a
    time, so a test that needs this world beside another puts both worlds' tokens in one store).
    ``db_url``: the bank's storage URL (default: SQLite in the bank's folder)."""
    from semper.hsm.signer import Pkcs11Signer
    from semper.hsm.softhsm import SoftHsmStore, provision
    hsm = hsm or SoftHsmStore.in_folder(folder / "softhsm")
    provision(hsm, "bank", BANK_PIN, SO_PIN)
    for label in PARTY_TOKENS:
        provision(hsm, label, PARTY_PIN, SO_PIN)
    home = BankHome(folder / "bank", db_url)
    home.init(scheme, BANK_PIN, token_label="bank", softhsm_conf=hsm.conf, denominations=denominations,
              bank_id="BANK-TEST")
    bank = home.open(BANK_PIN)
    chain, key = home.tls_dir / "cert.pem", home.tls_dir / "key.pem"
    runner = ServiceRunner(build_app(bank), "127.0.0.1", 0, server_context(chain, key)).start()
    world = World(folder, scheme, hsm, home, bank, runner)
    for label in PARTY_TOKENS:
        s = Pkcs11Signer.open(label, softhsm_conf=hsm.conf)
        s.verify_pin(PARTY_PIN)
        cert = scheme.certify(s.public_point(), f"semper {label}", label.upper(), None)
        s.store_certificate(cert.public_bytes(Encoding.DER))
        world.signers[label] = s
        world.accounts[label] = bank.open_account(label, EUR, cert)
    return world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, scheme: Scheme, storage: Storage) -> Iterator[World]:
    """The session's bank, on SQLite; once more on PostgreSQL for modules under ``postgres.storages()``."""
    w = make_world(tmp_path_factory.mktemp(f"bankworld-{storage.backend}"), scheme,
                   db_url=storage.url("bank") if storage.is_postgres else None)
    yield w
    w.runner.stop()
    w.home.close()


def test_the_payees_check_of_a_first_steps_module_is_the_whole_offers() -> None:
    """``PaymentManager._accepts`` asks the named module alone when it takes the payment; its answer is, for
    every module and currency, the one ``check_choice`` gives on the whole offer (refused the same way:
    no such module, one that accepts nothing now, another currency, an acceptance under another name)."""
    from semper.client.payment.errors import NegotiationError
    from semper.client.payment.manager import PaymentManager
    from semper.client.payment.model import Acceptance, Terms
    from semper.client.payment.module import PartyContext
    from semper.client.payment.negotiation import check_choice

    def module(acceptance: Acceptance | None) -> type:
        class M:
            def __init__(self, ctx: Any) -> None:
                pass

            def acceptance(self) -> Acceptance | None:
                return acceptance
        return M
    pm = PaymentManager(PartyContext(), modules={
        "euro": module(Acceptance("euro", (978,))), "both": module(Acceptance("both", (978, 840))),
        "none": module(None), "alias": module(Acceptance("euro", (840,))),     # "euro" in dollars, through another
        "dollar": module(Acceptance("dollar", (840,)))})
    for currency in (978, 840, 826):
        terms = Terms("p" * 32, 100, currency, "A1", "ab" * 32)
        for name in ("euro", "both", "none", "alias", "dollar", "missing"):
            try:
                check_choice(terms, pm.offer(), name)
                whole: str | None = None
            except NegotiationError as e:
                whole = str(e)
            try:
                pm._accepts(terms, name)
                alone: str | None = None
            except NegotiationError as e:
                alone = str(e)
            assert alone == whole, (currency, name)


def test_b64_is_base64s_own_text() -> None:
    """wire.b64 (binascii without base64's wrapper) writes what base64.b64encode wrote, for any bytes-like."""
    import base64
    import os

    from semper.client.payment.wire import b64
    for n in range(70):
        data = os.urandom(n)
        for value in (data, bytearray(data), memoryview(data)):
            assert b64(value) == base64.b64encode(value).decode()
    with pytest.raises(TypeError):
        b64("text")                                     # type: ignore[arg-type]
