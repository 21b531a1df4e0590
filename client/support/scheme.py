"""The purse scheme's keys: the root that certifies cards, PSAMs and issuers, and the local issuer.

The scheme root certifies purse cards and PSAMs (each side checks the other's certificate against
the root key personalised onto it) and the issuers whose load commands cards accept; the local
issuer key signs load commands for ``semper card load`` (the local-key path). Both keys are made
on a PKCS#11 token and never leave it: whoever holds the root key can issue himself a card that
every PSAM accepts, so a copy of the key in a file would be a copy of the scheme.

Layout of ``$SEMPER_HOME/scheme`` (or the folder given)::

    scheme.json       token label, module, SoftHSM2 configuration, the two keys' CKA_IDs
    root-cert.pem     the root's self-signed certificate (public: every verifier pins it)
    issuer-cert.pem   the local issuer's certificate, from the root (public)
    softhsm/          the scheme's SoftHSM2 token, made here by default; its key objects are
                      encrypted by SoftHSM2 under the token PIN, which is never written here

The PIN comes from whoever uses the scheme (a prompt, a file elsewhere, the caller's own secret
store); the folder alone gives no usable key. SoftHSM2 protects the key files with a key derived
from the PIN (and one from the random SO PIN, shown once), so a copy of the folder can be attacked by
guessing PINs offline: a new token's PIN has at least ``PIN_MIN`` characters. The token is worked
by an agent process of its own (``hsm.agent``), so the scheme's login and the bank's or shop's tokens
in the same process do not end each other's sessions.

A folder from before (``root-key.pem``, ``issuer-key.pem``) is refused, not migrated: a key that sat
in a plain file may have been copied, and moving it into a token would not take the copy back.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from semper.hardware.errors import SemperError
from semper.hardware.signer import sign_message
from semper.hsm.agent import AgentKey, TokenAgent

from . import pki

ARC = "2.25.204673179289492764569138234192898414436"
ROLE_PURSE_CARD = x509.ObjectIdentifier(ARC + ".1.1")
ROLE_PSAM = x509.ObjectIdentifier(ARC + ".1.2")
ROLE_ISSUER = x509.ObjectIdentifier(ARC + ".1.3")

SCHEME_FILE = "scheme.json"
ROOT_CERT, ISSUER_CERT = "root-cert.pem", "issuer-cert.pem"
TOKEN_DIR = "softhsm"
TOKEN_LABEL = "semper-scheme"
ROOT_KEY_LABEL, ISSUER_KEY_LABEL = "semper scheme root", "semper scheme issuer"
OLD_KEY_FILES = ("root-key.pem", "issuer-key.pem")
ROOT_DAYS, CERT_DAYS = 3650, 1825
# SoftHSM2 derives the key that unlocks its key files from the PIN with about 1,500 rounds of salted
# SHA-256: whoever copies the folder can guess PINs offline, fast. A new scheme token's PIN must
# therefore be a passphrase, not a card-style PIN.
PIN_MIN = 12


class SchemeError(SemperError):
    """The purse scheme cannot do what was asked (its folder, token or keys); the message says what to do."""


def _name(common: str, serial: str | None = None) -> asn1_x509.Name:
    fields = {"organization_name": "semper purse scheme", "common_name": common}
    if serial:
        fields["serial_number"] = serial
    return asn1_x509.Name.build(fields, use_printable=False)


@dataclass
class Scheme:
    """An open scheme: its public certificates and its two keys, usable while the token agent runs."""

    folder: Path
    root_cert: x509.Certificate
    issuer_cert: x509.Certificate
    root_signer: AgentKey
    issuer_signer: AgentKey
    so_pin: bytes | None = field(default=None, repr=False)     # only right after the token was made here

    @property
    def root_point(self) -> bytes:
        return pki.point_of(self.root_cert)

    @property
    def issuer_point(self) -> bytes:
        return pki.point_of(self.issuer_cert)

    # ---- storage ---------------------------------------------------------------------------
    @staticmethod
    def exists(folder: Path) -> bool:
        """True when ``folder`` holds a finished scheme (of this kind or the old one)."""
        return (folder / SCHEME_FILE).exists() or any((folder / n).exists() for n in OLD_KEY_FILES)

    @classmethod
    def load_or_create(cls, folder: Path, pin: bytes) -> Scheme:
        """Open the scheme in ``folder`` with the token PIN, or make one there (a new token) first."""
        _refuse_old(folder)
        if (folder / SCHEME_FILE).exists():
            return cls.open(folder, pin)
        return cls.create(folder, pin)

    @classmethod
    def open(cls, folder: Path, pin: bytes) -> Scheme:
        _refuse_old(folder)
        try:
            cfg = json.loads((folder / SCHEME_FILE).read_text())
            root_cert = x509.load_pem_x509_certificate((folder / ROOT_CERT).read_bytes())
            issuer_cert = x509.load_pem_x509_certificate((folder / ISSUER_CERT).read_bytes())
            label, module = str(cfg["token_label"]), cfg.get("module")
            root_id, issuer_id = bytes.fromhex(cfg["root_key_id"]), bytes.fromhex(cfg["issuer_key_id"])
            conf = _conf_path(folder, cfg.get("softhsm_conf"))
        except FileNotFoundError as e:
            raise SchemeError(f"{folder} is not a complete purse scheme ({Path(str(e.filename)).name} is missing); "
                              f"restore it from a backup or move the folder away to make a new scheme") from None
        except (ValueError, KeyError, TypeError) as e:
            raise SchemeError(f"the purse scheme files in {folder} are unreadable ({e}); restore them or move the "
                              f"folder away") from None
        agent = TokenAgent()
        try:
            keys = {kid: point for _label, kid, point in agent.call("open", module, conf, label, bytes(pin))}
            for what, kid, cert in (("root", root_id, root_cert), ("issuer", issuer_id, issuer_cert)):
                if keys.get(kid) != pki.point_of(cert):
                    raise SchemeError(f"token {label!r} holds no {what} key matching {folder / _cert_file(what)}; "
                                      f"is it the token this scheme was made on?")
            return cls(folder, root_cert, issuer_cert, _key(agent, root_id, keys, ROOT_KEY_LABEL, root_cert),
                       _key(agent, issuer_id, keys, ISSUER_KEY_LABEL, issuer_cert))
        except BaseException:
            agent.close()
            raise

    @classmethod
    def create(cls, folder: Path, pin: bytes, *, token_label: str = TOKEN_LABEL, module: str | None = None,
               softhsm_conf: Path | None = None) -> Scheme:
        """A new root and local issuer, both made on a token; their certificates in ``folder``.

        By default the token is a new SoftHSM2 token in ``folder/softhsm``, with a random SO PIN
        (``so_pin`` on the result: show it once, keep it offline). With ``module`` or
        ``softhsm_conf`` the two keys are made on the existing token ``token_label`` instead.
        """
        from semper.hsm.softhsm import SoftHsmStore, check_pin
        _refuse_old(folder)
        if (folder / SCHEME_FILE).exists():
            raise SchemeError(f"{folder} already holds a purse scheme")
        leftovers = [n for n in (ROOT_CERT, ISSUER_CERT, TOKEN_DIR) if (folder / n).exists()]
        if leftovers:
            raise SchemeError(f"{folder} holds part of a purse scheme ({', '.join(leftovers)}) but no {SCHEME_FILE}; "
                              f"a creation did not finish: move the folder away and try again")
        check_pin(bytes(pin), "scheme token PIN")
        own = module is None and softhsm_conf is None
        if own and len(pin) < PIN_MIN:
            raise SchemeError(weak_pin_message())
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        agent = TokenAgent()
        so_pin = secrets.token_hex(16).encode() if own else None
        try:
            if own:
                store = SoftHsmStore.own_folder(folder / TOKEN_DIR)
                conf: str | None = str(store.conf)
                keys = agent.call("provision", conf, token_label, bytes(pin), so_pin,
                                  [ROOT_KEY_LABEL, ISSUER_KEY_LABEL])
                made = {name: (kid, point) for name, kid, point in keys}
                root_id, root_point = made[ROOT_KEY_LABEL]
                issuer_id, issuer_point = made[ISSUER_KEY_LABEL]
            else:
                conf = str(Path(softhsm_conf).absolute()) if softhsm_conf is not None else None
                agent.call("open", module, conf, token_label, bytes(pin))
                root_id, root_point = agent.call("generate", bytes(pin), ROOT_KEY_LABEL)
                issuer_id, issuer_point = agent.call("generate", bytes(pin), ISSUER_KEY_LABEL)
            root_der = _root_certificate(AgentKey(agent, root_id, root_point, ROOT_KEY_LABEL))
            root_cert = x509.load_der_x509_certificate(root_der)
            root = AgentKey(agent, root_id, root_point, ROOT_KEY_LABEL, root_der)
            issuer = AgentKey(agent, issuer_id, issuer_point, ISSUER_KEY_LABEL)
            scheme = cls(folder, root_cert, root_cert, root, issuer, so_pin=so_pin)
            scheme.issuer_cert = scheme.certify(issuer_point, "semper purse issuer", "ISSUER", ROLE_ISSUER)
            scheme.issuer_signer = AgentKey(agent, issuer_id, issuer_point, ISSUER_KEY_LABEL,
                                            scheme.issuer_cert.public_bytes(Encoding.DER))
            (folder / ROOT_CERT).write_bytes(root_cert.public_bytes(Encoding.PEM))
            (folder / ISSUER_CERT).write_bytes(scheme.issuer_cert.public_bytes(Encoding.PEM))
            settings = {"version": 1, "token_label": token_label, "module": module,
                        "softhsm_conf": f"{TOKEN_DIR}/softhsm2.conf" if own else conf,
                        "root_key_id": root_id.hex(), "issuer_key_id": issuer_id.hex()}
            tmp = folder / (SCHEME_FILE + ".tmp")
            tmp.write_text(json.dumps(settings, indent=2) + "\n")
            os.replace(tmp, folder / SCHEME_FILE)                   # the scheme exists from here on
            return scheme
        except BaseException:
            agent.close()
            if not (folder / SCHEME_FILE).exists():
                for n in (ROOT_CERT, ISSUER_CERT, SCHEME_FILE + ".tmp"):
                    (folder / n).unlink(missing_ok=True)
                if own:
                    shutil.rmtree(folder / TOKEN_DIR, ignore_errors=True)
            raise

    def close(self) -> None:
        """End the token agent (and with it the login); the scheme cannot sign afterwards."""
        self.root_signer.agent.close()

    def __enter__(self) -> Scheme:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ---- issuing ---------------------------------------------------------------------------
    def certify(self, public: ec.EllipticCurvePublicKey | bytes, common: str, serial: str,
                role: x509.ObjectIdentifier | None, *, non_repudiation: bool = True,
                key_agreement: bool = False) -> x509.Certificate:
        """A certificate from the root for a card, PSAM or issuer key, signed on the scheme's token."""
        point = public if isinstance(public, bytes) else pki.point_of(public)
        if key_agreement:
            usage = {"key_agreement"}
        else:
            usage = {"digital_signature"} | ({"non_repudiation"} if non_repudiation else set())
        extensions = [
            pki.extension("basic_constraints", {"ca": False}, True),
            pki.extension("key_usage", usage, True),
            pki.extension("key_identifier", pki.key_id(point)),
            pki.extension("authority_key_identifier", {"key_identifier": pki.key_id(self.root_point)}),
        ]
        if role is not None:
            extensions.append(pki.extension("extended_key_usage", [role.dotted_string]))
        issuer = asn1_x509.Certificate.load(self.root_cert.public_bytes(Encoding.DER)).subject
        tbs = pki.tbs_certificate(issuer, _name(common, serial), point, days=CERT_DAYS, extensions=extensions)
        return x509.load_der_x509_certificate(pki.sign_certificate(self.root_signer, self.root_point, tbs))

    def sign_load(self, command_record: bytes) -> bytes:
        """The local issuer's signature on a load command (DER ECDSA over SHA-256, made on the token)."""
        return sign_message(self.issuer_signer, command_record)

    def verify_card_signature(self, card_cert_der: bytes, record: bytes, signature: bytes) -> x509.Certificate:
        """Check a card-signed record against its certificate and the root; return the certificate."""
        cert = x509.load_der_x509_certificate(card_cert_der)
        root = self.root_cert.public_key()
        assert isinstance(root, ec.EllipticCurvePublicKey)
        root.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidSignature("the card's certificate holds no EC key")
        key.verify(signature, record, ec.ECDSA(hashes.SHA256()))
        return cert


def _root_certificate(root: AgentKey) -> bytes:
    """The root's self-signed certificate: CA (path length 0), keyCertSign + cRLSign, signed on the token."""
    point, name = root.public_point(), _name("semper purse scheme root")
    tbs = pki.tbs_certificate(name, name, point, days=ROOT_DAYS, extensions=[
        pki.extension("basic_constraints", {"ca": True, "path_len_constraint": 0}, True),
        pki.extension("key_usage", {"key_cert_sign", "crl_sign"}, True),
        pki.extension("key_identifier", pki.key_id(point)),
    ])
    return pki.sign_certificate(root, point, tbs)


def weak_pin_message() -> str:
    return (f"a new purse scheme token needs a PIN of at least {PIN_MIN} characters (a passphrase): the token's "
            f"files in the scheme folder are protected by that PIN alone, and a copy of them can be attacked "
            f"offline with as many guesses as the attacker can compute")


def _refuse_old(folder: Path) -> None:
    old = [n for n in OLD_KEY_FILES if (folder / n).exists()]
    if old:
        raise SchemeError(
            f"{folder} holds the purse scheme's private keys as plain files ({', '.join(old)}); semper keeps them "
            f"only on a PKCS#11 token now. Whoever could read those files may have copied the root key, so semper "
            f"does not move it into a token: move the folder away (mv {folder} {folder}.old), run the command again "
            f"to make a new scheme on a token, and issue the old scheme's cards and PSAMs again; then delete the "
            f"old key files")


def _conf_path(folder: Path, conf: str | None) -> str | None:
    """The SoftHSM2 configuration to open: the folder's own store follows the folder when it moves."""
    if conf is None:
        return None
    if not Path(conf).is_absolute():
        from semper.hsm.softhsm import SoftHsmStore
        if not (folder / conf).exists():
            raise SchemeError(f"the purse scheme's token is missing from {folder} ({conf}); restore the folder from a "
                              f"backup (without it nothing can be certified under this root)")
        return str(SoftHsmStore.own_folder((folder / conf).parent).conf)
    return conf


def _cert_file(what: str) -> str:
    return ROOT_CERT if what == "root" else ISSUER_CERT


def _key(agent: TokenAgent, kid: bytes, keys: dict[bytes, bytes], label: str, cert: x509.Certificate) -> AgentKey:
    return AgentKey(agent, kid, keys[kid], label, cert.public_bytes(Encoding.DER))
