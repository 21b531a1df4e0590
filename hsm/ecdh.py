"""EC key pairs made on a token for one use each: ECDH (the third party's escrow key) or signing (its
RFC 3161 time-stamping key).

Both are P-256 pairs generated *on* the token: the escrow key has only CKA_DERIVE (sealed keys are
opened by ECDH in the token, so its private half never exists outside it), the time-stamping key only
CKA_SIGN (its certificate may carry nothing but the time-stamping extended key usage, so it cannot be
the signing key). Keys are found again by CKA_ID (SHA-1 of the public point).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import cast

import pkcs11
import pkcs11.exceptions as p11x
from pkcs11 import KDF, Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11.types import DeriveMixin
from pkcs11.util.ec import encode_named_curve_parameters

from semper.hardware import errors as hw

from . import errors
from .module import Module
from .session import open_user_session
from .signer import ec_point, key_id_for


def generate_key(module: Module, label: str, pin: bytes, key_label: str, *, derive: bool) -> tuple[bytes, bytes]:
    """A new P-256 key pair on token ``label``: (key id, public point). ``derive`` picks ECDH vs signing."""
    token = module.token(label)
    with errors.translated(token=label, action=f"generate the {key_label}"), \
            open_user_session(token, pin, rw=True) as session:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
        pub, priv = params.generate_keypair(
            store=True, label=key_label,
            capabilities=MechanismFlag.DERIVE if derive else MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.TOKEN: True, Attribute.PRIVATE: False},
            private_template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                              Attribute.EXTRACTABLE: False, Attribute.DERIVE: derive, Attribute.SIGN: not derive,
                              Attribute.DECRYPT: False})
        point = ec_point(pub[Attribute.EC_POINT])
        key_id = key_id_for(point)
        pub[Attribute.ID] = key_id
        priv[Attribute.ID] = key_id
    return key_id, point


@dataclass
class TokenEcdhKey:
    """ECDH with a key in the token; one session, one derivation at a time."""

    module: Module
    label: str
    key_id: bytes
    point: bytes

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._session: pkcs11.Session | None = None
        self._generation = -1

    def login(self, pin: bytes) -> None:
        with self._lock, errors.translated(token=self.label, action="open the escrow key"):
            self._session = open_user_session(self.module.token(self.label), pin)
            self._generation = self.module.generation

    def shared_secret(self, peer_point: bytes) -> bytes:
        with self._lock:
            if self._session is None or self._generation != self.module.generation:
                raise hw.PinRequiredError(f"the escrow key on token {self.label!r} needs the PIN again (the PKCS#11 "
                                          "module was re-initialised); restart the third party")
            with errors.translated(token=self.label, action="open an escrowed key"):
                keys = list(self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                                       Attribute.ID: self.key_id}))
                if not keys:
                    raise hw.NotFoundError(f"token {self.label!r} has no escrow key {self.key_id.hex()}")
                key = cast(DeriveMixin, keys[0])            # derive_key is mixed in by key type at run time
                secret = key.derive_key(KeyType.GENERIC_SECRET, 256, mechanism_param=(KDF.NULL, None, peer_point),
                                        template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True,
                                                  Attribute.TOKEN: False})
                return bytes(secret[Attribute.VALUE])

    def close(self) -> None:
        with self._lock:
            if self._session is not None and self._generation == self.module.generation:
                try:
                    self._session.close()
                except p11x.PKCS11Error:
                    pass                       # the token went away already: nothing to close
            self._session = None
