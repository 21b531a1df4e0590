"""RSA keys in a PKCS#11 token: the mint's blind-signing keys, the bank's and wallet's decryption keys.

Why a token: the brief keeps the bank's and the parties' keys in PKCS#11 tokens. SoftHSM2 2.6 does
raw RSA (CKM_RSA_X_509, what a blind signature needs) and RSA-OAEP with SHA-1 only (its OAEP
refuses SHA-256 parameters), so OAEP here is SHA-1/MGF1-SHA-1, which is still sound for OAEP.
Keys are generated on the token, sensitive and not extractable; the public half is read back.
"""
from __future__ import annotations

import threading
from typing import cast

import pkcs11
import pkcs11.exceptions as p11x
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.types import DecryptMixin, SignMixin

from semper.hardware import errors as hw

from . import errors
from .module import Module
from .session import open_user_session

#: the OAEP parameters the token supports (see the module docstring); encrypt to its keys with these
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


class _RsaPrivate(SignMixin, DecryptMixin):
    """What an RSA private key object on the token can do: python-pkcs11 mixes sign and decrypt into the
    object's class at run time by its key type, so its declared ``PrivateKey`` shows neither."""


class TokenKeyError(hw.TokenError):
    """A token key is missing, or the token refused the operation (e.g. a ciphertext for another key)."""


class RsaTokenKeys:
    """RSA keys on one token, by CKA_ID; one logged-in session, one operation at a time."""

    def __init__(self, module: Module, label: str, pin: bytes) -> None:
        self.module = module
        self.label = label
        with errors.translated(token=label, action="log in for its RSA keys"):
            self._session = open_user_session(module.token(label), pin, rw=True)
        self._lock = threading.Lock()
        self._priv: dict[bytes, _RsaPrivate] = {}

    def close(self) -> None:
        try:
            self._session.close()
        except p11x.PKCS11Error:
            pass                               # the token went away already: nothing to close

    def generate(self, key_id: bytes, label: str, bits: int = 2048) -> rsa.RSAPublicKey:
        with self._lock, errors.translated(token=self.label, action="make an RSA key"):
            pub, priv = self._session.generate_keypair(
                KeyType.RSA, bits, store=True, label=label, id=key_id,
                public_template={Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.ENCRYPT: True},
                private_template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                  Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DECRYPT: True})
            self._priv[key_id] = cast(_RsaPrivate, priv)
            return _public(pub)

    def public(self, key_id: bytes) -> rsa.RSAPublicKey | None:
        with self._lock, errors.translated(token=self.label, action="read an RSA public key"):
            found = list(self._session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                                    Attribute.KEY_TYPE: KeyType.RSA, Attribute.ID: key_id}))
        return _public(cast(pkcs11.PublicKey, found[0])) if found else None

    def _private(self, key_id: bytes) -> _RsaPrivate:
        key = self._priv.get(key_id)
        if key is None:
            found = list(self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                                    Attribute.KEY_TYPE: KeyType.RSA, Attribute.ID: key_id}))
            if not found:
                raise TokenKeyError(f"token {self.label!r} has no RSA key {key_id.hex()}")
            key = self._priv[key_id] = cast(_RsaPrivate, found[0])
        return key

    def raw_sign(self, key_id: bytes, value: bytes) -> bytes:
        """x^d mod n on the token (the blind signature); ``value`` is the modulus length."""
        with self._lock, errors.translated(token=self.label, action="sign with its RSA key"):
            return self._private(key_id).sign(value, mechanism=Mechanism.RSA_X_509)

    def decrypt(self, key_id: bytes, ciphertext: bytes) -> bytes:
        with self._lock:
            try:
                # one buffer in, one buffer out (an iterator comes back only for an iterator of chunks)
                return cast(bytes, self._private(key_id).decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP,
                                                            mechanism_param=(Mechanism.SHA_1, MGF.SHA1, None)))
            except p11x.PKCS11Error:
                raise TokenKeyError("the ciphertext does not decrypt with the token's key") from None


def _public(obj: pkcs11.PublicKey) -> rsa.RSAPublicKey:
    n = int.from_bytes(bytes(obj[Attribute.MODULUS]), "big")
    e = int.from_bytes(bytes(obj[Attribute.PUBLIC_EXPONENT]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()
