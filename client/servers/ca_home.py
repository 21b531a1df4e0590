"""The CA's folder and how to open it: database, published root, admin secret, token, TLS identity.

Layout of ``$SEMPER_HOME/ca`` (or ``--ca-dir``)::

    ca.db           the CA database (unless --db names another DSN): settings, registrations, certificates
    ca.pem          the root certificate, for clients to pin (copy of what the database holds)
    admin-secret    the operator's secret for the admin endpoints (0600; the database keeps its hash)
    softhsm/        the CA's SoftHSM2 token when 'semper ca init --create-token' made it
    tls/            the service's TLS key and certificate chain, issued by this CA

The token's label, module and SoftHSM2 configuration are recorded at init, so ``semper serve ca``
and ``semper ca crl`` open the same key without being told again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from semper.hardware.signer import Signer

from ..support import pki
from ..support.db import Database
from ..support.paths import semper_home
from ..support.secret_files import write_secret
from .ca import CertificationAuthority

TLS_RENEW_BEFORE = timedelta(days=30)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, atomically (client/support/secret_files.py)."""
    write_secret(path, data)


@dataclass
class CaHome:
    folder: Path
    dsn: str | None = None
    _db: Database | None = field(default=None, repr=False)

    @classmethod
    def default(cls, folder: Path | None = None, dsn: str | None = None) -> CaHome:
        return cls(Path(folder) if folder else semper_home() / "ca", dsn)

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.dsn or f"sqlite:///{(self.folder / 'ca.db').absolute()}")
        return self._db

    root_pem = property(lambda self: self.folder / "ca.pem")
    admin_secret_file = property(lambda self: self.folder / "admin-secret")
    softhsm_dir = property(lambda self: self.folder / "softhsm")
    tls_dir = property(lambda self: self.folder / "tls")

    def open(self, signer: Signer | None = None) -> CertificationAuthority:
        return CertificationAuthority(self.db, signer)

    def open_signer(self, ca: CertificationAuthority, pin: bytes) -> Signer:
        """The CA's token signer as recorded at init, logged in with ``pin``."""
        from semper.hsm.signer import Pkcs11Signer
        label, module, conf = ca.token_settings()
        signer = Pkcs11Signer.open(label, module, softhsm_conf=conf)
        signer.verify_pin(pin)
        return signer

    def publish_root(self, ca: CertificationAuthority) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.root_pem.write_text(pki.pem(ca.certificate()))
        return self.root_pem

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def issue_tls_identity(ca: CertificationAuthority, hosts: tuple[str, ...], folder: Path, *,
                       name: str | None = None) -> tuple[Path, Path]:
    """A TLS key (software: Python's ssl cannot use a token) and its CA-issued chain in ``folder``.

    Reuses what is there while it names all ``hosts``, chains to this CA and is not about to expire.
    Returns (chain PEM: leaf then CA, key PEM).
    """
    chain, key_path = folder / "cert.pem", folder / "key.pem"
    ca_der = ca.certificate()
    if chain.exists() and key_path.exists() and _still_good(chain, ca_der, hosts):
        return chain, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    point = pki.point_of(key.public_key())
    issued = ca.issue_direct(pki.Subject(name or hosts[0], "server", None, tuple(hosts)), point)
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    chain.write_text(pki.pem(issued.certificate) + pki.pem(ca_der))
    return chain, key_path


def _still_good(chain: Path, ca_der: bytes, hosts: tuple[str, ...]) -> bool:
    try:
        leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
        root = x509.load_der_x509_certificate(ca_der)
        leaf.verify_directly_issued_by(root)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    except (OSError, ValueError, TypeError, IndexError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return set(hosts) <= names and leaf.not_valid_after_utc - pki.now() > TLS_RENEW_BEFORE
