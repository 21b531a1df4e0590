"""The applet contract the card OS dispatches to, plus shared personalisation behaviour.

An applet is selected by AID, sees only well-formed commands (the OS has already parsed them,
collected chains and handles GET RESPONSE), and answers by returning response data or raising
CardError. Each command runs inside a store transaction that the OS commits on success and rolls
back on any error, so an applet cannot half-apply a command.
"""
from __future__ import annotations

from . import tlv
from .apdu import Command
from .crypto import check_point, generate_key
from .store import Store
from .sw import SW, CardError

STATE_PERSONALISATION = 1
STATE_ACTIVE = 2

CLA_ISO = 0x00
CLA_PROPRIETARY = 0x80

INS_PUT_PERSO = 0xE0
INS_GENERATE_KEY = 0xE2
INS_END_PERSO = 0xEE


class Applet:
    """Base class; subclasses set AID and NAME and implement ``process``."""

    AID: bytes = b""
    NAME: str = ""
    LABEL: str = ""

    def __init__(self, store: Store) -> None:
        self.store = store

    # lifecycle hooks ---------------------------------------------------------------------
    @classmethod
    def install(cls, store: Store) -> None:
        """Write the applet's initial persistent state (inside the OS's transaction)."""
        store.put_int(f"{cls.NAME}/state", STATE_PERSONALISATION)

    def select(self) -> bytes:
        """Answer to SELECT: an FCI template with the AID and label."""
        return tlv.encode(0x6F, tlv.encode(0x84, self.AID) + tlv.encode(0xA5, tlv.encode(0x50, self.LABEL.encode())))

    def deselect(self) -> None:
        pass

    def reset(self) -> None:
        """Power-off or reset: forget all transient state (PIN validation, sessions)."""

    def process(self, cmd: Command) -> bytes:
        raise CardError(SW.INS_NOT_SUPPORTED)

    # helpers --------------------------------------------------------------------------------
    @property
    def state(self) -> int:
        return self.store.get_int(f"{self.NAME}/state")

    def k(self, part: str) -> str:
        return f"{self.NAME}/{part}"

    def require_active(self) -> None:
        if self.state != STATE_ACTIVE:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "applet not personalised")

    def require_personalisation(self) -> None:
        if self.state != STATE_PERSONALISATION:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "personalisation is closed")

    @staticmethod
    def require_p1p2(cmd: Command, p1: int, p2: int) -> None:
        if cmd.p1 != p1 or cmd.p2 != p2:
            raise CardError(SW.INCORRECT_P1P2)

    @staticmethod
    def require_no_data(cmd: Command) -> None:
        if cmd.data:
            raise CardError(SW.WRONG_LENGTH, "no data expected")

    @staticmethod
    def require_cla(cmd: Command, cla: int) -> None:
        if cmd.header[0] != cla:
            raise CardError(SW.CLA_NOT_SUPPORTED)


class KeyPairPersonalisation(Applet):
    """An applet with one key: GENERATE KEY, PUT PERSONALISATION DATA and END PERSONALISATION.

    The key pair is generated on the card and only its public point leaves; the issuer then
    writes back a certificate for it. Personalisation items are tag-numbered (P1 of PUT PERSO).
    """

    KEY_PRIVATE = "key/private"
    KEY_PUBLIC = "key/public"

    def perso(self, cmd: Command, items: dict[int, tuple[str, int | None]]) -> bytes:
        """Handle the three personalisation instructions; ``items`` maps P1 -> (store key, length)."""
        self.require_cla(cmd, CLA_PROPRIETARY)
        self.require_personalisation()
        if cmd.ins == INS_GENERATE_KEY:
            self.require_p1p2(cmd, 0, 0)
            self.require_no_data(cmd)
            scalar, point = generate_key()
            self.store.put(self.k(KeyPairPersonalisation.KEY_PRIVATE), scalar)
            self.store.put(self.k(KeyPairPersonalisation.KEY_PUBLIC), point)
            return point
        if cmd.ins == INS_PUT_PERSO:
            if cmd.p2 != 0 or cmd.p1 not in items:
                raise CardError(SW.INCORRECT_P1P2)
            key, length = items[cmd.p1]
            if not cmd.data or (length is not None and len(cmd.data) != length):
                raise CardError(SW.WRONG_LENGTH)
            if key.endswith("_point"):
                check_point(cmd.data)
            self.store.put(self.k(key), cmd.data)
            return b""
        if cmd.ins == INS_END_PERSO:
            self.require_p1p2(cmd, 0, 0)
            self.require_no_data(cmd)
            missing = [key for key, _ in items.values() if self.store.get(self.k(key)) is None]
            if self.store.get(self.k(KeyPairPersonalisation.KEY_PRIVATE)) is None:
                missing.append("key pair")
            if missing:
                raise CardError(SW.CONDITIONS_NOT_SATISFIED, "missing: " + ", ".join(missing))
            self.store.put_int(self.k("state"), STATE_ACTIVE)
            return b""
        raise CardError(SW.INS_NOT_SUPPORTED)
