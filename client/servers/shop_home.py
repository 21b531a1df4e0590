"""The shop's folder and how to open it: token, certificates, catalogue, bank, PSAM, third party, archive.

Layout of ``$SEMPER_HOME/shop`` (or ``--dir``)::

    shop.json          name, token label and SoftHSM2 configuration, bank account, bank URL, PSAM
                       (reader name or card image; ``psams``: several), third party URL, payment modules,
                       exchange port
    catalogue.json     the catalogue (information goods in files beside it)
    ca.pem             the CA root the shop trusts (buyers' certificates, the third party)
    purse-root.pem     the card purse scheme root (debit proofs)
    bank-tls-root.pem  the bank service's TLS root
    ttp.pem, escrow.der  the third party's certificate and signed escrow-key statement
    tls/               the shop's HTTPS key and CA-issued chain (also its exchange mailbox's)
    evidence.sqlite3   the shop's evidence archive (deals and exchanges), shared by its worker processes,
                       and (by default, since 2026-12-07) its deals and payment sessions in the same file:
                       a step's deal and its evidence commit together, with one flush of the disk
    shop.db            the deals and payment sessions of a shop set up before 2026-12-07 (it keeps them
                       there), unless --db names another database, e.g. postgresql://... (docs/services.md,
                       section 8)
    run/               the PSAM devices' sockets while ``--workers`` runs (0700)
    admin-secret       bearer secret for POST /admin/clear (0600)

The seller's signing key stays in its PKCS#11 token; the PSAM is a card in the shop's second reader.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..commerce.catalogue import Catalogue
from ..commerce.errors import CommerceError
from ..support.closing import close_all
from ..support.folder_config import read_config
from ..support.paths import semper_home
from ..support.secret_files import write_secret

if TYPE_CHECKING:
    from .shop import Shop

CONFIG = "shop.json"


@dataclass
class OpenShop:
    """A shop ready to serve: the logic, its exchange party, and what to close."""

    shop: Any                      # client.servers.shop.Shop
    party: Any                     # () -> client.exchange.party.Party, or None (no fair exchanges)
    tls: tuple[Path, Path]
    admin_secret: str
    closers: list[Any] = field(default_factory=list)
    worker: int = 0                # this process among the shop's worker processes
    workers: int = 1
    services_dir: Path | None = None      # the commerce services it offers for download (service_host.py)

    def app(self) -> Any:
        """The HTTP app; a worker also finishes the exchanges that a dead process of its number left open,
        and worker 0 those of workers beyond the present number (the shop ran with more before)."""
        from .shop_http import build_app
        me, count = self.worker, self.workers

        def recovers(owner: str) -> bool:
            if owner == str(me):
                return True
            return me == 0 and (not owner.isdigit() or int(owner) >= count)
        app = build_app(self.shop, self.party, self.admin_secret, worker=str(me), recovers=recovers,
                        group_commits=count == 1)
        if self.services_dir is not None:
            from .service_host import mount_services
            mount_services(app, self.services_dir)
        return app

    def close(self) -> None:
        close_all(self.closers)


def _evidence_without_deals(path: Path) -> bool:
    """Whether the archive at ``path`` has entries but no deals table: a shop that ran with its deals elsewhere
    (``--db postgresql://...``), started without ``--db``, would otherwise begin an empty set of deals in its
    archive's file, silently (review of 2026-12-07)."""
    import sqlite3
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{path.absolute()}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error:
        return False
    try:
        names = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "shop_deals" in names or "archive_entry" not in names:
            return False
        return conn.execute("SELECT 1 FROM archive_entry LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        conn.close()


@dataclass
class ShopHome:
    folder: Path

    @classmethod
    def default(cls, folder: Path | None = None) -> ShopHome:
        return cls(Path(folder) if folder else semper_home() / "shop")

    config_file = property(lambda self: self.folder / CONFIG)
    tls_dir = property(lambda self: self.folder / "tls")
    run_dir = property(lambda self: self.folder / "run")

    def database_url(self, db: str | None = None) -> str:
        """The shop's storage URL: ``db`` when given; else SQLite in the evidence archive's file, or in
        ``shop.db`` where a shop set up before 2026-12-07 has its deals. Why one file: the archive's entries
        of a step are then written in the deal's own transaction (``commerce.archive.SharedArchive``,
        ``joined``): one commit and one flush of the disk per step, not two commits and two flushes, and the
        deal's row never committed without its evidence (docs/performance.md, "The deals and their evidence
        in one commit", says what it saves)."""
        if db:
            return db
        legacy = self.folder / "shop.db"
        if legacy.exists():
            return f"sqlite:///{legacy.absolute()}"
        path = self.folder / "evidence.sqlite3"
        if _evidence_without_deals(path):
            raise CommerceError(f"{path} holds this shop's evidence but none of its deals: they are in another "
                                "database. Give the one it runs on (--db postgresql://... as before), or move its "
                                "archive aside to start this shop afresh on SQLite")
        return f"sqlite:///{path.absolute()}"

    def psam_specs(self) -> list[dict[str, Any]]:
        """The shop's PSAMs as ``{"reader"}`` or ``{"image"}``: ``psams`` in shop.json, or its one
        ``psam_reader`` / ``psam_image``; empty when it has none."""
        cfg = self.config()
        if cfg.get("psams"):
            return [dict(x) for x in cfg["psams"]]
        if cfg.get("psam_reader") or cfg.get("psam_image"):
            return [{"reader": cfg.get("psam_reader")} if cfg.get("psam_reader") else {"image": cfg["psam_image"]}]
        return []

    def config(self) -> dict[str, Any]:
        return read_config(self.config_file, f"no shop in {self.folder}; set one up first (semper shop init)",
                           CommerceError)

    @classmethod
    def create(cls, folder: Path, *, name: str, token_label: str, softhsm_conf: str, account: str, bank_url: str,
               bank_tls_root: Path, ca_root: x509.Certificate, purse_root: x509.Certificate, catalogue: Catalogue,
               tls: tuple[Path, Path], psam_reader: str | None = None, psam_image: Path | None = None,
               ttp_url: str | None = None, ttp_cert: x509.Certificate | None = None, escrow: bytes | None = None,
               modules: tuple[str, ...] = ("card-purse", "setpay", "cheque", "ecash"), exchange_port: int = 0,
               currency: int = 978, more_psams: tuple[dict[str, Any], ...] = ()) -> ShopHome:
        """Write a shop folder (the seller's token and certificate must exist already). ``more_psams``:
        further PSAMs beside the first, each ``{"reader": name}`` or ``{"image": path}``."""
        home = cls(Path(folder))
        home.folder.mkdir(parents=True, exist_ok=True)
        (home.folder / "ca.pem").write_bytes(ca_root.public_bytes(Encoding.PEM))
        (home.folder / "purse-root.pem").write_bytes(purse_root.public_bytes(Encoding.PEM))
        (home.folder / "bank-tls-root.pem").write_bytes(Path(bank_tls_root).read_bytes())
        if ttp_cert is not None and escrow is not None:
            (home.folder / "ttp.pem").write_bytes(ttp_cert.public_bytes(Encoding.PEM))
            (home.folder / "escrow.der").write_bytes(escrow)
        home.tls_dir.mkdir(mode=0o700, exist_ok=True)
        for src, dst in zip(tls, ("cert.pem", "key.pem"), strict=True):
            write_secret(home.tls_dir / dst, Path(src).read_bytes())      # 0600 from the first byte
        catalogue.dump(home.folder / "catalogue.json")
        write_secret(home.folder / "admin-secret", secrets.token_urlsafe(24))
        config: dict[str, Any] = {
                  "name": name, "token_label": token_label, "softhsm_conf": softhsm_conf, "account": account,
                  "bank_url": bank_url, "psam_reader": psam_reader,
                  "psam_image": str(psam_image) if psam_image else None, "ttp_url": ttp_url,
                  "modules": list(modules), "exchange_port": exchange_port, "currency": currency}
        if more_psams:
            config["psams"] = [*home_psam(psam_reader, psam_image), *[dict(x) for x in more_psams]]
        home.config_file.write_text(json.dumps(config, indent=1, sort_keys=True))
        return home

    def open(self, pin: bytes, *, with_exchange: bool = True, shop_class: type[Shop] | None = None,
             db: str | None = None, psam_sockets: list[Path] | None = None, worker: int = 0, workers: int = 1
             ) -> OpenShop:
        """Log in to the token, open the PSAMs, the database, the bank client, the archive and the exchange
        party. ``shop_class``: a subclass of :class:`~.shop.Shop` with rules of its own (default: Shop).

        ``db``: the storage URL (default: SQLite in the archive's file here, :meth:`database_url`).
        ``psam_sockets``: the PSAM devices' sockets, when this process is worker ``worker`` of ``workers``
        (``semper serve shop --workers``); without them this process opens the PSAMs itself. A worker's
        exchange party listens on ``exchange_port + worker`` (or any free port when that is 0)."""
        from semper.hsm.signer import Pkcs11Signer

        from ..commerce.archive import SharedArchive
        from ..exchange.identity import Identity, TtpInfo
        from ..exchange.party import Party
        from ..payment.bank_client import BankClient
        from ..payment.item import ItemPayee, ItemPayments, item_verifiers
        from ..payment.manager import PaymentManager
        from ..payment.module import PartyContext
        from ..payment.psam_desk import PsamDesk, PsamPool
        from ..payment.sessions import DatabaseSessions
        from ..payment.store import RecordStore
        from ..support.db import Database
        from ..support.trust import TrustStore
        from ..transfer.binding import cert_id
        from ..transfer.information import InformationManager
        from ..transfer.managers import Managers
        from ..transfer.statements import CredentialManager, StatementManager
        from .psam_device import PsamDeviceClient
        from .shop import Shop
        cfg = self.config()
        f = self.folder
        closers: list[Any] = []
        try:
            signer = Pkcs11Signer.open(cfg["token_label"], softhsm_conf=cfg.get("softhsm_conf"))
            signer.verify_pin(pin)
            closers.append(signer.close)
            identity = Identity(signer)
            trust = TrustStore.from_files(f / "ca.pem")
            purse_root = x509.load_pem_x509_certificate((f / "purse-root.pem").read_bytes())
            desks: list[Any] = []
            if psam_sockets is not None:
                desks = [PsamDeviceClient(path) for path in psam_sockets]
            else:
                from semper.hardware.cards import open_connection
                from semper.hardware.iso7816 import AID
                from semper.hardware.psam import PsamSession
                for spec in self.psam_specs():
                    image = Path(spec["image"]) if spec.get("image") else None
                    conn: Any = open_connection(AID.PSAM, spec.get("reader"), image, sync=False)
                    closers.append(conn.close)
                    desks.append(PsamDesk(PsamSession(conn)))
            pool = PsamPool(desks) if desks else None
            database = Database(self.database_url(db))
            closers.append(database.close)
            bank = BankClient(cfg["bank_url"], f / "bank-tls-root.pem", signer)
            ctx = PartyContext(bank=bank, signer=signer, account=cfg["account"],
                               currency=int(cfg.get("currency", 978)), psam=pool, purse_root=purse_root)
            payments = PaymentManager(ctx, only=cfg.get("modules"), store=RecordStore(db=database),
                                      sessions=DatabaseSessions(database))
            archive = SharedArchive(f / "evidence.sqlite3", sign=identity.sign, joined=database)
            closers.append(archive.close)
            psam_id = pool.ids[0] if pool is not None else None
            assign = pool.assign if pool is not None and len(pool.ids) > 1 else None
            shop = (shop_class or Shop)(name=cfg["name"], identity=identity, trust=trust,
                                        catalogue=Catalogue.load(f / "catalogue.json"), payments=payments,
                                        account=cfg["account"], archive=archive, db=database, psam_id=psam_id,
                                        assign_psam=assign, psam_ids=pool.ids if pool is not None else ())
        except BaseException:
            close_all(closers)
            raise
        party = None
        tls = (self.tls_dir / "cert.pem", self.tls_dir / "key.pem")
        if with_exchange and cfg.get("ttp_url") and (f / "ttp.pem").exists():
            ttp_cert = x509.load_pem_x509_certificate((f / "ttp.pem").read_bytes())
            info = TtpInfo.load(cfg["ttp_url"], ttp_cert, (f / "escrow.der").read_bytes(), trust)
            escrows = {cert_id(info.certificate): info.escrow.key_id} if info.escrow else {}
            verifiers = item_verifiers(purse_root=purse_root, roots=list(trust.roots))
            payees = {m: ItemPayee(payments, m, verifiers[m], account=cfg["account"], payee_name=cfg["name"])
                      for m in shop.fair_modules if m in payments.modules and m in verifiers}
            managers = Managers(StatementManager(trust), CredentialManager(trust), InformationManager(escrows),
                                ItemPayments(verifiers, payees))
            root_pem, base = (f / "ca.pem").read_text(), int(cfg.get("exchange_port", 0))
            port = base + worker if base else 0

            def party() -> Party:              # made in the service's thread: its archive connection lives there
                return Party("shop", identity, trust, managers, f / "evidence.sqlite3", tls=tls, root_pem=root_pem,
                             ttp=info, port=port)
        opened = OpenShop(shop, party, tls, (f / "admin-secret").read_text().strip(), closers,
                          services_dir=f / "services")
        opened.worker, opened.workers = worker, workers
        return opened


def home_psam(reader: str | None, image: Path | None) -> list[dict[str, Any]]:
    """The first PSAM's entry in ``psams``."""
    if reader:
        return [{"reader": reader}]
    return [{"image": str(image)}] if image else []
