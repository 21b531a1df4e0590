"""The certifier's folder and how to open it: its token key, its CA-issued certificate, TLS, what it issued.

Folder: ``certifier.json`` (``token_label``, ``softhsm_conf``, ``url``: where its revocation list is
published, and the policy), ``certifier.pem`` (its certificate, role ``certifier``), ``ca.pem``,
``tls/`` (cert.pem, key.pem), ``admin-secret``, ``issued.json``, ``revoked.json``.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..commerce.errors import CommerceError
from ..support.closing import close_all
from ..support.folder_config import read_config
from ..support.paths import semper_home
from ..support.secret_files import write_secret
from .certifier import Certifier, Policy

CONFIG = "certifier.json"


@dataclass
class OpenCertifier:
    certifier: Certifier
    tls: tuple[Path, Path]
    admin_secret: str
    closers: list[Any] = field(default_factory=list)

    def app(self) -> Any:
        from .certifier_http import build_app
        return build_app(self.certifier, self.admin_secret)

    def close(self) -> None:
        close_all(self.closers)


@dataclass(frozen=True)
class CertifierHome:
    folder: Path

    @classmethod
    def default(cls, folder: Path | None = None) -> CertifierHome:
        return cls(Path(folder) if folder else semper_home() / "certifier")

    config_file = property(lambda self: self.folder / CONFIG)
    certificate_file = property(lambda self: self.folder / "certifier.pem")
    tls_dir = property(lambda self: self.folder / "tls")

    def config(self) -> dict[str, Any]:
        return read_config(self.config_file, f"no certifier in {self.folder}; set one up first (semper certifier "
                           "init)", CommerceError)

    @classmethod
    def create(cls, folder: Path, *, token_label: str, softhsm_conf: str | None, certificate: bytes,
               ca_root: x509.Certificate, url: str, tls: tuple[Path, Path], policy: Policy | None = None
               ) -> CertifierHome:
        """Write the folder; the token key's certificate (role certifier) must have been issued already."""
        home = cls(Path(folder))
        home.folder.mkdir(parents=True, exist_ok=True)
        home.certificate_file.write_bytes(x509.load_der_x509_certificate(certificate).public_bytes(Encoding.PEM))
        (home.folder / "ca.pem").write_bytes(ca_root.public_bytes(Encoding.PEM))
        home.tls_dir.mkdir(exist_ok=True)
        for src, name in zip(tls, ("cert.pem", "key.pem"), strict=True):
            write_secret(home.tls_dir / name, Path(src).read_bytes())
        write_secret(home.folder / "admin-secret", secrets.token_urlsafe(24).encode())
        config = {"token_label": token_label, "softhsm_conf": softhsm_conf, "url": url,
                  "policy": dataclasses.asdict(policy or Policy())}
        home.config_file.write_text(json.dumps(config, indent=1, sort_keys=True))
        return home

    def open(self, pin: bytes, url: str | None = None) -> OpenCertifier:
        """Log in to the token; ``url``: where it is served now (default: as configured)."""
        from semper.hsm.signer import Pkcs11Signer

        from ..exchange.identity import Identity
        cfg = self.config()
        signer = Pkcs11Signer.open(cfg["token_label"], softhsm_conf=cfg.get("softhsm_conf"))
        signer.verify_pin(pin)
        policy = msgspec.convert(cfg.get("policy", {}), Policy)      # the folder's config, typed field by field
        certifier = Certifier(Identity(signer), self.folder, url or cfg["url"], policy)
        secret = (self.folder / "admin-secret").read_text().strip()
        return OpenCertifier(certifier, (self.tls_dir / "cert.pem", self.tls_dir / "key.pem"), secret, [signer.close])
