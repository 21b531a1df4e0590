"""A PIV applet (NIST SP 800-73-4 subset) so that OpenSC and everything on top of it can use the card.

What OpenSC's PIV driver needs, and no more: SELECT with the application property template, GET DATA
for the discovery object, CHUID and certificate objects, VERIFY / CHANGE REFERENCE DATA / RESET RETRY
COUNTER for PIN (80) and PUK (81), GENERAL AUTHENTICATE with ECDSA P-256 over a hash (and AES-128
challenge-response for the card management key 9B), GENERATE ASYMMETRIC KEY PAIR and PUT DATA.

The PIN and PUK are the card's own (shared with the purse), so a holder has one PIN per card. Key 9C
(digital signature) is "PIN always": each signature needs a VERIFY right before it. Managing the card
(GENERATE, PUT DATA) needs the management key 9B or, as a deliberate simplification for a holder who
registers their own certificate, the verified PIN.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .. import crypto, tlv
from ..apdu import Command
from ..applet import CLA_PROPRIETARY, INS_END_PERSO, INS_PUT_PERSO, STATE_ACTIVE, STATE_PERSONALISATION, Applet
from ..pin import Pin
from ..sw import SW, CardError

if TYPE_CHECKING:
    from ..store import Store

AID = bytes.fromhex("A000000308000010000100")
PIX = AID[5:]

INS_VERIFY = 0x20
INS_CHANGE_REFERENCE_DATA = 0x24
INS_RESET_RETRY_COUNTER = 0x2C
INS_GENERATE = 0x47
INS_GENERAL_AUTHENTICATE = 0x87
INS_GET_DATA = 0xCB
INS_PUT_DATA = 0xDB

KEY_PIN = 0x80
KEY_PUK = 0x81
ADMIN_KEY = 0x9B
ALG_AES128 = 0x08
ALG_ECC_P256 = 0x11
ALG_ECC_P384 = 0x14

SLOTS = (0x9A, 0x9C, 0x9D, 0x9E)
KEY_AGREEMENT_SLOTS = {0x9D}
PIN_ONCE = {0x9A, 0x9D}
PIN_ALWAYS = {0x9C}

DISCOVERY = b"\x7E"
CHUID = bytes.fromhex("5FC102")
CERT_OBJECTS = {0x9A: bytes.fromhex("5FC105"), 0x9C: bytes.fromhex("5FC10A"), 0x9D: bytes.fromhex("5FC10B"),
                0x9E: bytes.fromhex("5FC101")}
WRITABLE = {CHUID, *CERT_OBJECTS.values()}

PERSO_PIN = 0x02
PERSO_PUK = 0x03
PERSO_ADMIN_KEY = 0x07


def _pad_reference(value: bytes) -> bytes:
    """PIV sends PIN/PUK as 8 bytes padded with FF; strip the padding, refuse anything else."""
    if len(value) != 8:
        raise CardError(SW.WRONG_LENGTH, "PIN/PUK reference data must be 8 bytes")
    stripped = value.rstrip(b"\xff")
    if b"\xff" in stripped:
        raise CardError(SW.WRONG_DATA, "FF inside the PIN")
    return stripped


class PivApplet(Applet):
    AID = AID
    NAME = "piv"
    LABEL = "semper PIV"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.pin = Pin(store, "card/pin", 4, 8)
        self.puk = Pin(store, "card/puk", 8, 8)
        self._pin_always_ok = False      # a VERIFY right before a 9C signature
        self._admin = False              # 9B authenticated in this session
        self._challenge: bytes | None = None

    def reset(self) -> None:
        self.pin.validated = False
        self.puk.validated = False
        self._pin_always_ok = False
        self._admin = False
        self._challenge = None

    deselect = reset

    # ---- SELECT: application property template ---------------------------------------------
    def select(self) -> bytes:
        body = (tlv.encode(0x4F, PIX) + tlv.encode(0x79, tlv.encode(0x4F, AID[:5])) +
                tlv.encode(0x50, self.LABEL.encode()) +
                tlv.encode(0xAC, tlv.encode(0x80, bytes([ALG_ECC_P256])) + tlv.encode(0x06, b"\x00")))
        return tlv.encode(0x61, body)

    # ---- dispatch ------------------------------------------------------------------------------
    def process(self, cmd: Command) -> bytes:
        if cmd.header[0] == CLA_PROPRIETARY and cmd.ins in (INS_PUT_PERSO, INS_END_PERSO):
            return self._perso(cmd)
        fn = {
            INS_VERIFY: self._verify,
            INS_CHANGE_REFERENCE_DATA: self._change,
            INS_RESET_RETRY_COUNTER: self._reset_retry,
            INS_GENERATE: self._generate,
            INS_GENERAL_AUTHENTICATE: self._general_authenticate,
            INS_GET_DATA: self._get_data,
            INS_PUT_DATA: self._put_data,
        }.get(cmd.ins)
        if fn is None:
            raise CardError(SW.INS_NOT_SUPPORTED)
        self.require_cla(cmd, 0x00)
        return fn(cmd)

    def _may_manage(self) -> None:
        if self.state == STATE_PERSONALISATION or self._admin or self.pin.validated:
            return
        raise CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "management key or PIN needed")

    # ---- personalisation (proprietary, before the card is issued) --------------------------------
    def _perso(self, cmd: Command) -> bytes:
        self.require_personalisation()
        if cmd.ins == INS_END_PERSO:
            self.require_p1p2(cmd, 0, 0)
            self.require_no_data(cmd)
            if not self.pin.is_set or not self.puk.is_set or self.store.get(self.k("admin_key")) is None:
                raise CardError(SW.CONDITIONS_NOT_SATISFIED, "PIN, PUK and management key must be set")
            self.store.put_int(self.k("state"), STATE_ACTIVE)
            return b""
        if cmd.p2 != 0:
            raise CardError(SW.INCORRECT_P1P2)
        if cmd.p1 == PERSO_PIN:
            self.pin.set(cmd.data, 3)
        elif cmd.p1 == PERSO_PUK:
            self.puk.set(cmd.data, 3)
        elif cmd.p1 == PERSO_ADMIN_KEY:
            if len(cmd.data) != 16:
                raise CardError(SW.WRONG_LENGTH, "AES-128 management key expected")
            self.store.put(self.k("admin_key"), cmd.data)
        else:
            raise CardError(SW.INCORRECT_P1P2)
        return b""

    # ---- PIN and PUK ---------------------------------------------------------------------------
    def _ref(self, p2: int) -> Pin:
        if p2 == KEY_PIN:
            return self.pin
        if p2 == KEY_PUK:
            return self.puk
        raise CardError(SW.REFERENCE_NOT_FOUND if p2 in (0x00, 0x96) else SW.INCORRECT_P1P2)

    def _verify(self, cmd: Command) -> bytes:
        if cmd.p1 == 0xFF:                               # reset the security status
            ref = self._ref(cmd.p2)
            self.require_no_data(cmd)
            ref.validated = False
            self._pin_always_ok = False
            return b""
        if cmd.p1 != 0x00:
            raise CardError(SW.INCORRECT_P1P2)
        ref = self._ref(cmd.p2)
        if not cmd.data:
            ref.status()
            return b""
        value = _pad_reference(cmd.data)
        ref.check_format(value)                         # malformed: 6A80, no try spent
        try:
            ref.verify(value)
        except CardError:
            if ref is self.pin:
                self._pin_always_ok = False
            raise
        if ref is self.pin:
            self._pin_always_ok = True
        return b""

    def _change(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x00:
            raise CardError(SW.INCORRECT_P1P2)
        ref = self._ref(cmd.p2)
        if len(cmd.data) != 16:
            raise CardError(SW.WRONG_LENGTH, "old and new reference data, 8 bytes each")
        old, new = _pad_reference(cmd.data[:8]), _pad_reference(cmd.data[8:])
        ref.check_format(old)
        ref.check_format(new)
        ref.verify(old)
        ref.set(new, ref.max_tries)
        return b""

    def _reset_retry(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 != KEY_PIN:
            raise CardError(SW.INCORRECT_P1P2)
        if len(cmd.data) != 16:
            raise CardError(SW.WRONG_LENGTH, "PUK and new PIN, 8 bytes each")
        puk, new = _pad_reference(cmd.data[:8]), _pad_reference(cmd.data[8:])
        self.puk.check_format(puk)
        self.pin.check_format(new)
        self.puk.verify(puk)
        self.pin.set(new, self.pin.max_tries)
        return b""

    # ---- data objects -----------------------------------------------------------------------------
    def _object_tag(self, cmd: Command) -> tuple[bytes, bytes]:
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF):
            raise CardError(SW.INCORRECT_P1P2)
        if len(cmd.data) < 3 or cmd.data[0] != 0x5C or cmd.data[1] + 2 > len(cmd.data) or cmd.data[1] not in (1, 3):
            raise CardError(SW.WRONG_DATA, "expected 5C tag list")
        n = cmd.data[1]
        return cmd.data[2:2 + n], cmd.data[2 + n:]

    def _get_data(self, cmd: Command) -> bytes:
        tag, rest = self._object_tag(cmd)
        if rest:
            raise CardError(SW.WRONG_DATA)
        if tag == DISCOVERY:
            return tlv.encode(0x7E, tlv.encode(0x4F, AID) + tlv.encode(0x5F2F, b"\x40\x00"))
        value = self.store.get(self.k("obj/" + tag.hex()))
        if value is None:
            raise CardError(SW.FILE_NOT_FOUND)
        return value

    def _put_data(self, cmd: Command) -> bytes:
        self._may_manage()
        tag, rest = self._object_tag(cmd)
        if tag not in WRITABLE:
            raise CardError(SW.FILE_NOT_FOUND if tag != DISCOVERY else SW.SECURITY_STATUS_NOT_SATISFIED)
        if len(rest) < 2 or rest[0] != 0x53:
            raise CardError(SW.WRONG_DATA, "object must be a 53 template")
        fields = tlv.decode(rest)           # exactly one 53 TLV, nothing after it
        if set(fields) != {0x53}:
            raise CardError(SW.WRONG_DATA)
        key = self.k("obj/" + tag.hex())
        if not fields[0x53]:
            self.store.delete(key)          # an empty object deletes it
        else:
            self.store.put(key, rest)
        return b""

    # ---- keys -------------------------------------------------------------------------------------
    def _generate(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 not in SLOTS:
            raise CardError(SW.INCORRECT_P1P2)
        self._may_manage()
        fields = tlv.decode(cmd.data)
        template = tlv.require(fields, 0xAC)
        params = tlv.decode(template)
        alg = tlv.require(params, 0x80, 1)[0]
        if alg != ALG_ECC_P256:
            raise CardError(SW.WRONG_DATA, "only ECC P-256 (11) is supported")
        scalar, point = crypto.generate_key()
        self.store.put(self.k(f"key/{cmd.p2:02x}"), scalar)
        self.store.put(self.k(f"pub/{cmd.p2:02x}"), point)
        return tlv.encode(0x7F49, tlv.encode(0x86, point))

    def _general_authenticate(self, cmd: Command) -> bytes:
        fields = tlv.decode(cmd.data)
        template = tlv.decode(tlv.require(fields, 0x7C))
        if cmd.p2 == ADMIN_KEY:
            return self._admin_auth(cmd, template)
        if cmd.p1 != ALG_ECC_P256 or cmd.p2 not in SLOTS:
            raise CardError(SW.INCORRECT_P1P2)
        scalar = self.store.get(self.k(f"key/{cmd.p2:02x}"))
        if scalar is None:
            raise CardError(SW.REFERENCE_NOT_FOUND, "no key in this slot")
        if 0x82 not in template or template[0x82] != b"" or (0x81 in template) == (0x85 in template):
            raise CardError(SW.WRONG_DATA, "expected 7C { 82 00, 81 hash } or 7C { 82 00, 85 point }")
        if 0x85 in template:
            return self._key_agreement(cmd.p2, scalar, template[0x85])
        digest = template[0x81]
        if not 1 <= len(digest) <= 64:
            raise CardError(SW.WRONG_DATA, "hash of 1 to 64 bytes")
        if cmd.p2 in PIN_ALWAYS:
            if not (self.pin.validated and self._pin_always_ok):
                raise CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "key 9C needs the PIN right before")
            self._pin_always_ok = False
        elif cmd.p2 in PIN_ONCE and not self.pin.validated:
            raise CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "PIN needed")
        # ECDSA uses the leftmost 256 bits of the hash; shorter input is taken as a smaller number
        digest = digest[:32].rjust(32, b"\x00")
        signature = crypto.sign_digest(scalar, digest)
        return tlv.encode(0x7C, tlv.encode(0x82, signature))

    def _key_agreement(self, slot: int, scalar: bytes, peer_point: bytes) -> bytes:
        """ECDH with the key management key (9D): answers the shared x coordinate, PIN once."""
        if slot not in KEY_AGREEMENT_SLOTS:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "key agreement only with key 9D")
        crypto.check_point(peer_point)
        if not self.pin.validated:
            raise CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "PIN needed")
        return tlv.encode(0x7C, tlv.encode(0x82, crypto.ecdh(scalar, peer_point)))

    def _admin_auth(self, cmd: Command, template: dict[int, bytes]) -> bytes:
        if cmd.p1 != ALG_AES128:
            raise CardError(SW.INCORRECT_P1P2, "management key is AES-128 (08)")
        key = self.store.get(self.k("admin_key"))
        if key is None:
            raise CardError(SW.REFERENCE_DATA_NOT_USABLE)
        if 0x81 in template and template[0x81] == b"":      # request a challenge
            self._challenge = crypto.random_bytes(16)
            self._admin = False
            return tlv.encode(0x7C, tlv.encode(0x81, self._challenge))
        if 0x82 in template:                                  # the host's response
            challenge, self._challenge = self._challenge, None
            if challenge is None:
                raise CardError(SW.CONDITIONS_NOT_SATISFIED, "ask for a challenge first")
            enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
            expected = enc.update(challenge) + enc.finalize()
            import hmac
            if not hmac.compare_digest(expected, template[0x82]):
                raise CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "management key authentication failed")
            self._admin = True
            return b""
        raise CardError(SW.WRONG_DATA)
