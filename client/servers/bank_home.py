"""The bank's folder and how to open it: database, token, keys, published certificates, TLS.

Layout of ``$SEMPER_HOME/bank`` (or ``--bank-dir``)::

    bank.json        settings: bank id, token label, SoftHSM2 configuration, PI key id, trusted roots
    bank.db          the ledger and evidence (unless --db names another DSN, e.g. postgresql://...)
    bank.pem         the bank's certificate (issuer role, from the purse scheme root)
    roots/*.pem      roots whose certificates the bank accepts on signed requests
    softhsm/         the bank's SoftHSM2 token (when 'semper bank init' made it)
    tls/             the service's TLS chain (cert.pem), key (key.pem) and the root clients pin
                     (tls-root.pem): the project CA's root when the certificate came from
                     'semper ca tls-cert' (--tls-cert/--tls-key), else a TLS root of the bank's own

Keys, all on the token: the EC issuer key (signs load commands and every answer), an RSA key that
opens payment instructions, one RSA blind-signing key per currency and denomination.
"""
from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from semper.hsm.rsa import RsaTokenKeys

from ..support.db import Database, Transaction
from ..support.paths import semper_home
from ..support.scheme import ROLE_ISSUER, Scheme
from . import bank_store as store
from .bank import Bank, BankKeys
from .bank_store import BankRefusal
from .ca_home import write_private

DENOMINATIONS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
PI_KEY_ID = b"semper-pi"


@dataclass
class BankHome:
    folder: Path
    dsn: str | None = None
    _db: Database | None = field(default=None, repr=False)

    @classmethod
    def default(cls, folder: Path | None = None, dsn: str | None = None) -> BankHome:
        return cls(Path(folder) if folder else semper_home() / "bank", dsn)

    config_file = property(lambda self: self.folder / "bank.json")
    cert_file = property(lambda self: self.folder / "bank.pem")
    tls_dir = property(lambda self: self.folder / "tls")
    tls_root = property(lambda self: self.folder / "tls" / "tls-root.pem")

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.dsn or f"sqlite:///{(self.folder / 'bank.db').absolute()}")
        return self._db

    def config(self) -> dict[str, object]:
        try:
            return dict(json.loads(self.config_file.read_text()))
        except FileNotFoundError:
            raise BankRefusal("not_initialised", f"no bank in {self.folder}; run 'semper bank init' first",
                              503) from None

    # ---- set-up ------------------------------------------------------------------------------
    def init(self, scheme: Scheme, pin: bytes, *, token_label: str, softhsm_conf: Path, create_token: bool = False,
             currencies: tuple[int, ...] = (978,), denominations: tuple[int, ...] = DENOMINATIONS,
             extra_roots: tuple[x509.Certificate, ...] = (), hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
             bank_id: str | None = None, tls: tuple[Path, Path] | None = None) -> str:
        """Make the bank's keys on its token, certify the issuer key, write settings; returns the bank id.

        ``tls`` is a (chain PEM, key PEM) pair issued by the project CA (``semper ca tls-cert``); it
        is checked *before* anything is made, so a bad pair leaves no half-made bank. Without it the
        bank makes a TLS root of its own for ``hosts`` (the fallback: clients then pin that root).
        """
        if tls is not None:
            check_tls_identity(*tls)
        from semper.hsm.signer import Pkcs11Signer
        from semper.hsm.softhsm import SoftHsmStore, provision
        if self.config_file.exists():
            raise BankRefusal("already_initialised", f"{self.folder} already holds a bank", 409)
        self.folder.mkdir(parents=True, exist_ok=True)
        hsm_store = (SoftHsmStore.from_conf(softhsm_conf) if softhsm_conf.exists()
                     else SoftHsmStore.in_folder(softhsm_conf.parent))
        if create_token:
            provision(hsm_store, token_label, pin, secrets.token_hex(8).encode())
        signer = Pkcs11Signer.open(token_label, softhsm_conf=hsm_store.conf)
        signer.verify_pin(pin)
        cert = scheme.certify(signer.public_point(), "semper bank (issuer, acquirer, mint)", "BANK", ROLE_ISSUER)
        der = cert.public_bytes(Encoding.DER)
        signer.store_certificate(der)
        rsa_keys = RsaTokenKeys(signer.module, token_label, pin)
        rsa_keys.generate(PI_KEY_ID, "semper bank payment-instruction key")
        bank_id = bank_id or "BANK-" + secrets.token_hex(4).upper()
        self.db.migrate(store.SCHEMA)
        self.db.run(lambda tx: store.set_meta(tx, "bank_id", bank_id))
        for currency in currencies:
            self.db.run(functools.partial(store.ensure_system_accounts, currency=currency))
            for d in denominations:
                kid = secrets.token_bytes(8)
                pub = rsa_keys.generate(kid, f"semper mint {currency} {d}")
                pem = pub.public_bytes(Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

                def mint_key(tx: Transaction, row: tuple[str, int, int, str] = (kid.hex(), currency, d, pem)) -> None:
                    tx.execute("INSERT INTO mint_keys (key_id, currency, denomination, public_pem) VALUES (?, ?, ?, ?)",
                               row)
                self.db.run(mint_key)
        rsa_keys.close()
        self.cert_file.write_bytes(cert.public_bytes(Encoding.PEM))
        roots = self.folder / "roots"
        roots.mkdir(exist_ok=True)
        (roots / "scheme-root.pem").write_bytes(scheme.root_cert.public_bytes(Encoding.PEM))
        for i, r in enumerate(extra_roots):
            (roots / f"root-{i}.pem").write_bytes(r.public_bytes(Encoding.PEM))
        self.config_file.write_text(json.dumps({
            "bank_id": bank_id, "token_label": token_label, "softhsm_conf": str(hsm_store.conf),
            "currencies": list(currencies)}, indent=2))
        if tls is not None:
            install_tls_identity(self.tls_dir, *tls)
        else:
            make_tls_identity(self.tls_dir, hosts)
        return bank_id

    # ---- opening -----------------------------------------------------------------------------
    def roots(self) -> list[x509.Certificate]:
        out: list[x509.Certificate] = []
        for p in sorted((self.folder / "roots").glob("*.pem")):
            out.extend(x509.load_pem_x509_certificates(p.read_bytes()))
        return out

    def open(self, pin: bytes) -> Bank:
        from semper.hsm.signer import Pkcs11Signer
        cfg = self.config()
        label, conf = str(cfg["token_label"]), str(cfg["softhsm_conf"])
        signer = Pkcs11Signer.open(label, softhsm_conf=conf)
        signer.verify_pin(pin)
        rsa_keys = RsaTokenKeys(signer.module, label, pin)
        pi = rsa_keys.public(PI_KEY_ID)
        if pi is None:
            raise BankRefusal("no_key", f"token {label!r} lacks the payment-instruction key; was it initialised by "
                                        "'semper bank init'?", 503)
        keys = BankKeys(signer, signer.certificate(), rsa_keys, PI_KEY_ID, pi)
        roots = self.roots()
        scheme_root = x509.load_pem_x509_certificate((self.folder / "roots" / "scheme-root.pem").read_bytes())
        return Bank(self.db, keys, roots, bank_id=str(cfg["bank_id"]), scheme_root=scheme_root)

    # ---- the operator's views and settings: the folder and the database, no token, no PIN ---------------
    def account(self, account_id: str) -> store.Account:
        """A customer account (its balance in minor units of its currency)."""
        self.config()
        with self.db.transaction(write=False) as tx:
            acc = store.get_account(tx, account_id)
        if acc is None or acc.kind != "customer":
            raise BankRefusal("unknown_account", f"there is no customer account {account_id!r} at the bank in "
                                                 f"{self.folder}; 'semper bank accounts' lists them", 404)
        return acc

    def accounts(self) -> list[store.Account]:
        """Every customer account, oldest first."""
        self.config()
        with self.db.transaction(write=False) as tx:
            rows = tx.all("SELECT id, kind, currency, owner, name, balance FROM accounts WHERE kind = 'customer' "
                          "ORDER BY created_at, id")
        return [store.Account(*r) for r in rows]

    def linked(self) -> list[tuple[str, str, str, int | None]]:
        """Cards and PSAMs linked to accounts: (kind, id, account, shadow balance of a card)."""
        self.config()
        with self.db.transaction(write=False) as tx:
            cards = tx.all("SELECT card, account, shadow FROM cards ORDER BY card")
            psams = tx.all("SELECT psam, account FROM psams ORDER BY psam")
        return [("card", c, a, int(sh)) for c, a, sh in cards] + [("psam", p, a, None) for p, a in psams]

    def shadow(self, card: str) -> tuple[int, int]:
        """A purse card's shadow balance at the issuer and its currency."""
        self.config()
        with self.db.transaction(write=False) as tx:
            row = tx.one("SELECT shadow, currency FROM cards WHERE card = ?", (card.upper(),))
        if row is None:
            raise BankRefusal("unknown_card", f"card {card} is not linked at the bank in {self.folder}", 404)
        return int(row[0]), int(row[1])

    def trust_root(self, root: x509.Certificate) -> Path:
        """Accept certificates under ``root`` (a CA's self-signed root) on signed requests and account
        owners; takes effect when the bank is opened next (``semper serve bank`` reads its roots at start)."""
        self.config()
        try:
            root.verify_directly_issued_by(root)
            is_ca = root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            is_ca = False
        if not is_ca:
            raise BankRefusal("bad_root", "the certificate is not a self-signed CA root (a CA's ca.pem), so the bank "
                                          "cannot trust certificates under it", 400)
        folder = self.folder / "roots"
        fingerprint = root.fingerprint(hashes.SHA256()).hex()[:16]
        for existing in self.roots():
            if existing.fingerprint(hashes.SHA256()) == root.fingerprint(hashes.SHA256()):
                raise BankRefusal("root_known", f"the bank trusts this root already (SHA-256 {fingerprint}...)", 409)
        target = folder / f"root-{fingerprint}.pem"
        folder.mkdir(exist_ok=True)
        target.write_bytes(root.public_bytes(Encoding.PEM))
        return target

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def check_tls_identity(chain_file: Path, key_file: Path) -> x509.Certificate:
    """Check a CA-issued TLS chain and key; returns the root at the end of the chain (what clients pin).

    Why so strict: the chain's last certificate becomes ``tls/tls-root.pem``, the file handed to
    shops and buyers to pin; a chain that does not end in a self-signed root, a leaf the key does
    not match, or an expired or CA leaf would be found out only when every client fails to connect.
    """
    try:
        certs = x509.load_pem_x509_certificates(Path(chain_file).read_bytes())
    except OSError as e:
        raise BankRefusal("bad_tls", f"cannot read the TLS certificate {chain_file}: {e.strerror}", 400) from None
    except ValueError:
        raise BankRefusal("bad_tls", f"{chain_file} holds no PEM certificate", 400) from None
    leaf, root = certs[0], certs[-1]
    try:
        for cert, issuer in itertools.pairwise(certs):
            cert.verify_directly_issued_by(issuer)
        if len(certs) < 2 or root.issuer != root.subject:
            raise ValueError
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise BankRefusal("bad_tls", f"{chain_file} must be the server certificate followed by the CA that issued it, "
                                     "ending with the self-signed CA root clients pin (as 'semper ca tls-cert' "
                                     "writes it)", 400) from None
    now = dt.datetime.now(dt.UTC)
    try:
        is_ca = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca or not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
        raise BankRefusal("bad_tls", f"the server certificate in {chain_file} is a CA certificate or not valid now",
                          400)
    try:
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
    except OSError as e:
        raise BankRefusal("bad_tls", f"cannot read the TLS key {key_file}: {e.strerror}", 400) from None
    except (ValueError, TypeError):
        raise BankRefusal("bad_tls", f"{key_file} is not an unencrypted PEM private key", 400) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(Encoding.DER, spki) != leaf.public_key().public_bytes(Encoding.DER, spki):
        raise BankRefusal("bad_tls", f"the key {key_file} does not belong to the certificate in {chain_file}", 400)
    return root


def install_tls_identity(folder: Path, chain_file: Path, key_file: Path) -> Path:
    """Copy a checked CA-issued chain and key into ``folder``; its root becomes ``tls-root.pem``.

    Returns the root file clients pin (the project CA root). Used by ``semper bank init`` and, to
    take a renewed certificate, by ``semper serve bank``.
    """
    root = check_tls_identity(chain_file, key_file)
    folder.mkdir(parents=True, exist_ok=True)
    write_private(folder / "key.pem", Path(key_file).read_bytes())
    (folder / "cert.pem").write_bytes(Path(chain_file).read_bytes())
    (folder / "tls-root.pem").write_bytes(root.public_bytes(Encoding.PEM))
    return folder / "tls-root.pem"


def make_tls_identity(folder: Path, hosts: tuple[str, ...]) -> tuple[Path, Path]:
    """A TLS root of the bank's own and a server certificate for ``hosts`` (clients pin the root).

    The fallback when no CA-issued certificate is given (:func:`install_tls_identity`): a bank
    can start without a semper CA, at the price of one more root for its clients to pin.
    """
    import ipaddress
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "semper bank TLS root")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name).public_key(root_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(root_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    write_private(folder / "key.pem", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (folder / "cert.pem").write_bytes(leaf.public_bytes(pem) + root.public_bytes(pem))
    (folder / "tls-root.pem").write_bytes(root.public_bytes(pem))
    return folder / "cert.pem", folder / "key.pem"
