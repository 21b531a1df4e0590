"""The issuer's personalisation station: makes a blank card image into an issued card.

Everything happens through APDUs, as at a real personalisation machine: the card generates its
key pair itself, hands out only the public key, receives the certificate the scheme root made for
it, and closes personalisation, after which none of these commands works again.
"""
from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from semper.hardware import tlv
from semper.hardware.errors import SemperError
from semper.hardware.piv import CHUID, PivSession, Slot
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PERSO_CERT, PERSO_ISSUER, PERSO_PARAMS, PERSO_PIN, PERSO_PUK, PERSO_ROOT, PurseSession
from semper.hardware.simulator import SimulatedCard, create_card

from .scheme import ROLE_PSAM, ROLE_PURSE_CARD, Scheme

EUR = 978


class PersonalisationError(SemperError):
    """A card could not be personalised (keys, certificates, PINs written); the message says which step."""


@dataclass(frozen=True)
class CardProfile:
    pin: bytes
    puk: bytes
    card_number: bytes | None = None
    currency: int = EUR
    max_balance: int = 20000          # minor units: 200.00

    def check(self) -> None:
        if not (4 <= len(self.pin) <= 8 and self.pin.isdigit()):
            raise PersonalisationError("the PIN must be 4 to 8 digits")
        if not (len(self.puk) == 8 and self.puk.isdigit()):
            raise PersonalisationError("the PUK must be exactly 8 digits")
        if self.card_number is not None and len(self.card_number) != 8:
            raise PersonalisationError("the card number must be 16 hex digits")
        if not 0 < self.max_balance < 2**31:
            raise PersonalisationError("the maximum balance must be positive")
        if not 0 < self.currency < 1000:
            raise PersonalisationError("the currency must be an ISO 4217 numeric code (978 = EUR)")


def new_card_number() -> bytes:
    return bytes.fromhex("6799") + secrets.token_bytes(6)


@dataclass(frozen=True)
class IssuedCard:
    card_number: bytes
    piv_admin_key: bytes          # the PIV card management key (9B), kept by the issuer / holder

    @property
    def card_id(self) -> str:
        return self.card_number.hex().upper()


def personalise_purse_card(image: Path, scheme: Scheme, profile: CardProfile, *, sync: bool = True,
                           issuer_point: bytes | None = None) -> IssuedCard:
    """Create and issue a buyer card image: the e-purse and the PIV signature applet.

    ``issuer_point`` names the key whose load commands the purse accepts: the bank's issuer key in
    its token (``semper serve bank``); by default the scheme's local issuer key.
    """
    profile.check()
    card_number = profile.card_number or new_card_number()
    admin_key = secrets.token_bytes(16)
    card = _create(image, ["purse", "piv"], sync)
    try:
        purse = PurseSession(card)
        point = purse.generate_key()
        cert = scheme.certify(point, f"semper purse card {card_number.hex().upper()}", card_number.hex().upper(),
                              ROLE_PURSE_CARD)
        purse.put_perso(PERSO_PARAMS, struct.pack(">8sHI", card_number, profile.currency, profile.max_balance))
        purse.put_perso(PERSO_PIN, profile.pin)
        purse.put_perso(PERSO_PUK, profile.puk)
        purse.put_perso(PERSO_ROOT, scheme.root_point)
        purse.put_perso(PERSO_ISSUER, issuer_point or scheme.issuer_point)
        purse.put_perso(PERSO_CERT, cert.public_bytes(Encoding.DER))
        purse.end_personalisation()
        _personalise_piv(PivSession(card), scheme, card_number, admin_key)
    except BaseException:
        card.close()
        image.unlink(missing_ok=True)
        raise
    card.close()
    return IssuedCard(card_number, admin_key)


def _personalise_piv(piv: PivSession, scheme: Scheme, card_number: bytes, admin_key: bytes) -> None:
    """Keys 9A (authentication), 9C (signature) and 9D (key agreement) made on the card, certified."""
    holder = f"semper card holder {card_number.hex().upper()}"
    for slot, non_repudiation, agreement in ((Slot.AUTHENTICATION, False, False), (Slot.SIGNATURE, True, False),
                                             (Slot.KEY_MANAGEMENT, False, True)):
        point = piv.generate(slot)
        cert = scheme.certify(point, holder, card_number.hex().upper(), None, non_repudiation=non_repudiation,
                              key_agreement=agreement)
        piv.put_certificate(slot, cert.public_bytes(Encoding.DER))
    guid = (card_number * 2)[:16]
    fascn = bytes(17) + card_number
    piv.put_object(CHUID, tlv.encode(0x30, fascn) + tlv.encode(0x34, guid) + tlv.encode(0x35, b"20351231") +
                   tlv.encode(0x3E, b"") + tlv.encode(0xFE, b""))
    piv.put_perso(0x07, admin_key)
    piv.end_personalisation()


def personalise_psam(image: Path, scheme: Scheme, *, psam_id: bytes | None = None, currency: int = EUR,
                     sync: bool = True) -> bytes:
    """Create and issue a seller's PSAM card image; returns the PSAM id."""
    psam_id = psam_id or (bytes.fromhex("5053") + secrets.token_bytes(6))
    card = _create(image, ["psam"], sync)
    try:
        psam = PsamSession(card)
        point = psam.generate_key()
        cert = scheme.certify(point, f"semper PSAM {psam_id.hex().upper()}", psam_id.hex().upper(), ROLE_PSAM)
        psam.put_perso(1, struct.pack(">8sH", psam_id, currency))
        psam.put_perso(4, scheme.root_point)
        psam.put_perso(6, cert.public_bytes(Encoding.DER))
        psam.end_personalisation()
    except BaseException:
        card.close()
        image.unlink(missing_ok=True)
        raise
    card.close()
    return psam_id


def _create(image: Path, applets: list[str], sync: bool) -> SimulatedCard:
    if image.exists():
        raise PersonalisationError(f"{image} already exists; choose another path or delete it first")
    os.makedirs(image.parent, exist_ok=True)
    return create_card(image, applets, sync=sync)
