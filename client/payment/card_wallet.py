"""The e-cash wallet's key on the buyer's card: ECIES with the card's PIV key-agreement key (9D).

Why the card: the wallet holds bearer value, and the buyer's card is the one device every buyer
has; its 9D key (P-256, certified with keyAgreement) never leaves the card, so a copied wallet file
is useless without the card *and* its PIN.

How (ECIES, one ephemeral key per save, so saving needs neither the card's private key nor a PIN):

    seal:  e  = fresh P-256 key on the host;  Z = ECDH(e, card 9D public key)
           kek = HKDF-SHA256(Z, info = LABEL || E || Q)      E = e's point, Q = the card's 9D point
           data key K (random, 32 bytes) wrapped under kek with AES key wrap (RFC 3394)
           contents under K with AES-256-GCM
    open:  Z = the card's ECDH(9D, E) after the PIN (through the party's PIN entry), then the same

Binding E and Q into the HKDF info makes a file whose ephemeral point or recipient was changed
fail to unwrap. The file names the card key it is sealed to (``recipient``: SHA-256 of Q), so
the wrong card is refused with a clear error *before* any PIN is asked.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from semper.hardware import errors as hw
from semper.hardware.piv import PivSession, Slot

from .errors import InstrumentError, PaymentError, ProtocolError
from .module import PinEntry
from .wire import b64, unb64

if TYPE_CHECKING:
    from pathlib import Path

    from .module import PartyContext
    from .wallet import Wallet

SCHEME = "piv-9d-ecdh-p256"
LABEL = b"semper wallet key v1 (PIV 9D ECDH, HKDF-SHA256, AES key wrap)"
PURPOSE = "open your e-cash wallet (its coins are sealed to your card)"


class WrongCardError(InstrumentError):
    """The wallet is sealed to another card's key (or is not sealed to a card at all)."""


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _kek(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=LABEL + ephemeral + recipient).derive(shared)


class CardWalletKey:
    """The wallet key as the card's PIV key 9D: the host seals, the card's ECDH opens.

    ``enter_pin(purpose, session)`` is the party's PIN entry (``PartyContext.enter_pin``; for users
    the TINGUIN's ``tinguin_pin``): it is called only when the card says the PIN is needed, so a
    card verified earlier in its session is not asked again. ``select`` re-selects the PIV applet
    when it shares the card with the purse (``PartyContext.select_signer``).
    """

    def __init__(self, piv: PivSession, enter_pin: PinEntry | None, *,
                 select: Callable[[], Any] | None = None, purpose: str = PURPOSE) -> None:
        self.piv = piv
        self.enter_pin = enter_pin
        self.select = select
        self.purpose = purpose
        if select is not None:
            select()
        try:
            cert = x509.load_der_x509_certificate(piv.certificate(Slot.KEY_MANAGEMENT))
        except hw.NotFoundError:
            raise InstrumentError("the card has no key-agreement key (PIV 9D certificate); it cannot hold a wallet "
                                  "key") from None
        except ValueError:
            raise InstrumentError("the card's PIV 9D certificate is not a readable X.509 certificate") from None
        pub = cert.public_key()
        try:
            agreement = cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_agreement
        except x509.ExtensionNotFound:
            agreement = False
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1) or not agreement:
            raise InstrumentError("the card's PIV 9D key is not a P-256 key certified for key agreement")
        self._public = pub
        self.point = _point(pub)
        self.recipient = hashlib.sha256(self.point).hexdigest()

    @classmethod
    def for_party(cls, piv: PivSession, ctx: PartyContext) -> CardWalletKey:
        """The card key with the party's own PIN entry and PIV re-selection (no other PIN path)."""
        return cls(piv, ctx.enter_pin, select=ctx.select_signer)

    def seal(self, plaintext: bytes, aad: bytes) -> dict[str, str]:
        eph = ec.generate_private_key(ec.SECP256R1())
        e_point = _point(eph.public_key())
        kek = _kek(eph.exchange(ec.ECDH(), self._public), e_point, self.point)
        data_key, nonce = os.urandom(32), os.urandom(12)
        return {"scheme": SCHEME, "recipient": self.recipient, "ephemeral": b64(e_point),
                "wrapped": b64(aes_key_wrap(kek, data_key)), "nonce": b64(nonce),
                "ciphertext": b64(AESGCM(data_key).encrypt(nonce, plaintext, aad))}

    def open(self, sealed: object, aad: bytes) -> bytes:
        if not isinstance(sealed, dict) or sealed.get("scheme") != SCHEME:
            raise WrongCardError("this wallet is not sealed to a card's key-agreement key (a token wallet?); "
                                 "open it with the key it was sealed to")
        if set(sealed) != {"scheme", "recipient", "ephemeral", "wrapped", "nonce", "ciphertext"}:
            raise ProtocolError("a card-sealed wallet has scheme, recipient, ephemeral, wrapped, nonce and ciphertext")
        if sealed["recipient"] != self.recipient:
            raise WrongCardError(f"this wallet is sealed to another card (key {str(sealed['recipient'])[:16]}…), "
                                 f"not to the card in the reader (key {self.recipient[:16]}…)")
        e_point = unb64(sealed["ephemeral"], "ephemeral point", 65)
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), e_point)
        except ValueError:
            raise ProtocolError("the wallet's ephemeral key is not a P-256 point") from None
        kek = _kek(self._agree(e_point), e_point, self.point)
        try:
            data_key = aes_key_unwrap(kek, unb64(sealed["wrapped"], "wrapped key", 64))
            return AESGCM(data_key).decrypt(unb64(sealed["nonce"], "nonce", 12),
                                            unb64(sealed["ciphertext"], "ciphertext"), aad)
        except (InvalidUnwrap, InvalidTag, ValueError):
            raise ProtocolError("the sealed wallet was altered or is for another key") from None

    def _agree(self, e_point: bytes) -> bytes:
        """ECDH(9D, E) on the card; the PIN through the party's PIN entry when the card asks for it.

        A wrong PIN surfaces as the card's own ``hardware.errors.WrongPinError`` (tries left), a
        cancelled entry as the PIN entry's error: the wallet stays closed either way.
        """
        if self.select is not None:
            self.select()
        try:
            return self.piv.key_agreement(e_point, Slot.KEY_MANAGEMENT)
        except hw.PinRequiredError:
            pass
        if self.enter_pin is None:
            raise PaymentError(f"the PIN is needed to {self.purpose}, but nothing can ask for it here")
        self.enter_pin(self.purpose, self.piv)
        if self.select is not None:
            self.select()
        return self.piv.key_agreement(e_point, Slot.KEY_MANAGEMENT)


def open_card_wallet(path: Path, piv: PivSession, ctx: PartyContext, name: str = "wallet") -> Wallet:
    """The party's wallet at ``path`` sealed to its card (asks for the PIN once when the file exists)."""
    from .wallet import Wallet
    return Wallet(path, CardWalletKey.for_party(piv, ctx), name)
