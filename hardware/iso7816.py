"""ISO 7816-4 on the host side: command encoding, status words, AIDs, and SW -> exception mapping."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from . import errors


class SW(IntEnum):
    OK = 0x9000
    WRONG_LENGTH = 0x6700
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    LAST_COMMAND_OF_CHAIN_EXPECTED = 0x6883
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_NOT_USABLE = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    WRONG_DATA = 0x6A80
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    REFERENCE_NOT_FOUND = 0x6A88
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    UNKNOWN = 0x6F00
    INSUFFICIENT_FUNDS = 0x9F10
    MAX_BALANCE_EXCEEDED = 0x9F11
    STALE_OR_REPLAYED = 0x9F12
    NOT_AUTHENTIC = 0x9F13


CLA_ISO = 0x00                 # interindustry commands (ISO 7816-4, PIV)
CLA_PROPRIETARY = 0x80         # semper's own commands (purse, PSAM, personalisation of every applet)


class INS(IntEnum):
    """The instruction bytes the host sends, named once for every applet session (the card side names its
    own in ``card_applet_sim``; the two are tested against each other through the APDUs)."""

    # ISO 7816-4 and NIST SP 800-73-4 (PIV), CLA 00
    VERIFY = 0x20
    CHANGE_REFERENCE_DATA = 0x24
    RESET_RETRY_COUNTER = 0x2C
    GENERATE_ASYMMETRIC_KEY_PAIR = 0x47
    GENERAL_AUTHENTICATE = 0x87
    SELECT = 0xA4
    GET_RESPONSE = 0xC0
    GET_DATA = 0xCB
    PUT_DATA = 0xDB
    # PSAM, CLA 80
    BEGIN_DEBIT = 0x30
    COMPLETE_DEBIT = 0x32
    CLOSE_BATCH = 0x34
    READ_BATCH_ENTRY = 0x36
    READ_BATCH_HEADER = 0x38
    # purse, CLA 80 (READ_INFO and GET_CERTIFICATE: the PSAM's too)
    INITIALIZE_LOAD = 0x40
    LOAD = 0x42
    READ_INFO = 0x50
    GET_CERTIFICATE = 0x52
    DEBIT = 0x54
    READ_LOG = 0x56
    # personalisation of every applet, CLA 80
    PUT_PERSO = 0xE0
    GENERATE_KEY = 0xE2
    END_PERSO = 0xEE


P1_SELECT_BY_AID = 0x04


class AID(bytes, Enum):
    """Application identifiers of the applets semper's cards carry."""

    PURSE = bytes.fromhex("F053454D50455201")
    PSAM = bytes.fromhex("F053454D50455202")
    PIV = bytes.fromhex("A000000308000010000100")


@dataclass(frozen=True)
class Apdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None          # None: no response expected; 0: "as much as there is"

    def encode(self, extended: bool | None = None) -> bytes:
        """Short form when it fits, extended otherwise (or when asked for)."""
        n = len(self.data)
        if n > 65535:
            raise ValueError("command data longer than 65535 bytes")
        le = self.le
        if extended is None:
            extended = n > 255 or (le is not None and le > 256)
        head = bytes([self.cla, self.ins, self.p1, self.p2])
        if not extended:
            body = (bytes([n]) + self.data) if n else b""
            if le is not None:
                body += bytes([0 if le in (0, 256) else le])
            return head + body
        body = (b"\x00" + n.to_bytes(2, "big") + self.data) if n else b""
        if le is not None:
            lb = (0 if le in (0, 65536) else le).to_bytes(2, "big")
            body += lb if n else b"\x00" + lb
        return head + body


_MESSAGES = {
    SW.WRONG_LENGTH: "the card says the command has the wrong length",
    SW.SECURITY_STATUS_NOT_SATISFIED: "the card needs the PIN to be verified first",
    SW.AUTH_METHOD_BLOCKED: "blocked",
    SW.REFERENCE_DATA_NOT_USABLE: "the PIN or key is not set up on this card",
    SW.CONDITIONS_NOT_SATISFIED: "the card is not in a state that allows this (not personalised?)",
    SW.WRONG_DATA: "the card rejected the data as malformed",
    SW.FILE_NOT_FOUND: "the application or object is not on this card",
    SW.RECORD_NOT_FOUND: "no such record on the card",
    SW.NOT_ENOUGH_MEMORY: "the card is out of memory for this",
    SW.INCORRECT_P1P2: "the card rejected the command parameters",
    SW.INS_NOT_SUPPORTED: "the card does not know this command",
    SW.CLA_NOT_SUPPORTED: "the card does not support this command class",
    SW.UNKNOWN: "the card reported an internal error",
    SW.INSUFFICIENT_FUNDS: "the purse balance is too low for this amount",
    SW.MAX_BALANCE_EXCEEDED: "this load would exceed the purse's maximum balance",
    SW.STALE_OR_REPLAYED: "the card refused a stale or replayed message",
    SW.NOT_AUTHENTIC: "a signature or certificate did not verify on the card",
}


def error_for(sw: int, context: str = "") -> errors.CardError:
    """Map a status word to the matching exception; ``context`` names the operation."""
    prefix = f"{context}: " if context else ""
    if 0x63C0 <= sw <= 0x63CF:
        return errors.WrongPinError(sw & 0x0F, sw)
    if sw == SW.AUTH_METHOD_BLOCKED:
        return errors.PinBlockedError(sw)
    try:
        known = SW(sw)
    except ValueError:
        return errors.CardError(f"{prefix}the card answered with unexpected status {sw:04X}", sw)
    msg = prefix + _MESSAGES.get(known, known.name.lower().replace("_", " "))
    cls: type[errors.CardError] = {
        SW.SECURITY_STATUS_NOT_SATISFIED: errors.PinRequiredError,
        SW.INSUFFICIENT_FUNDS: errors.InsufficientFundsError,
        SW.MAX_BALANCE_EXCEEDED: errors.MaxBalanceError,
        SW.NOT_AUTHENTIC: errors.NotAuthenticError,
        SW.STALE_OR_REPLAYED: errors.ReplayError,
        SW.FILE_NOT_FOUND: errors.NotFoundError,
        SW.RECORD_NOT_FOUND: errors.NotFoundError,
        SW.REFERENCE_NOT_FOUND: errors.NotFoundError,
        SW.CONDITIONS_NOT_SATISFIED: errors.ConditionsError,
        SW.REFERENCE_DATA_NOT_USABLE: errors.ConditionsError,
        SW.WRONG_DATA: errors.InvalidInputError,
        SW.WRONG_LENGTH: errors.InvalidInputError,
        SW.INCORRECT_P1P2: errors.InvalidInputError,
    }.get(known, errors.CardError)
    return cls(msg, sw)
