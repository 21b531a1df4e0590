"""The third party's extra token keys: the escrow key (ECDH in the token) and the time-stamping key.

The signing key is the token's provisioned key (``hsm/softhsm.py``). Two more P-256 key pairs are
generated *on* the token: one with only CKA_DERIVE (escrow: sealed keys are opened by ECDH in the
token, so the escrow private key never exists outside it) and one with only CKA_SIGN (the RFC 3161
time-stamping key, which must be separate because its certificate may carry nothing but the
time-stamping extended key usage). Keys are found again by CKA_ID (SHA-1 of the public point).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import pkcs11.exceptions as p11x
from pkcs11 import KDF, Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from hardware import errors as hw


def _open(token: object, pin: bytes, rw: bool = False) -> object:
    """A session logged in as the user; PKCS#11 logins belong to the application, so when another
    session of this process is logged in already, a new session is logged in too."""
    try:
        return token.open(rw=rw, user_pin=pin.decode("utf-8"))  # type: ignore[attr-defined]
    except p11x.UserAlreadyLoggedIn:
        return token.open(rw=rw)  # type: ignore[attr-defined]


def generate_key(module: object, label: str, pin: bytes, key_label: str, *, derive: bool) -> tuple[bytes, bytes]:
    """A new P-256 key pair on token ``label``: (key id, public point). ``derive`` picks ECDH vs signing."""
    from hsm import errors
    from hsm.signer import ec_point, key_id_for
    token = module.token(label)  # type: ignore[attr-defined]
    with errors.translated(token=label, action=f"generate the {key_label}"), \
            _open(token, pin, rw=True) as session:  # type: ignore[attr-defined]
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
class TokenEscrowKey:
    """ECDH with the escrow key in the token; one session, one derivation at a time."""

    module: object
    label: str
    key_id: bytes
    point: bytes

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._session = None
        self._generation = -1

    def login(self, pin: bytes) -> None:
        from hsm import errors
        with self._lock, errors.translated(token=self.label, action="open the escrow key"):
            self._session = _open(self.module.token(self.label), pin)  # type: ignore[attr-defined]
            self._generation = self.module.generation  # type: ignore[attr-defined]

    def shared_secret(self, peer_point: bytes) -> bytes:
        from hsm import errors
        with self._lock:
            if self._session is None or self._generation != self.module.generation:  # type: ignore[attr-defined]
                raise hw.PinRequiredError(f"the escrow key on token {self.label!r} needs the PIN again (the PKCS#11 "
                                          "module was re-initialised); restart the third party")
            with errors.translated(token=self.label, action="open an escrowed key"):
                keys = list(self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,  # type: ignore[attr-defined]
                                                       Attribute.ID: self.key_id}))
                if not keys:
                    raise hw.NotFoundError(f"token {self.label!r} has no escrow key {self.key_id.hex()}")
                secret = keys[0].derive_key(KeyType.GENERIC_SECRET, 256, mechanism_param=(KDF.NULL, None, peer_point),
                                            template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True,
                                                      Attribute.TOKEN: False})
                return bytes(secret[Attribute.VALUE])

    def close(self) -> None:
        with self._lock:
            if self._session is not None and self._generation == self.module.generation:  # type: ignore[attr-defined]
                try:
                    self._session.close()
                except p11x.PKCS11Error:
                    pass                       # the token went away already: nothing to close
            self._session = None
