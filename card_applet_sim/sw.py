"""Status words the card answers with, and the exception an applet raises to answer one.

Applets never build raw status words by hand: they raise :class:`CardError` with a member of
:class:`SW`, and the card OS turns it into the two trailing bytes of the response and rolls back
the APDU's transaction.
"""
from __future__ import annotations

from enum import IntEnum


class SW(IntEnum):
    OK = 0x9000
    WARNING_STATE_UNCHANGED = 0x6200
    WRONG_LENGTH = 0x6700
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    LAST_COMMAND_OF_CHAIN_EXPECTED = 0x6883
    COMMAND_CHAINING_NOT_SUPPORTED = 0x6884
    COMMAND_INCOMPATIBLE = 0x6981
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_NOT_USABLE = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    INCORRECT_DATA_OBJECT = 0x6988
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    REFERENCE_NOT_FOUND = 0x6A88
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    UNKNOWN = 0x6F00
    # Proprietary (ISO 7816-4 leaves 9xxx to the application): purse and PSAM outcomes.
    INSUFFICIENT_FUNDS = 0x9F10
    MAX_BALANCE_EXCEEDED = 0x9F11
    STALE_OR_REPLAYED = 0x9F12
    NOT_AUTHENTIC = 0x9F13


def sw_bytes(sw: int) -> bytes:
    return bytes(((sw >> 8) & 0xFF, sw & 0xFF))


class CardError(Exception):
    """Raised inside the card to answer with a status word; never escapes the card OS."""

    def __init__(self, sw: int, why: str = "") -> None:
        super().__init__(f"{sw:04X} {why}".strip())
        self.sw = sw
        self.why = why


def wrong_pin(tries_left: int) -> CardError:
    """63Cx: verification failed, x tries left (x = 0 means the PIN is now blocked)."""
    return CardError(0x63C0 | max(0, min(tries_left, 15)), "verification failed")
