"""``Pkcs11Signer``: the signer protocol (``hardware.signer.Signer``) over a key in a PKCS#11 token.

The layers above cannot tell it from ``hardware.piv.PivSigner``: DER ECDSA P-256 signatures over a
SHA-256 digest the host computed, the certificate stored next to the key (same CKA_ID), the same
PIN exceptions. The digest is signed with raw ``CKM_ECDSA`` because SoftHSM2 2.6 has no
``CKM_ECDSA_SHA256``; the token answers r||s and the DER form is made here.

Keys marked CKA_ALWAYS_AUTHENTICATE (PIV key 9C, "PIN always") need a context-specific login after
every C_SignInit. As with the card, one ``verify_pin`` allows one signature: the PIN given to
``verify_pin`` is held until the next signature on such a key uses it, and never longer.
"""
from __future__ import annotations

import hashlib
import os
from types import TracebackType
from typing import Any, cast

import pkcs11
import pkcs11.exceptions as p11x
from asn1crypto.core import OctetString
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import (
    Attribute,
    CertificateType,
    KeyType,
    Mechanism,
    ObjectClass,
    TokenFlag,
)
from pkcs11.types import SignMixin

from semper.hardware import errors as hw
from semper.hardware.signer import PinStatus

from . import errors
from .module import Module, load
from .raw import CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS, CKU_USER


class _EcPrivate(SignMixin):
    """A private key object that signs: python-pkcs11 mixes ``sign`` into the object's class at run time
    by its key type, so its declared ``PrivateKey`` does not show it."""


def _handle(session: pkcs11.Session) -> int:
    """The C session handle the raw calls need: the compiled session has it, the declared type does not."""
    return int(cast(Any, session).handle)


def key_id_for(point: bytes) -> bytes:
    """CKA_ID for a key semper makes: SHA-1 of the public point, as X.509's subject key identifier."""
    return hashlib.sha1(point).digest()


def ec_point(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point; a few modules give the bare point."""
    if len(value) == 65 and value[0] == 0x04:
        return bytes(value)
    return bytes(OctetString.load(bytes(value)).native)


def ec_keys(module: Module, label: str) -> list[tuple[str, bytes, bytes]]:
    """(key label, CKA_ID, public point) of every EC public key on the token: what it can sign with."""
    token = module.token(label)
    with errors.translated(token=label, action="list the keys"):
        with token.open() as session:
            return [(str(o[Attribute.LABEL]), bytes(o[Attribute.ID]), ec_point(o[Attribute.EC_POINT]))
                    for o in session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                                  Attribute.KEY_TYPE: KeyType.EC})]


class Pkcs11Signer:
    """One EC P-256 key on one token, found by token label and (when the token holds several) CKA_ID."""

    def __init__(self, module: Module, label: str, key_id: bytes | None = None) -> None:
        self.module = module
        self.label = label
        self._session: pkcs11.Session | None = None
        self._generation = -1
        self._key: _EcPrivate | None = None
        self._always_auth = False
        self._pending_pin: bytes | None = None
        self._reset = False                            # the module was re-initialised under this signer
        self._cert: bytes | None = None                # read once per session: every statement embeds it
        self._live()
        self.key_id = key_id if key_id is not None else self._only_key_id()

    @classmethod
    def open(cls, label: str, module: str | os.PathLike[str] | None = None, key_id: bytes | None = None,
             softhsm_conf: str | os.PathLike[str] | None = None) -> Pkcs11Signer:
        """Load the module (default SoftHSM2) and open the token labelled ``label``."""
        return cls(load(module, softhsm_conf=softhsm_conf), label, key_id)

    # ---- session -----------------------------------------------------------------------------
    def _live(self) -> pkcs11.Session:
        """The session, reopened when the module was re-initialised since (logins are then gone)."""
        if self._session is None or self._generation != self.module.generation:
            self._reset = self._session is not None
            token = self.module.token(self.label)
            with errors.translated(token=self.label, action="open a session"):
                self._session = token.open()
            self._generation = self.module.generation
            self._key, self._pending_pin, self._cert = None, None, None
        return self._session

    def close(self) -> None:
        """Close the session; PKCS#11 ends the login when the application's last session closes."""
        self._pending_pin = None
        if self._session is not None and self._generation == self.module.generation:
            try:
                self._session.close()
            except p11x.PKCS11Error:
                pass                                   # the token went away already: nothing to close
        self._session = None

    def __enter__(self) -> Pkcs11Signer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _logged_in(self, session: pkcs11.Session) -> bool:
        rv, state = self.module.raw.session_state(_handle(session))
        return rv == 0 and state in (CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS)

    # ---- objects -----------------------------------------------------------------------------
    def _only_key_id(self) -> bytes:
        """The CKA_ID of the token's one EC key (public key or certificate objects, visible without PIN)."""
        session = self._live()
        with errors.translated(token=self.label, action="list the keys"):
            ids = {bytes(o[Attribute.ID]) for o in session.get_objects(
                {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC})}
            ids |= {bytes(o[Attribute.ID]) for o in session.get_objects(
                {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.CERTIFICATE_TYPE: CertificateType.X_509})}
        if len(ids) == 1:
            return ids.pop()
        if not ids:
            raise hw.NotFoundError(f"token {self.label!r} shows no EC key; make one with 'semper token init' or "
                                   f"name the key id")
        raise hw.TokenError(f"token {self.label!r} holds {len(ids)} keys (ids "
                            f"{', '.join(sorted(i.hex() for i in ids))}); choose one by its key id")

    def _object(self, cls: ObjectClass) -> pkcs11.Object | None:
        session = self._live()
        with errors.translated(token=self.label, action="read the token's objects"):
            found = list(session.get_objects({Attribute.CLASS: cls, Attribute.ID: self.key_id}))
        return found[0] if found else None

    def _private_key(self) -> _EcPrivate:
        session = self._live()
        if self._key is None:
            key = self._object(ObjectClass.PRIVATE_KEY)
            if key is None:
                if not self._logged_in(session):
                    why = (" (the PKCS#11 module was re-initialised in this process, e.g. to find a new token, "
                           "which ended the login)" if self._reset else "")
                    raise hw.PinRequiredError(f"token {self.label!r} shows its private key only after the PIN{why}; "
                                              f"verify the PIN first")
                raise hw.NotFoundError(f"token {self.label!r} has no private key with id {self.key_id.hex()}")
            try:
                self._always_auth = bool(key[Attribute.ALWAYS_AUTHENTICATE])
            except (p11x.AttributeTypeInvalid, p11x.AttributeSensitive):
                self._always_auth = False
            self._key = cast(_EcPrivate, key)
        return self._key

    # ---- the signer protocol -----------------------------------------------------------------
    def certificate(self) -> bytes:
        self._live()
        if self._cert is not None:
            return self._cert
        cert = self._object(ObjectClass.CERTIFICATE)
        if cert is None:
            raise hw.NotFoundError(f"token {self.label!r} holds no certificate for key {self.key_id.hex()}; have the "
                                   f"key certified and store the certificate ('semper token import-cert')")
        with errors.translated(token=self.label, action="read the certificate"):
            self._cert = bytes(cert[Attribute.VALUE])
        return self._cert

    def public_point(self) -> bytes:
        pub = self._object(ObjectClass.PUBLIC_KEY)
        if pub is not None:
            with errors.translated(token=self.label, action="read the public key"):
                return ec_point(pub[Attribute.EC_POINT])
        key = x509.load_der_x509_certificate(self.certificate()).public_key()
        return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def pin_status(self) -> PinStatus:
        session = self._live()
        flags = self.module.token_info(self.label).flags
        if flags & TokenFlag.USER_PIN_LOCKED:
            return PinStatus(False, 0, True)
        tries = 1 if flags & TokenFlag.USER_PIN_FINAL_TRY else None
        return PinStatus(self._logged_in(session), tries)

    def verify_pin(self, pin: bytes) -> None:
        """C_Login as the user. A login already standing is ended first, so a wrong PIN is always noticed."""
        session = self._live()
        self._pending_pin = None
        if self._logged_in(session):
            self.module.raw.logout(_handle(session))
            self._key = None                           # SoftHSM2 drops private-object handles at logout
        self._reset = False
        rv = self.module.raw.login(_handle(session), CKU_USER, bytes(pin))
        if rv == errors.CKR_PIN_INCORRECT:
            raise self._wrong_pin()
        if rv != 0:
            raise errors.from_rv(rv, token=self.label, action="log in")
        try:
            self._private_key()                        # learn CKA_ALWAYS_AUTHENTICATE, now visible
        except hw.NotFoundError:
            return                                     # signing will say so; the PIN itself was right
        if self._always_auth:
            self._pending_pin = bytes(pin)

    def _wrong_pin(self) -> hw.HardwareError:
        """WrongPinError, made precise by the token's flags when it keeps a counter (cards do)."""
        try:
            flags = self.module.token_info(self.label).flags
        except hw.HardwareError:
            flags = 0
        if flags & TokenFlag.USER_PIN_LOCKED:          # this try was the last: as the card says it, 0 left
            return errors.TokenWrongPinError(self.label, 0)
        return errors.TokenWrongPinError(self.label, 1 if flags & TokenFlag.USER_PIN_FINAL_TRY else None)

    def sign_digest(self, digest: bytes) -> bytes:
        if len(digest) != 32:
            raise hw.InvalidInputError(f"a P-256 signature is over a 32-byte SHA-256 digest, not {len(digest)} bytes")
        key = self._private_key()
        pin: str | None = None
        if self._always_auth:
            if self._pending_pin is None:
                raise hw.PinRequiredError(f"key {self.key_id.hex()} on token {self.label!r} needs the PIN for every "
                                          f"signature; verify the PIN right before signing")
            pin, self._pending_pin = self._pending_pin.decode("utf-8"), None
        try:
            rs = key.sign(digest, mechanism=Mechanism.ECDSA, pin=pin)
        except p11x.PinIncorrect:
            raise self._wrong_pin() from None
        except p11x.PKCS11Error as e:
            raise errors.from_exception(e, token=self.label, action="sign") from e
        if len(rs) != 64:
            raise hw.TokenError(f"token {self.label!r} answered a P-256 signature of {len(rs)} bytes, not 64")
        return encode_dss_signature(int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big"))

    # ---- beyond the protocol -----------------------------------------------------------------
    def store_certificate(self, der: bytes, object_label: str = "semper certificate") -> None:
        """Put the key's certificate on the token (CKO_CERTIFICATE, same CKA_ID), replacing an older one.

        Refuses a certificate for another key, so the token never pairs a key with a foreign name.
        Needs a verified PIN on tokens that protect writes.
        """
        cert = x509.load_der_x509_certificate(der)
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or \
                key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint) != self.public_point():
            raise hw.InvalidInputError(f"this certificate is not for key {self.key_id.hex()} on token {self.label!r}")
        token = self.module.token(self.label)
        self._cert = None
        with errors.translated(token=self.label, action="store the certificate"):
            with token.open(rw=True) as rw:
                for old in list(rw.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: self.key_id})):
                    old.destroy()
                rw.create_object({
                    Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                    Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.MODIFIABLE: True,
                    Attribute.ID: self.key_id, Attribute.LABEL: object_label,
                    Attribute.SUBJECT: cert.subject.public_bytes(), Attribute.ISSUER: cert.issuer.public_bytes(),
                    Attribute.SERIAL_NUMBER: _der_integer(cert.serial_number), Attribute.VALUE: der,
                })


def _der_integer(n: int) -> bytes:
    from asn1crypto.core import Integer
    return bytes(Integer(n).dump())
