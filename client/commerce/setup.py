"""Building the buyer's client from its configuration: card, payment modules, TINGUIN, exchange party.

Why here and not in the CLI: ``semper buy``, the demo, the benchmark and the tests all need the same
assembly, and getting it wrong (a PIN path around the TINGUIN, a module without its card) would be a
security bug, not a cosmetic one. Every card signature goes through a :class:`~.pin.GatedSigner`,
every module PIN through :func:`~.pin.tinguin_pin`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from ..support.closing import close_all
from ..support.trust import TrustStore
from ..tinguin.api import TrustedUI
from .archive import SharedArchive
from .buyer import Buyer
from .pin import GatedSigner, tinguin_pin
from .shop_client import ShopClient


@dataclass
class BuyerConfig:
    shop_url: str
    ca_root_pem: str
    archive: Path
    purse_root: x509.Certificate | None = None
    bank_url: str | None = None
    bank_tls_root: Path | None = None
    account: str | None = None
    ttp_url: str | None = None
    ttp_cert: x509.Certificate | None = None
    escrow: bytes | None = None
    tls: tuple[Path, Path] | None = None          # the buyer's mailbox key and chain (fair exchanges)
    wallet: Any = None                             # client.payment.wallet.Wallet (e-cash)
    wallet_path: Path | None = None                # or: a wallet file sealed to the card (opened with its PIN)
    currency: int = 978
    patience: float = 15.0
    modules: tuple[str, ...] | None = None
    certifiers: Path | None = None                 # the service certifiers trusted (PEM), for downloaded services
    prefs_path: Path | None = None                 # where the decisions on services are kept (default: prefs file)


@dataclass
class BuyerSession:
    buyer: Buyer = field(init=False)          # set once the parts it needs are open (open_buyer)
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def close(self) -> None:
        close_all(self.closers)
        self.closers.clear()


def open_buyer(cfg: BuyerConfig, ui: TrustedUI, card: Any = None) -> BuyerSession:
    """The buyer's client over ``card`` (a connection to the buyer's card: purse and PIV), or card-less."""
    from semper.hardware.piv import PivSession, PivSigner
    from semper.hardware.purse import PurseSession

    from ..exchange.identity import Identity, TtpInfo
    from ..exchange.party import Party
    from ..payment.bank_client import BankClient
    from ..payment.item import item_verifiers
    from ..payment.manager import PaymentManager
    from ..payment.module import PartyContext
    from ..payment.modules.ecash import EcashModule
    from ..transfer.binding import cert_id
    from ..transfer.information import InformationManager
    from ..transfer.managers import Managers
    from ..transfer.payment import PaymentManager as TransferPayments
    from ..transfer.statements import CredentialManager, StatementManager
    from .exchange_client import ExchangeClient
    session = BuyerSession()
    trust = TrustStore([x509.load_pem_x509_certificate(cfg.ca_root_pem.encode())])
    lock = threading.RLock()
    signer = purse = None
    if card is not None:
        purse = PurseSession(card)
        piv = PivSession(card, select=False)
        signer = GatedSigner(PivSigner(piv, label="your card"), ui, select=piv.select, lock=lock)
    archive = SharedArchive(cfg.archive, sign=Identity(signer).sign if signer is not None else None)
    session.closers.append(archive.close)
    bank = BankClient(cfg.bank_url, cfg.bank_tls_root, signer, enter_pin=tinguin_pin(ui)) \
        if cfg.bank_url and cfg.bank_tls_root else None
    ctx = PartyContext(bank=bank, signer=signer, enter_pin=tinguin_pin(ui), purse=purse, account=cfg.account,
                       wallet=cfg.wallet, currency=cfg.currency, select_signer=piv.select if card is not None else None)
    payments = PaymentManager(ctx, only=cfg.modules)
    if cfg.wallet is None and cfg.wallet_path is not None and card is not None and "ecash" in payments.modules:
        with lock:                                  # the card's wallet: its PIN through the TINGUIN
            payments.module_as("ecash", EcashModule).use_card_wallet(cfg.wallet_path, piv)
    shop = ShopClient(cfg.shop_url, cfg.ca_root_pem)
    session.closers.append(shop.close)
    verifiers = item_verifiers(purse_root=cfg.purse_root)
    exchange = None
    if signer is not None and cfg.ttp_url and cfg.ttp_cert is not None and cfg.tls is not None:
        info = TtpInfo.load(cfg.ttp_url, cfg.ttp_cert, cfg.escrow, trust)
        escrows = {cert_id(info.certificate): info.escrow.key_id} if info.escrow else {}
        managers = Managers(StatementManager(trust), CredentialManager(trust), InformationManager(escrows),
                            TransferPayments(verifiers))
        tls, gated = cfg.tls, signer

        def make_party() -> Party:
            return Party("buyer", Identity(gated), trust, managers, cfg.archive, tls=tls, root_pem=cfg.ca_root_pem,
                         ttp=info, step_timeout=cfg.patience)
        exchange = ExchangeClient(make_party)
        session.closers.append(exchange.close)
    session.buyer = Buyer(ui, trust, shop, archive, payments, signer=signer, exchange=exchange, verifiers=verifiers,
                          purse=purse, patience=cfg.patience, card_lock=lock)
    return session


def register_card(session: BuyerSession, *, ca_url: str, ca_root_pem: str, registration_key: str, name: str,
                  email: str, save_dir: Path | None = None) -> str:
    """Have the CA certify the card's signature key (PIN through the TINGUIN); returns the serial."""
    from semper.hardware.piv import PivSigner, Slot

    from ..support.channels import JsonClient
    from ..support.registration import register
    b = session.buyer
    gated = b.signer
    if not isinstance(gated, GatedSigner) or not isinstance(gated.signer, PivSigner):
        raise ValueError("no card key to register (a PIV key behind the TINGUIN)")
    piv = gated.signer.session                 # the PIV session behind the gated signer

    def write(der: bytes) -> None:
        with gated.lock:
            piv.put_certificate(Slot.SIGNATURE, der)

    def read_back() -> bytes:
        with gated.lock:
            return piv.certificate(Slot.SIGNATURE)

    with gated.purpose_for(f"register your card's key at the CA as {name}"):
        done = register(gated, pin=None, client=JsonClient(ca_url, ca_root_pem, name="the CA"),
                        root_pem=ca_root_pem, registration_key=registration_key, name=name, email=email,
                        write=write, read_back=read_back, save_dir=save_dir)
    cert = x509.load_der_x509_certificate(done.certificate)
    if b.exchange is not None:                 # the exchange party signs as the newly certified key
        b.exchange.party.identity.certificate = cert
    b._identity = None
    return done.serial
