"""The mall's folder and how to open it: token, two certificates, bank, the shops it indexes, its service.

Layout of ``$SEMPER_HOME/mall`` (or ``--dir``), written by ``semper mall init``::

    mall.json          name, token label and SoftHSM2 configuration, account, bank URL, the shops
                       ([{key, url}]), the payment modules buyers pay the mall with, the module its
                       purchasing agent pays the shops with, currency
    ca.pem             the CA root (buyers' certificates; the shops' TLS and signatures)
    bank-tls-root.pem  the bank service's TLS root
    mall.pem           the certificate on the mall's token key (role seller: the mall to its buyers)
    orders.der         the same key's purchasing certificate (role person: the mall as the shops' customer)
    tls/               the mall's HTTPS key, CA-issued chain and its root (as the bank's: install_tls_identity)
    services/          the commerce services it offers (mall-basket.json; its certificate beside it)
    mall.db            its deals and payments, as every shop's, and the parts it settled (``mall_parts``)
    evidence.sqlite3, purchases-KEY.sqlite3   its evidence as a seller and, per shop, as a customer

Why the index is fetched when the mall opens, not kept: the shops' catalogues and prices are the
shops'; the mall lists what each shop sells now (``GET /catalogue`` over TLS pinned to the CA root),
and every price is signed again by the shop in the offer the mall's agent checks when it settles.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..commerce.catalogue import Catalogue, CatalogueItem
from ..commerce.errors import CommerceError
from ..support.channels import ChannelError, JsonClient
from ..support.closing import close_all
from ..support.folder_config import read_config
from ..support.paths import semper_home
from .bank_home import install_tls_identity

CONFIG = "mall.json"
SERVICE = "mall-basket"
#: what buyers may pay the mall with (online modules: the mall has no PSAM)
BUYER_MODULES = ("cheque", "setpay")


def basket_document(name: str, max_amount: int = 100_000, currency: int = 978,
                    modules: tuple[str, ...] = BUYER_MODULES) -> dict[str, Any]:
    """The mall's own commerce service: one order and one payment for several shops' goods, then each
    shop's part checked (``shop-parts``). The operator has it certified before buyers can run it."""
    steps = [("offer", "get and verify the mall's signed offer", ["offer"]),
             ("confirm", "confirm in the TINGUIN", ["confirmation-text"]),
             ("order", "sign and send the order", ["order"]),
             ("payment", "pay the mall once", ["payment"]),
             ("confirmation", "check the mall's signed confirmation", ["order-confirmation"]),
             ("delivery", "check the mall's signed delivery note", ["delivery"]),
             ("shop-parts", "check each shop's part", ["mall-part", "delivery"])]
    return {"format": "semper-service/1", "name": SERVICE, "version": 1, "title": f"{name} basket",
            "description": "One order and one payment for goods of several shops; the mall settles with each shop, "
                           "and each shop's signed delivery note comes with the mall's statement for its part.",
            "protocol": "mail-order", "payment": {"modules": list(modules), "max_amount": max_amount,
                                                  "currency": currency},
            "card_signature": True, "anonymity": False,
            "steps": [{"block": b, "title": t, "evidence": e} for b, t, e in steps]}


def shop_catalogue(url: str, root_pem: str, timeout: float = 15.0) -> tuple[str, Catalogue]:
    """A shop's name and the goods the mall can resell (physical items), from its ``GET /catalogue``."""
    try:
        with JsonClient(url, root_pem, timeout=timeout, name=f"the shop at {url}") as shop:
            view = shop.get("/catalogue")
        items = [CatalogueItem(str(i["sku"]), str(i["description"]), "physical", int(i["unit_price"]),
                               int(i.get("currency", 978)))
                 for i in view.get("items", []) if isinstance(i, dict) and i.get("kind") == "physical"]
        return str(view["seller"]), Catalogue.of(items)
    except ChannelError as e:
        raise CommerceError(f"the mall cannot read the catalogue of the shop at {url}: {e}") from None
    except (KeyError, TypeError, ValueError, CommerceError) as e:
        raise CommerceError(f"the shop at {url} sent a catalogue the mall cannot index ({e})") from None


@dataclass
class OpenMall:
    mall: Any                      # client.servers.mall.Mall
    tls: tuple[Path, Path]
    services_dir: Path
    closers: list[Any] = field(default_factory=list)

    def app(self) -> Any:
        from .mall import mount_mall
        from .service_host import mount_services
        from .shop_http import build_app
        app = build_app(self.mall)
        mount_mall(app, self.mall)
        mount_services(app, self.services_dir)
        return app

    def close(self) -> None:
        close_all(self.closers)


@dataclass(frozen=True)
class MallHome:
    folder: Path

    @classmethod
    def default(cls, folder: Path | None = None) -> MallHome:
        return cls(Path(folder) if folder else semper_home() / "mall")

    config_file = property(lambda self: self.folder / CONFIG)
    tls_dir = property(lambda self: self.folder / "tls")
    services_dir = property(lambda self: self.folder / "services")
    certificate_file = property(lambda self: self.folder / "mall.pem")

    def config(self) -> dict[str, Any]:
        return read_config(self.config_file, f"no mall in {self.folder}; set one up first (semper mall init)",
                           CommerceError)

    @classmethod
    def create(cls, folder: Path, *, name: str, token_label: str, softhsm_conf: str, account: str, bank_url: str,
               bank_tls_root: Path, ca_root: x509.Certificate, certificate: x509.Certificate, purchasing: bytes,
               tls: tuple[Path, Path], shops: list[tuple[str, str]], modules: tuple[str, ...] = BUYER_MODULES,
               agent_module: str = "cheque", currency: int = 978, max_amount: int = 100_000) -> MallHome:
        """Write the folder (the token key's certificates must have been issued already)."""
        home = cls(Path(folder))
        home.folder.mkdir(parents=True, exist_ok=True)
        (home.folder / "ca.pem").write_bytes(ca_root.public_bytes(Encoding.PEM))
        (home.folder / "bank-tls-root.pem").write_bytes(Path(bank_tls_root).read_bytes())
        home.certificate_file.write_bytes(certificate.public_bytes(Encoding.PEM))
        (home.folder / "orders.der").write_bytes(purchasing)
        home.tls_dir.mkdir(mode=0o700, exist_ok=True)
        install_tls_identity(home.tls_dir, *tls)            # checked: the chain ends in the root buyers pin
        home.services_dir.mkdir(exist_ok=True)
        basket = basket_document(name, max_amount, currency, modules)
        (home.services_dir / f"{SERVICE}.json").write_text(json.dumps(basket, indent=1))
        config = {"name": name, "token_label": token_label, "softhsm_conf": softhsm_conf, "account": account,
                  "bank_url": bank_url, "shops": [{"key": k, "url": u} for k, u in shops], "modules": list(modules),
                  "agent_module": agent_module, "currency": currency}
        home.config_file.write_text(json.dumps(config, indent=1, sort_keys=True))
        return home

    def open(self, pin: bytes, *, patience: float = 5.0) -> OpenMall:
        """Log in to the token, read every shop's catalogue (the index), and build the mall: its own
        payments (buyers pay it) and, per shop, a purchasing agent paying from the same account."""
        from semper.hsm.signer import Pkcs11Signer

        from ..commerce.archive import SharedArchive
        from ..commerce.buyer import Buyer
        from ..commerce.shop_client import ShopClient
        from ..exchange.identity import Identity
        from ..payment.bank_client import BankClient
        from ..payment.manager import PaymentManager
        from ..payment.module import PartyContext
        from ..payment.sessions import DatabaseSessions
        from ..payment.store import RecordStore
        from ..support.db import Database
        from ..support.trust import TrustStore
        from .mall import AgentSigner, AgentUI, Mall, MallShop, index_catalogue
        cfg = self.config()
        f = self.folder
        root_pem = (f / "ca.pem").read_text()
        shops: dict[str, MallShop] = {}
        catalogues: dict[str, Catalogue] = {}
        for entry in cfg["shops"]:
            shop_name, catalogue = shop_catalogue(entry["url"], root_pem)
            shops[entry["key"]] = MallShop(entry["key"], shop_name, entry["url"])
            catalogues[entry["key"]] = catalogue
        closers: list[Any] = []
        signer = Pkcs11Signer.open(cfg["token_label"], softhsm_conf=cfg.get("softhsm_conf"))
        closers.append(signer.close)
        try:
            signer.verify_pin(pin)
            trust = TrustStore.from_files(f / "ca.pem")
            currency = int(cfg.get("currency", 978))
            bank_root = f / "bank-tls-root.pem"
            identity = Identity(signer)
            database = Database(f"sqlite:///{f / 'mall.db'}")      # its deals and payments, as every shop's
            closers.append(database.close)
            payments = PaymentManager(PartyContext(bank=BankClient(cfg["bank_url"], bank_root, signer), signer=signer,
                                                   account=cfg["account"], currency=currency),
                                      only=list(cfg.get("modules") or BUYER_MODULES), store=RecordStore(db=database),
                                      sessions=DatabaseSessions(database))
            archive = SharedArchive(f / "evidence.sqlite3", sign=identity.sign)
            closers.append(archive.close)
            agent_signer = AgentSigner(signer, (f / "orders.der").read_bytes())
            module = str(cfg.get("agent_module", "cheque"))
            agents = {}
            for key, shop in shops.items():
                client = ShopClient(shop.url, root_pem)
                closers.append(client.close)
                ctx = PartyContext(bank=BankClient(cfg["bank_url"], bank_root, agent_signer), signer=agent_signer,
                                   enter_pin=lambda purpose, session: None, account=cfg["account"], currency=currency)
                bought = SharedArchive(f / f"purchases-{key}.sqlite3", sign=identity.sign)
                closers.append(bought.close)
                gated: Any = agent_signer          # GatedSigner's interface, without a TINGUIN (mall.AgentSigner)
                agents[key] = Buyer(AgentUI(module), trust, client, bought, PaymentManager(ctx, only=[module]),
                                    signer=gated, patience=patience)
            mall = Mall(shops=shops, agents=agents, name=cfg["name"], identity=identity, trust=trust, db=database,
                        catalogue=index_catalogue(shops, catalogues), payments=payments, account=cfg["account"],
                        archive=archive)
        except BaseException:
            close_all(closers)
            raise
        return OpenMall(mall, (self.tls_dir / "cert.pem", self.tls_dir / "key.pem"), self.services_dir, closers)
