"""The purse scheme's keys, kept locally until the CA and bank services take them over.

The scheme root certifies purse cards and PSAMs (each side checks the other's certificate against
the root key personalised onto it); the issuer signs load commands. Here both keys are PEM files
under the user's semper folder, made on first use: good enough for a demo and for tests, and the
one place to change when the keys move into a PKCS#11 token and the CA service.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .secret_files import write_secret

ARC = "2.25.204673179289492764569138234192898414436"
ROLE_PURSE_CARD = x509.ObjectIdentifier(ARC + ".1.1")
ROLE_PSAM = x509.ObjectIdentifier(ARC + ".1.2")
ROLE_ISSUER = x509.ObjectIdentifier(ARC + ".1.3")


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _name(common: str, serial: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "semper purse scheme"),
             x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if serial:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


@dataclass
class Scheme:
    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    issuer_key: ec.EllipticCurvePrivateKey
    issuer_cert: x509.Certificate

    @property
    def root_point(self) -> bytes:
        return _point(self.root_key.public_key())

    @property
    def issuer_point(self) -> bytes:
        return _point(self.issuer_key.public_key())

    # ---- storage ---------------------------------------------------------------------------
    @classmethod
    def load_or_create(cls, folder: Path) -> "Scheme":
        folder.mkdir(parents=True, exist_ok=True)
        files = {n: folder / f"{n}.pem" for n in ("root-key", "root-cert", "issuer-key", "issuer-cert")}
        if all(p.exists() for p in files.values()):
            try:
                return cls(
                    serialization.load_pem_private_key(files["root-key"].read_bytes(), None),  # type: ignore[arg-type]
                    x509.load_pem_x509_certificate(files["root-cert"].read_bytes()),
                    serialization.load_pem_private_key(files["issuer-key"].read_bytes(), None),  # type: ignore[arg-type]
                    x509.load_pem_x509_certificate(files["issuer-cert"].read_bytes()),
                )
            except ValueError as e:
                raise SchemeError(f"the scheme keys in {folder} are unreadable ({e}); restore them or move the folder away") from None
        if any(p.exists() for p in files.values()):
            raise SchemeError(f"{folder} holds only some of the scheme keys; restore the rest or move the folder away")
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_cert = _build(_name("semper purse scheme root"), root_key.public_key(), _name("semper purse scheme root"),
                           root_key, ca=True)
        issuer_key = ec.generate_private_key(ec.SECP256R1())
        scheme = cls(root_key, root_cert, issuer_key, root_cert)
        scheme.issuer_cert = scheme.certify(issuer_key.public_key(), "semper purse issuer", "ISSUER", ROLE_ISSUER)
        pem = serialization.Encoding.PEM
        for key_name, key in (("root-key", root_key), ("issuer-key", issuer_key)):
            write_secret(files[key_name], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
        files["root-cert"].write_bytes(root_cert.public_bytes(pem))
        files["issuer-cert"].write_bytes(scheme.issuer_cert.public_bytes(pem))
        return scheme

    # ---- issuing ---------------------------------------------------------------------------
    def certify(self, public: ec.EllipticCurvePublicKey | bytes, common: str, serial: str,
                role: x509.ObjectIdentifier | None, *, non_repudiation: bool = True,
                key_agreement: bool = False) -> x509.Certificate:
        if isinstance(public, bytes):
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public)
        return _build(_name(common, serial), public, self.root_cert.subject, self.root_key, role=role,
                      non_repudiation=non_repudiation, key_agreement=key_agreement)

    def sign_load(self, command_record: bytes) -> bytes:
        return self.issuer_key.sign(command_record, ec.ECDSA(hashes.SHA256()))

    def verify_card_signature(self, card_cert_der: bytes, record: bytes, signature: bytes) -> x509.Certificate:
        """Check a card-signed record against its certificate and the root; return the certificate."""
        cert = x509.load_der_x509_certificate(card_cert_der)
        self.root_key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(signature, record, ec.ECDSA(hashes.SHA256()))
        return cert


class SchemeError(Exception):
    pass


def _build(subject: x509.Name, public: ec.EllipticCurvePublicKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
           *, ca: bool = False, role: x509.ObjectIdentifier | None = None, non_repudiation: bool = True,
           key_agreement: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=3650 if ca else 1825))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    elif key_agreement:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, True, False, False, False, False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, non_repudiation, False, False, False, False, False, False, False),
                            critical=True)
    if role is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([role]), critical=False)
    return b.sign(signer, hashes.SHA256())
