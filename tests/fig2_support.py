"""Helpers for the tests of payments in fair exchanges and of the paper's Figure 2 (no tests here).

Two persons, Alice and Bob, each with a token (a CA certificate and a bank account), e-cash wallets,
and an exchange party on HTTPS; the CA, the bank and the third party of the demo world in this
process (the third party reaches the bank: ``semper ttp bank``). Every payment goes through the
parties' own payment managers, as production makes them (``ItemPayer``/``ItemPayee``).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from semper.chaos.party_faults import Faults
from semper.client.demo_world import TOKEN_PIN, World
from semper.client.exchange.identity import Identity, TtpInfo
from semper.client.exchange.outcome import Outcome
from semper.client.exchange.party import Party, ResponsePlan
from semper.client.payment.bank_client import BankClient
from semper.client.payment.item import ItemPayee, ItemPayer, ItemPayments, item_verifiers
from semper.client.payment.manager import PaymentManager
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.ecash import EcashModule
from semper.client.payment.wallet import TokenWalletKey, Wallet
from semper.client.servers.bank_audit import audit
from semper.client.support.trust import TrustStore
from semper.client.transfer.binding import cert_id
from semper.client.transfer.information import InformationManager
from semper.client.transfer.managers import Managers
from semper.client.transfer.statements import CredentialManager, StatementManager

EUR = 978
PEOPLE = ("alice", "bob")
MODULES = ("ecash", "cheque", "setpay")


def _pin(purpose: str, session: Any) -> None:
    """Tokens are logged in already; a PIN entry here would be the TINGUIN's."""


@dataclass
class Person:
    name: str
    signer: Any
    identity: Identity
    payments: PaymentManager
    wallet: Wallet
    account: str
    verifiers: dict[str, Any]
    tls: tuple[Path, Path]

    @property
    def certificate(self) -> x509.Certificate:
        return self.identity.certificate


@dataclass
class People:
    world: World
    folder: Path
    trust: TrustStore
    ttp_url: str
    persons: dict[str, Person] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Person:
        return self.persons[name]

    def money(self) -> dict[str, int]:
        """Each person's account and wallet, the holds (authorised, reserved) and e-cash outstanding."""
        out = {}
        for name, p in self.persons.items():
            out[name] = self.world.bank.balance(p.account)
            out[f"{name} wallet"] = p.wallet.balance(EUR)
        with self.world.bank.db.transaction(write=False) as tx:
            for kind in ("holds", "ecash"):
                out[kind] = int(tx.one("SELECT balance FROM accounts WHERE id = ?", (f"{kind}:{EUR}",))[0])
        return out

    def clean(self) -> None:
        report = audit(self.world.bank.db, self.world.bank.scheme_root)
        assert report.violations == [], report.violations

    def ttp_info(self) -> TtpInfo:
        cert, escrow = self.world.ttp_files()
        return TtpInfo.load(self.ttp_url, cert, escrow, self.trust)

    def escrows(self) -> dict[str, str]:
        info = self.ttp_info()
        assert info.escrow is not None
        return {cert_id(info.certificate): info.escrow.key_id}

    def managers(self, who: str, payees: tuple[str, ...] = MODULES) -> Managers:
        p = self[who]
        item_payees = {m: ItemPayee(p.payments, m, p.verifiers[m], account=p.account, payee_name=p.name)
                       for m in payees}
        return Managers(StatementManager(self.trust), CredentialManager(self.trust), InformationManager(self.escrows()),
                        ItemPayments(p.verifiers, item_payees))

    def payer(self, who: str, module: str, **kw: Any) -> ItemPayer:
        p = self[who]
        return ItemPayer(p.payments, module, p.verifiers[module], **kw)

    def party(self, who: str, folder: Path, *, step_timeout: float = 0.6, managers: Managers | None = None) -> Party:
        p = self[who]
        return Party(who, p.identity, self.trust, managers or self.managers(who), folder / f"{who}.archive",
                     tls=p.tls, root_pem=self.world.root_pem, ttp=self.ttp_info(), step_timeout=step_timeout,
                     outbox=Faults())


def make_people(folder: Path) -> People:
    from semper.client.servers.ca_home import issue_tls_identity
    from semper.hsm.module import load
    from semper.hsm.rsa import RsaTokenKeys
    from semper.hsm.signer import Pkcs11Signer
    world = World.create(folder, people=PEOPLE)
    services = world.start_in_process(shop=False)
    trust = TrustStore([world.ca_root])
    people = People(world, folder, trust, services.ttp)
    keys = RsaTokenKeys(load(softhsm_conf=str(world.store.conf)), "wallet", TOKEN_PIN)
    for name in PEOPLE:
        signer = Pkcs11Signer.open(name, softhsm_conf=str(world.store.conf))
        try:
            signer.verify_pin(TOKEN_PIN)
        except Exception:               # logged in already in this process (the world opened it)
            pass
        bank = BankClient(services.bank, world.bank_tls_root, signer)
        wallet = Wallet(folder / f"{name}-wallet.json", TokenWalletKey(keys), name)
        payments = PaymentManager(PartyContext(bank=bank, signer=signer, enter_pin=_pin, account=world.accounts[name],
                                               wallet=wallet, currency=EUR), only=list(MODULES))
        mint = EcashModule(PartyContext(bank=bank)).mint_keys()
        verifiers = item_verifiers(roots=[world.ca_root], mint_keys=mint, bank_certificate=bank.bank_certificate)
        tls = issue_tls_identity(world.ca, ("127.0.0.1", "localhost"), folder / f"{name}-tls", name=f"{name} mailbox")
        people.persons[name] = Person(name, signer, Identity(signer), payments, wallet, world.accounts[name],
                                      verifiers, tls)
    return people


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Iterator[People]:
    p = make_people(tmp_path_factory.mktemp("people"))
    yield p
    p.world.stop()


def run(coro: Any, timeout: float = 90.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass
class Exchange:
    """One exchange between two persons: the originator's offer and want, the responder's plan."""

    originator: str
    responder: str
    offer: Any
    want: Any
    plan: ResponsePlan
    fair: bool = True


@dataclass
class Ran:
    originator: Outcome
    responder: Outcome | None
    before: dict[str, int]
    after: dict[str, int]
    bundles: dict[str, Path] = field(default_factory=dict)      # role -> that party's exported evidence

    def delta(self, key: str) -> int:
        return self.after[key] - self.before[key]

    def honest(self, faulty_role: str) -> Outcome | None:
        return self.responder if faulty_role == "originator" else self.originator


def exchange(people: People, folder: Path, make: Callable[[], Exchange], *, faulty: str | None = None,
             stop_before: str | None = None, delays: dict[str, float] | None = None,
             tamper: dict[str, Any] | None = None, step_timeout: float = 0.6, settle: float = 0.0,
             configure: Callable[[Party, Party], None] | None = None) -> Ran:
    """Run one exchange with an optional fault in one party (``faulty``: its name)."""
    folder.mkdir(parents=True, exist_ok=True)
    ex = make()
    before = people.money()

    async def go() -> Ran:
        o = people.party(ex.originator, folder, step_timeout=step_timeout)
        r = people.party(ex.responder, folder, step_timeout=step_timeout)
        if configure is not None:
            configure(o, r)
        await o.start()
        await r.start()
        try:
            r.plans.append(ex.plan)
            if faulty is not None:
                bad = o if faulty == ex.originator else r
                bad.outbox.stop_before = stop_before
                bad.outbox.delays = dict(delays or {})
                bad.outbox.tamper = dict(tamper or {})
            out_o = await o.originate(r.url, ex.offer, ex.want, fair=ex.fair)
            out_r = await r.wait_outcome(out_o.session, 30) if r.knows(out_o.session) else None
            if settle:
                await asyncio.sleep(settle)
            ran = Ran(out_o, out_r, before, {})
            for role, party, out in (("originator", o, out_o), ("responder", r, out_r)):
                if out is not None and out.xid is not None and party.archive.entries(out.xid):
                    ran.bundles[role] = party.export(out.xid, folder / f"{role}.zip")
            return ran
        finally:
            await o.stop()
            await r.stop()
            o.close()
            r.close()
    ran: Ran = run(go())
    ran.after = people.money()
    return ran
