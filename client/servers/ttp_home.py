"""The third party's folder, how it is set up, and how the service opens it.

Layout of ``$SEMPER_HOME/ttp`` (or ``--dir``)::

    config.json      token label, module, SoftHSM2 configuration, the three key ids
    ttp.db           the decisions (unless --db names another DSN)
    ca.pem           the CA root(s) whose parties T serves
    purse-root.pem   the card purse scheme root (to verify debit proofs), if T serves the purse
    ttp.pem tsa.pem  T's certificates (also stored on the token next to their keys)
    escrow.der       T's signed escrow-key statement: give it to originators with ttp.pem
    bank.json, bank-tls-root.pem   the bank T asks (``semper ttp bank``): payments in fair exchanges
                     that T verifies at the bank (e-cash deposited for the payee) or releases there
                     (reserved cheques); without it T verifies card purse payments only
    tls/             the service's TLS key and certificate chain, issued by the CA

The token holds three P-256 keys made on it: the signing key (decisions; role ``ttp``), the
escrow key (ECDH only) and the time-stamping key (role ``tsa``). Certification goes through the
semper CA (``client/servers/ca.py``), which the operator opens with its own token.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..payment.item import item_verifiers
from ..support import pki
from ..support.db import Database
from ..support.folder_config import read_config
from ..support.paths import semper_home
from ..support.trust import TrustStore
from ..transfer.information import InformationManager
from ..transfer.managers import Managers
from ..transfer.payment import PaymentManager
from ..transfer.statements import CredentialManager, StatementManager
from .ttp import ThirdParty, TtpError, escrow_statement

if TYPE_CHECKING:
    from aiohttp import web

CONFIG = "config.json"
log = logging.getLogger("semper.ttp")


def escrow_key_id(point: bytes) -> str:
    return hashlib.sha256(point).hexdigest()


@dataclass
class OpenTtp:
    """A third party ready to serve: decisions, time-stamping, escrow statement, TLS files."""

    ttp: ThirdParty
    tsa: Any
    escrow_statement: bytes
    tls: tuple[Path, Path]
    closers: list[Any] = field(default_factory=list)

    def app(self) -> web.Application:
        from .ttp_http import build_app
        return build_app(self.ttp, escrow_statement=self.escrow_statement, tsa=self.tsa)

    def close(self) -> None:
        """Close everything, each step on its own: one failing close must not keep the others open."""
        for c in self.closers:
            try:
                c()
            except Exception:
                log.warning("closing the third party: %s failed", getattr(c, "__qualname__", c), exc_info=True)


@dataclass
class TtpHome:
    folder: Path
    dsn: str | None = None

    @classmethod
    def default(cls, folder: Path | None = None, dsn: str | None = None) -> TtpHome:
        return cls(Path(folder) if folder else semper_home() / "ttp", dsn)

    config_file = property(lambda self: self.folder / CONFIG)
    ca_pem = property(lambda self: self.folder / "ca.pem")
    purse_root_pem = property(lambda self: self.folder / "purse-root.pem")
    cert_pem = property(lambda self: self.folder / "ttp.pem")
    tsa_pem = property(lambda self: self.folder / "tsa.pem")
    escrow_file = property(lambda self: self.folder / "escrow.der")
    tls_dir = property(lambda self: self.folder / "tls")

    def config(self) -> dict[str, Any]:
        return read_config(self.config_file, f"no third party in {self.folder}; run 'semper ttp init' first",
                           TtpError)

    def database(self) -> Database:
        return Database(self.dsn or f"sqlite:///{(self.folder / 'ttp.db').absolute()}")

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.read_bytes())

    # ---- set-up -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: Path, *, ca: Any, token_label: str, pin: bytes, softhsm_conf: str | None,
               module: str | None = None, name: str = "semper third party", email: str = "ttp@semper.example",
               hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), purse_root: x509.Certificate | None = None,
               dsn: str | None = None) -> TtpHome:
        """Make T's extra keys on its (already provisioned) token, have the CA certify them, write the folder.

        ``ca`` is an open :class:`~client.servers.ca.CertificationAuthority` with its signer; the
        token must hold exactly its one signing key so far.
        """
        from semper.hsm.ecdh import generate_key
        from semper.hsm.signer import Pkcs11Signer

        from .ca_home import issue_tls_identity
        home = cls(Path(folder), dsn)
        if home.config_file.exists():
            raise TtpError(f"{folder} already holds a third party; use another folder")
        home.folder.mkdir(parents=True, exist_ok=True)
        signer = Pkcs11Signer.open(token_label, module, softhsm_conf=softhsm_conf)
        signer.verify_pin(pin)
        sign_point = signer.public_point()
        escrow_id, escrow_point = generate_key(signer.module, token_label, pin, "semper escrow key", derive=True)
        tsa_id, tsa_point = generate_key(signer.module, token_label, pin, "semper time-stamping key", derive=False)
        issued = ca.issue_direct(pki.Subject(name, "ttp", email), sign_point)
        signer.store_certificate(issued.certificate)
        tsa_issued = ca.issue_direct(pki.Subject(f"{name} TSA", "tsa"), tsa_point)
        tsa_signer = Pkcs11Signer(signer.module, token_label, tsa_id)
        tsa_signer.store_certificate(tsa_issued.certificate)
        home.ca_pem.write_text(pki.pem(ca.certificate()))
        home.cert_pem.write_text(pki.pem(issued.certificate))
        home.tsa_pem.write_text(pki.pem(tsa_issued.certificate))
        if purse_root is not None:
            home.purse_root_pem.write_bytes(purse_root.public_bytes(Encoding.PEM))
        issue_tls_identity(ca, hosts, home.tls_dir, name=f"{hosts[0]} (semper third party)")
        from ..support.cms import sign_statement
        statement = escrow_statement(lambda body: sign_statement(signer, body), escrow_point,
                                     escrow_key_id(escrow_point))
        home.escrow_file.write_bytes(statement)
        config = {"token_label": token_label, "module": module, "softhsm_conf": softhsm_conf,
                  "sign_key_id": signer.key_id.hex(), "escrow_key_id": escrow_id.hex(), "tsa_key_id": tsa_id.hex(),
                  "escrow_point": escrow_point.hex(), "name": name}
        home.config_file.write_text(json.dumps(config, indent=1, sort_keys=True))
        return home

    bank_file = property(lambda self: self.folder / "bank.json")
    bank_tls_root = property(lambda self: self.folder / "bank-tls-root.pem")

    def connect_bank(self, url: str, tls_root: Path) -> None:
        """Let T reach the bank: to verify e-cash by depositing it for the payee, and to check the bank's
        signature on reserved cheques (docs/exchange.md, "Payments in fair exchanges")."""
        self.bank_tls_root.write_bytes(Path(tls_root).read_bytes())
        self.bank_file.write_text(json.dumps({"url": url}, indent=1))

    # ---- opening ------------------------------------------------------------------------------------
    def trust(self) -> TrustStore:
        return TrustStore.from_files(self.ca_pem)

    def managers(self, trust: TrustStore, bank: Any = None) -> Managers:
        """``bank``: T's bank client (or None: card purse payments only, as before)."""
        root = x509.load_pem_x509_certificate(self.purse_root_pem.read_bytes()) if self.purse_root_pem.exists() \
            else None
        extra: dict[str, Any] = {}
        if bank is not None:
            from ..payment.exchange_items import bank_deposit
            from ..payment.module import PartyContext
            from ..payment.modules.ecash import EcashModule
            try:
                extra = {"roots": list(trust.roots), "bank_certificate": bank.bank_certificate,
                         "mint_keys": EcashModule(PartyContext(bank=bank)).mint_keys(),
                         "ecash_deposit": bank_deposit(bank)}
            except Exception as e:          # the bank is down: T still serves everything but these payments
                log.warning("the bank is not reachable (%s); e-cash and cheques in exchanges are not verified", e)
        return Managers(StatementManager(trust), CredentialManager(trust), InformationManager(),
                        PaymentManager(item_verifiers(purse_root=root, **extra)))

    def bank_client(self, signer: Any) -> Any:
        if not self.bank_file.exists():
            return None
        from ..payment.bank_client import BankClient
        url = json.loads(self.bank_file.read_text())["url"]
        return BankClient(url, self.bank_tls_root, signer)

    def open(self, pin: bytes) -> OpenTtp:
        """T's token keys logged in, its database open."""
        from semper.hsm.ecdh import TokenEcdhKey
        from semper.hsm.signer import Pkcs11Signer

        from ..support.tsa import TimeStampAuthority
        cfg = self.config()
        label, module, conf = cfg["token_label"], cfg.get("module"), cfg.get("softhsm_conf")
        signer = Pkcs11Signer.open(label, module, key_id=bytes.fromhex(cfg["sign_key_id"]), softhsm_conf=conf)
        signer.verify_pin(pin)
        certificate = x509.load_der_x509_certificate(signer.certificate())
        tsa_signer = Pkcs11Signer(signer.module, label, bytes.fromhex(cfg["tsa_key_id"]))
        tsa = TimeStampAuthority(tsa_signer, tsa_signer.certificate(), chain=[self._ca_der()])
        escrow = TokenEcdhKey(signer.module, label, bytes.fromhex(cfg["escrow_key_id"]),
                                bytes.fromhex(cfg["escrow_point"]))
        escrow.login(pin)
        trust = self.trust()
        db = self.database()
        locked = LockedSigner(signer)           # T's decisions and its bank requests share one token session
        ttp = ThirdParty(db, locked, certificate, trust, self.managers(trust, self.bank_client(locked)), escrow)
        return OpenTtp(ttp, tsa, self.escrow_file.read_bytes(), (self.tls_dir / "cert.pem", self.tls_dir / "key.pem"),
                       [escrow.close, signer.close, db.close])

    def _ca_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.ca_pem.read_bytes()).public_bytes(Encoding.DER)


class LockedSigner:
    """A signer whose signatures queue on one lock: a token session signs one digest at a time, and T signs
    decisions and, for payments in exchanges, its requests to the bank, from several threads."""

    def __init__(self, signer: Any) -> None:
        self.signer = signer
        self.label = getattr(signer, "label", "third party")
        self._lock = threading.Lock()

    def certificate(self) -> bytes:
        return bytes(self.signer.certificate())

    def public_point(self) -> bytes:
        return bytes(self.signer.public_point())

    def pin_status(self) -> Any:
        return self.signer.pin_status()

    def verify_pin(self, pin: bytes) -> None:
        self.signer.verify_pin(pin)

    def sign_digest(self, digest: bytes) -> bytes:
        with self._lock:
            return bytes(self.signer.sign_digest(digest))

    def __getattr__(self, name: str) -> Any:        # the PKCS#11 signer's own (module, key_id, close ...)
        return getattr(self.signer, name)
