"""The semper certification authority: registrations, certification, revocation, CRLs.

The CA's key lives in a PKCS#11 token; this class sees it only as a :class:`Signer`, so every
certificate and CRL is a digest signed on the token. Operations that sign need the signer; the
operator's bookkeeping (adding a person, revoking, listing) does not, so ``semper ca add-person``
and ``semper ca revoke`` work without the token PIN and the running service picks the change up.

Registration follows the SEMPER trials: the operator records a person's data and hands out a
one-time registration key (``regkeys``); the person's client sends a PKCS#10 request signed on the
card or token plus an HMAC over it with that key; the CA checks MAC, proof of possession and data,
issues, and burns the key in the same transaction that records the certificate. A retry after a
lost answer (same registration, same public key) gets the same certificate back: no second
certificate is ever made for one registration, and a person is never left with a burnt key and
no certificate.

Names: the common name is what the TINGUIN shows as "the seller, as named by its certificate", so
the CA certifies only names no one could take for another (:mod:`client.support.names`, Unicode
TR39 through ICU): visible identifier characters, one script, and no TR39 look-alike (skeleton,
case-folded) of a different name this CA already issued. The operator hears it when recording the
registration; the CA checks again when it issues, inside the transaction that records the
certificate, so two look-alike registrations cannot both be certified.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import unicodedata
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography import x509

from semper.client.support import names
from semper.hardware.errors import SemperError
from semper.hardware.signer import Signer

from ..support import pki, regkeys
from ..support.db import Database, Transaction
from . import ca_store as store

DEFAULT_DAYS = 730
CRL_DAYS = 7


class CaRefusal(SemperError):
    """The CA refuses a request: a stable code, an HTTP status for the service, a sentence for people."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = status


@dataclass(frozen=True)
class Issued:
    serial: str
    certificate: bytes          # DER
    repeated: bool = False      # True when a retry got the certificate issued before


def _norm(text: str) -> str:
    return unicodedata.normalize("NFC", " ".join(text.split()))


def check_name(common_name: str) -> None:
    """CaRefusal ``bad_name`` naming the characters, unless ``common_name`` may be certified."""
    found = names.problems(common_name)
    if found:
        raise CaRefusal("bad_name", f"the name {common_name!r} cannot be certified: " + "; ".join(found)
                        + " (a name must not be mistakable for another one)")


def _clash(tx: Any, common_name: str) -> None:
    """CaRefusal ``name_confusable`` when a different name this CA issued looks the same (TR39)."""
    others = store.confusable_names(tx, names.key(common_name), common_name)
    if others:
        raise CaRefusal("name_confusable", f"the name {common_name!r} looks like {others[0]!r}, which this CA "
                                           "already certified for another subject; choose a name that "
                                           "cannot be taken for it", 409)


def _key_hash(point: bytes) -> str:
    return hashlib.sha256(point).hexdigest()


def serial_hex(serial: int) -> str:
    return f"{serial:X}"


def parse_serial(text: str) -> str:
    """A serial as the CA stores it (upper-case hex, no leading zeros); accepts 0x, colons, case."""
    cleaned = text.strip().replace(":", "").lower().removeprefix("0x")
    try:
        return serial_hex(int(cleaned, 16))
    except ValueError:
        raise CaRefusal("bad_serial", f"{text!r} is not a certificate serial number (hexadecimal)") from None


class CertificationAuthority:
    """One CA over one database; thread-safe (the service calls it from a thread pool)."""

    def __init__(self, db: Database, signer: Signer | None = None) -> None:
        self.db = db
        self.signer = signer
        self._sign_lock = threading.Lock()      # a token session signs one digest at a time
        self._signer_point: bytes | None = None
        db.migrate(store.SCHEMA)
        self._index_names()

    def _index_names(self) -> None:
        """Key every issued name with this machine's Unicode data (again when the data changed)."""
        with self.db.transaction(write=False) as tx:
            if store.get_meta(tx, "name_keys_data") == names.DATA:
                return

        def reindex(tx: Transaction) -> None:
            if store.get_meta(tx, "name_keys_data") == names.DATA:
                return
            store.clear_name_keys(tx)
            for cert in store.list_certificates(tx):
                store.insert_name_key(tx, cert.serial, names.key(cert.common_name), cert.common_name)
            store.set_meta(tx, "name_keys_data", names.DATA)

        self.db.run(reindex)

    # ---- set-up ---------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        with self.db.transaction(write=False) as tx:
            return store.get_meta(tx, "ca_cert") is not None

    def initialise(self, common_name: str, *, token_label: str, module: str | None = None,
                   softhsm_conf: str | None = None, days: int = 3650, cert_days: int = DEFAULT_DAYS,
                   crl_url: str | None = None) -> str:
        """Self-sign the CA certificate through the token; returns the admin secret (shown once)."""
        signer = self._need_signer()
        check_name(_norm(common_name))
        if self.initialised:
            raise CaRefusal("already_initialised", "this CA is already initialised; its database keeps the root")
        with self._sign_lock:
            der = pki.build_ca_certificate(signer, common_name, days=days)
        admin = secrets.token_urlsafe(24)

        def record(tx: Transaction) -> None:
            if store.get_meta(tx, "ca_cert") is not None:
                raise CaRefusal("already_initialised", "this CA was initialised meanwhile")
            for name, value in (("ca_cert", store.b64(der)), ("token_label", token_label),
                                ("module", module or ""), ("softhsm_conf", softhsm_conf or ""),
                                ("cert_days", str(cert_days)), ("crl_url", crl_url or ""),
                                ("admin_secret_sha256", hashlib.sha256(admin.encode()).hexdigest()),
                                ("crl_number", "0"), ("crl_dirty", "1")):
                store.set_meta(tx, name, value)

        self.db.run(record)
        return admin

    def _meta(self, name: str) -> str:
        with self.db.transaction(write=False) as tx:
            value = store.get_meta(tx, name)
        if value is None:
            raise CaRefusal("not_initialised", "the CA is not initialised; run 'semper ca init' first", 503)
        return value

    def certificate(self) -> bytes:
        import base64
        return base64.b64decode(self._meta("ca_cert"))

    def token_settings(self) -> tuple[str, str | None, str | None]:
        """(token label, module path, SoftHSM2 configuration) recorded at init, to open the signer again."""
        return self._meta("token_label"), (self._meta("module") or None), (self._meta("softhsm_conf") or None)

    def _need_signer(self) -> Signer:
        if self.signer is None:
            raise CaRefusal("no_signer", "this operation signs; open the CA with its token (and PIN)", 503)
        return self.signer

    def _identity(self) -> pki.CaIdentity:
        """The signer with the CA certificate, once checked to hold that certificate's key."""
        identity = pki.CaIdentity(self._need_signer(), self.certificate())
        if self._signer_point is None:
            with self._sign_lock:
                self._signer_point = identity.signer.public_point()
        if self._signer_point != identity.point:
            raise CaRefusal("wrong_token", "the token's key is not the key of this CA's certificate; "
                                           "open the token recorded at 'semper ca init'", 503)
        return identity

    def check_admin(self, secret: str) -> bool:
        expected = self._meta("admin_secret_sha256")
        # surrogateescape: a header that is not UTF-8 arrives with lone surrogates; it is a wrong secret, not a 500
        return hmac.compare_digest(hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest(), expected)

    # ---- the operator's side: registrations ------------------------------------------------------
    def add_person(self, common_name: str, *, email: str | None = None, role: str = "person",
                   hosts: tuple[str, ...] = ()) -> tuple[str, str]:
        """Record whom a registration key is for; returns (registration id, the key, shown once)."""
        self._meta("ca_cert")
        common_name = _norm(common_name)
        profile = pki.ROLES.get(role)
        if profile is None:
            raise CaRefusal("bad_role", f"unknown role {role!r}; roles: {', '.join(pki.ROLES)}")
        if not common_name or len(common_name) > 64:
            raise CaRefusal("bad_name", "the name must have 1 to 64 characters")
        check_name(common_name)
        with self.db.transaction(write=False) as tx:
            _clash(tx, common_name)
        if email is not None:
            email = email.strip()
            local, at, domain = email.partition("@")
            if not (local and at and "." in domain) or len(email) > 128 or any(c.isspace() for c in email):
                raise CaRefusal("bad_email", f"{email!r} is not an e-mail address")
        if profile.needs_email and not email:
            raise CaRefusal("missing_email", f"a {role} registration needs an e-mail address (--email)")
        if profile.needs_hosts and not hosts:
            raise CaRefusal("missing_hosts", f"a {role} registration needs host names or IP addresses (--host)")
        key = regkeys.new_key()
        raw = regkeys.parse_key(key)
        reg = store.Registration(regkeys.registration_id(raw), common_name, email, role, tuple(hosts),
                                 regkeys.mac_key(raw), store.iso(pki.now()), None, None)
        self.db.run(lambda tx: store.insert_registration(tx, reg))
        return reg.reg_id, key

    # ---- the client's side: certification ----------------------------------------------------------
    def register(self, reg_id: str, csr_der: bytes, mac: bytes) -> Issued:
        """Check a registration request and issue (or re-deliver) its certificate; CaRefusal if not."""
        with self.db.transaction(write=False) as tx:
            reg = store.find_registration(tx, reg_id)
        if reg is None:
            raise CaRefusal("registration_key_invalid", "the registration key is not valid at this CA "
                                                        "(mistyped, or for another CA)", 403)
        if reg.used_at is not None:
            return self._already_used(reg, csr_der)
        assert reg.mac_key is not None
        if not regkeys.check_mac(reg.mac_key, reg_id, csr_der, mac):
            raise CaRefusal("registration_key_invalid", "the request's MAC does not match the registration key", 403)
        try:
            csr = pki.parse_csr(csr_der)
        except pki.PkiError as e:
            raise CaRefusal("csr_invalid", str(e), 400) from None
        self._check_data(reg, csr)
        subject = pki.Subject(reg.common_name, reg.role, reg.email, reg.hosts)
        return self._issue(subject, csr.point, reg_id=reg_id)

    def _already_used(self, reg: store.Registration, csr_der: bytes) -> Issued:
        """A used registration: re-deliver to the proven holder of the same key, refuse everyone else."""
        try:
            point = pki.parse_csr(csr_der).point
        except pki.PkiError:
            point = b""
        return self._redeliver(reg, point)

    def _redeliver(self, reg: store.Registration, point: bytes) -> Issued:
        with self.db.transaction(write=False) as tx:
            cert = store.find_certificate(tx, reg.serial or "")
        if point and cert is not None and cert.revoked_at is None and cert.key_sha256 == _key_hash(point):
            return Issued(cert.serial, cert.der, repeated=True)
        raise CaRefusal("registration_key_used", "this registration key was already used for a certificate; "
                                                 "ask the CA operator for a new one", 409)

    @staticmethod
    def _check_data(reg: store.Registration, csr: pki.CsrInfo) -> None:
        if _norm(csr.common_name) != reg.common_name:
            raise CaRefusal("data_mismatch", "the name in the request is not the name registered for this key", 403)
        if (csr.email or "").lower() != (reg.email or "").lower():
            raise CaRefusal("data_mismatch", "the e-mail address in the request is not the one registered "
                                             "for this key", 403)

    def _issue(self, subject: pki.Subject, point: bytes, *, reg_id: str | None) -> Issued:
        check_name(subject.common_name)           # registrations recorded before the rule are checked too
        identity = self._identity()
        now = pki.now()
        days = int(self._meta("cert_days"))
        with self.db.transaction(write=False) as tx:
            _clash(tx, subject.common_name)
            if store.valid_certificates_for_key(tx, _key_hash(point), store.iso(now)) and reg_id is not None:
                raise CaRefusal("key_already_certified", "this public key already has a valid certificate from "
                                                         "this CA; revoke it first", 409)
        serial = pki.new_serial()
        with self._sign_lock:
            der = pki.build_certificate(identity, subject, point, serial=serial, days=days,
                                        crl_url=self._meta("crl_url") or None)
        not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
        record = store.IssuedCert(serial_hex(serial), reg_id, subject.common_name, subject.role, _key_hash(point),
                                  store.iso(not_after), der, store.iso(now), None, None)

        def record_issue(tx: Transaction) -> bool:
            """True when the certificate is recorded; False when another request burnt the registration."""
            if reg_id is not None and not store.burn_registration(tx, reg_id, record.serial, record.issued_at):
                return False
            _clash(tx, subject.common_name)      # again, serialised with every other issuance
            store.insert_certificate(tx, record)
            store.insert_name_key(tx, record.serial, names.key(subject.common_name), subject.common_name)
            return True

        if not self.db.run(record_issue):    # another request for this registration won the race; ours is discarded
            with self.db.transaction(write=False) as tx:
                reg = store.find_registration(tx, reg_id or "")
            assert reg is not None
            return self._redeliver(reg, point)
        return Issued(record.serial, der)

    def issue_direct(self, subject: pki.Subject, point: bytes) -> Issued:
        """Issue without a registration: the operator's own use (TLS certificates for the services)."""
        return self._issue(subject, point, reg_id=None)

    # ---- revocation ----------------------------------------------------------------------------
    def revoke(self, serial: str, reason: str = "unspecified") -> store.IssuedCert:
        serial = parse_serial(serial)
        if reason not in pki.REASONS:
            raise CaRefusal("bad_reason", f"unknown reason {reason!r}; reasons: {', '.join(pki.REASONS)}")

        def record_revocation(tx: Transaction) -> store.IssuedCert | None:
            cert = store.find_certificate(tx, serial)
            if cert is None:
                raise CaRefusal("unknown_serial", f"this CA issued no certificate with serial {serial}", 404)
            if not store.revoke_certificate(tx, serial, store.iso(pki.now()), reason):
                raise CaRefusal("already_revoked", f"certificate {serial} was already revoked "
                                                   f"({cert.revocation_reason}, {cert.revoked_at})", 409)
            store.set_meta(tx, "crl_dirty", "1")
            return store.find_certificate(tx, serial)

        found = self.db.run(record_revocation)
        assert found is not None
        return found

    def status(self, serial: str) -> dict[str, Any]:
        serial = parse_serial(serial)
        with self.db.transaction(write=False) as tx:
            cert = store.find_certificate(tx, serial)
        if cert is None:
            raise CaRefusal("unknown_serial", f"this CA issued no certificate with serial {serial}", 404)
        return {"serial": cert.serial, "subject": cert.common_name, "role": cert.role, "not_after": cert.not_after,
                "status": "revoked" if cert.revoked_at else "good", "revoked_at": cert.revoked_at,
                "reason": cert.revocation_reason}

    def crl(self, *, force: bool = False) -> bytes:
        """The current CRL: the stored one while fresh, else a new one signed on the token."""
        import base64
        now = pki.now()
        with self.db.transaction(write=False) as tx:
            stored, dirty = store.get_meta(tx, "crl_der"), store.get_meta(tx, "crl_dirty") == "1"
            refresh_at = store.get_meta(tx, "crl_refresh_at")
        if stored and not dirty and not force and refresh_at and store.parse_iso(refresh_at) > now:
            return base64.b64decode(stored)
        identity = self._identity()

        def sign_crl(tx: Transaction) -> bytes:
            number = int(store.get_meta(tx, "crl_number") or "0") + 1
            revoked = [pki.Revoked(c.serial_int, store.parse_iso(c.revoked_at or ""),
                                   c.revocation_reason or "unspecified")
                       for c in store.revoked_certificates(tx)]
            der = pki.build_crl(identity, revoked, number=number, this_update=now,
                                next_update=now + timedelta(days=CRL_DAYS))
            store.set_meta(tx, "crl_number", str(number))
            store.set_meta(tx, "crl_der", store.b64(der))
            store.set_meta(tx, "crl_dirty", "0")
            store.set_meta(tx, "crl_refresh_at", store.iso(now + timedelta(days=CRL_DAYS / 2)))
            return der

        with self._sign_lock:
            return self.db.run(sign_crl)

    # ---- listing ---------------------------------------------------------------------------------
    def listing(self) -> dict[str, list[dict[str, Any]]]:
        with self.db.transaction(write=False) as tx:
            regs, certs = store.list_registrations(tx), store.list_certificates(tx)
        return {
            "registrations": [{"reg_id": r.reg_id, "name": r.common_name, "email": r.email, "role": r.role,
                               "hosts": list(r.hosts), "created_at": r.created_at, "used_at": r.used_at,
                               "serial": r.serial} for r in regs],
            "certificates": [{"serial": c.serial, "name": c.common_name, "role": c.role, "issued_at": c.issued_at,
                              "not_after": c.not_after, "revoked_at": c.revoked_at, "reason": c.revocation_reason}
                             for c in certs],
        }
