"""Client for the PIV applet (NIST SP 800-73-4 subset), and the PIV implementation of the signer.

PIN and PUK go to the card as 8 bytes padded with FF, as PIV requires; nothing keeps them.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import errors, tlv
from .iso7816 import AID, CLA_ISO, CLA_PROPRIETARY, INS, Apdu
from .signer import PinStatus
from .transport import ApduSession, Connection


class Slot(IntEnum):
    AUTHENTICATION = 0x9A
    SIGNATURE = 0x9C
    KEY_MANAGEMENT = 0x9D
    CARD_AUTHENTICATION = 0x9E


OBJECT_IDS = {Slot.AUTHENTICATION: bytes.fromhex("5FC105"), Slot.SIGNATURE: bytes.fromhex("5FC10A"),
              Slot.KEY_MANAGEMENT: bytes.fromhex("5FC10B"), Slot.CARD_AUTHENTICATION: bytes.fromhex("5FC101")}
CHUID = bytes.fromhex("5FC102")
DISCOVERY = b"\x7E"
ALG_ECC_P256 = 0x11
ALG_AES128 = 0x08
PIN_REF, PUK_REF = 0x80, 0x81


def _padded(secret: bytes) -> bytes:
    if not 1 <= len(secret) <= 8:
        raise errors.InvalidInputError("a PIV PIN or PUK has 1 to 8 characters")
    return bytes(secret).ljust(8, b"\xff")


@dataclass(frozen=True)
class PivStatus:
    pin: PinStatus
    puk_tries: int | None


class PivSession:
    def __init__(self, connection: Connection, *, select: bool = True) -> None:
        self.apdu = ApduSession(connection)
        self._certs: dict[Slot, bytes] = {}        # read once per session; semper writes them through it
        if select:
            self.select()

    def select(self) -> bytes:
        return self.apdu.select(AID.PIV, "select PIV")

    # ---- data objects ----------------------------------------------------------------------
    def get_object(self, object_id: bytes) -> bytes:
        data = bytes([0x5C, len(object_id)]) + object_id
        return self.apdu.send(Apdu(CLA_ISO, INS.GET_DATA, 0x3F, 0xFF, data, 0), "read a PIV object")

    def put_object(self, object_id: bytes, content: bytes) -> None:
        self._certs.clear()
        data = bytes([0x5C, len(object_id)]) + object_id + tlv.encode(0x53, content)
        self.apdu.send(Apdu(CLA_ISO, INS.PUT_DATA, 0x3F, 0xFF, data), "write a PIV object")

    def certificate(self, slot: Slot) -> bytes:
        """The slot's certificate. Read from the card once per session (every statement embeds it and
        reading it costs several APDUs); writing or generating through this session forgets it."""
        cached = self._certs.get(slot)
        if cached is not None:
            return cached
        obj = tlv.decode(self.get_object(OBJECT_IDS[slot]))
        inner = tlv.decode(obj.get(0x53, b""))
        if 0x70 not in inner:
            raise errors.NotFoundError(f"no certificate in PIV slot {slot.value:02X}")
        self._certs[slot] = inner[0x70]
        return inner[0x70]

    def put_certificate(self, slot: Slot, der: bytes) -> None:
        self.put_object(OBJECT_IDS[slot], tlv.encode(0x70, der) + tlv.encode(0x71, b"\x00") + tlv.encode(0xFE, b""))

    # ---- PIN -------------------------------------------------------------------------------
    def verify_pin(self, pin: bytes) -> None:
        self.apdu.send(Apdu(CLA_ISO, INS.VERIFY, 0x00, PIN_REF, _padded(pin)), "verify the PIN")

    def verify_puk(self, puk: bytes) -> None:
        self.apdu.send(Apdu(CLA_ISO, INS.VERIFY, 0x00, PUK_REF, _padded(puk)), "verify the PUK")

    def _status(self, ref: int) -> PinStatus:
        try:
            self.apdu.send(Apdu(CLA_ISO, INS.VERIFY, 0x00, ref), "PIN status")
            return PinStatus(True, None)
        except errors.WrongPinError as e:
            return PinStatus(False, e.tries_left, e.tries_left == 0)
        except errors.PinBlockedError:
            return PinStatus(False, 0, True)

    def pin_status(self) -> PinStatus:
        return self._status(PIN_REF)

    def logout(self) -> None:
        """Forget the PIN verification (VERIFY with P1 = FF)."""
        self.apdu.send(Apdu(CLA_ISO, INS.VERIFY, 0xFF, PIN_REF), "reset the PIN status")

    def change_pin(self, old: bytes, new: bytes) -> None:
        self.apdu.send(Apdu(CLA_ISO, INS.CHANGE_REFERENCE_DATA, 0x00, PIN_REF, _padded(old) + _padded(new)),
                       "change the PIN")

    def change_puk(self, old: bytes, new: bytes) -> None:
        self.apdu.send(Apdu(CLA_ISO, INS.CHANGE_REFERENCE_DATA, 0x00, PUK_REF, _padded(old) + _padded(new)),
                       "change the PUK")

    def unblock_pin(self, puk: bytes, new_pin: bytes) -> None:
        self.apdu.send(Apdu(CLA_ISO, INS.RESET_RETRY_COUNTER, 0x00, PIN_REF, _padded(puk) + _padded(new_pin)),
                       "unblock the PIN")

    # ---- keys ------------------------------------------------------------------------------
    def authenticate_admin(self, key: bytes) -> None:
        """Card management key 9B (AES-128): answer the card's challenge."""
        if len(key) != 16:
            raise errors.InvalidInputError("the management key is 16 bytes (AES-128)")
        ask = tlv.encode(0x7C, tlv.encode(0x81, b""))
        ans = tlv.decode(self.apdu.send(Apdu(CLA_ISO, INS.GENERAL_AUTHENTICATE, ALG_AES128, 0x9B, ask, 0),
                                        "management key challenge"))
        challenge = tlv.decode(ans[0x7C])[0x81]
        enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        response = enc.update(challenge) + enc.finalize()
        try:
            self.apdu.send(Apdu(CLA_ISO, INS.GENERAL_AUTHENTICATE, ALG_AES128, 0x9B,
                                tlv.encode(0x7C, tlv.encode(0x82, response))), "management key response")
        except errors.PinRequiredError as e:
            raise errors.NotAuthenticError("the card rejected the PIV management key", e.sw) from None

    def generate(self, slot: Slot) -> bytes:
        self._certs.pop(slot, None)
        data = tlv.encode(0xAC, tlv.encode(0x80, bytes([ALG_ECC_P256])))
        ans = tlv.decode(self.apdu.send(Apdu(CLA_ISO, INS.GENERATE_ASYMMETRIC_KEY_PAIR, 0x00, slot.value, data, 0),
                                        "generate a key pair"))
        point = tlv.decode(ans[0x7F49])[0x86]
        return point

    def sign_digest(self, slot: Slot, digest: bytes) -> bytes:
        data = tlv.encode(0x7C, tlv.encode(0x82, b"") + tlv.encode(0x81, digest))
        ans = tlv.decode(self.apdu.send(Apdu(CLA_ISO, INS.GENERAL_AUTHENTICATE, ALG_ECC_P256, slot.value, data, 0),
                                        "sign on the card"))
        return tlv.decode(ans[0x7C])[0x82]

    def key_agreement(self, peer_point: bytes, slot: Slot = Slot.KEY_MANAGEMENT) -> bytes:
        """ECDH on the card with key 9D: the shared secret (x coordinate); the private key stays on the card."""
        data = tlv.encode(0x7C, tlv.encode(0x82, b"") + tlv.encode(0x85, peer_point))
        ans = tlv.decode(self.apdu.send(Apdu(CLA_ISO, INS.GENERAL_AUTHENTICATE, ALG_ECC_P256, slot.value, data, 0),
                                        "key agreement on the card"))
        return tlv.decode(ans[0x7C])[0x82]

    # ---- personalisation -------------------------------------------------------------------
    def put_perso(self, item: int, value: bytes) -> None:
        self.apdu.send(Apdu(CLA_PROPRIETARY, INS.PUT_PERSO, item, 0, value), "personalise PIV")

    def end_personalisation(self) -> None:
        self.apdu.send(Apdu(CLA_PROPRIETARY, INS.END_PERSO, 0, 0), "close PIV personalisation")


class PivSigner:
    """The signer protocol over a PIV slot (9C by default: digital signature, PIN always)."""

    def __init__(self, session: PivSession, slot: Slot = Slot.SIGNATURE, label: str = "PIV card") -> None:
        self.session = session
        self.slot = slot
        self.label = label

    def certificate(self) -> bytes:
        return self.session.certificate(self.slot)

    def public_point(self) -> bytes:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        cert = x509.load_der_x509_certificate(self.certificate())
        return cert.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def pin_status(self) -> PinStatus:
        return self.session.pin_status()

    def verify_pin(self, pin: bytes) -> None:
        self.session.verify_pin(pin)

    def sign_digest(self, digest: bytes) -> bytes:
        return self.session.sign_digest(self.slot, digest)
