"""Client for the purse applet: one session object per selected applet, typed in and out."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import cast

from . import tlv
from .iso7816 import AID, CLA_ISO, CLA_PROPRIETARY, INS, Apdu
from .purse_records import (
    DEBIT_PROOF,
    LOAD_COMMAND_SIZE,
    LOAD_REQUEST_SIZE,
    LOAD_SIZE,
    DebitRecord,
    LoadConfirmation,
    LoadRequest,
    Signed,
)
from .transport import ApduSession, Connection, PcscConnection

CLA = CLA_PROPRIETARY
P2_PIN = 0x81


@dataclass(frozen=True)
class PurseInfo:
    card_number: bytes
    currency: int
    balance: int
    max_balance: int
    load_counter: int
    debit_counter: int
    pin_tries: int
    puk_tries: int
    load_pending: bool
    load_sequence: int = 0          # load requests the card has signed (C9)

    @property
    def card_id(self) -> str:
        return self.card_number.hex().upper()


@dataclass(frozen=True)
class LogEntry:
    kind: str                  # "load" or "debit"
    balance_after: int
    signed: Signed

    @property
    def counter(self) -> int:
        return struct.unpack_from(">I", self.signed.record, 12 if self.kind == "load" else 24)[0]

    @property
    def amount(self) -> int:
        return struct.unpack_from(">I", self.signed.record, 16 if self.kind == "load" else 28)[0]


class PurseSession:
    def __init__(self, connection: Connection, *, select: bool = True) -> None:
        self.apdu = ApduSession(connection)
        self._cert: bytes | None = None
        if select:
            self.select()

    def select(self) -> bytes:
        return self.apdu.select(AID.PURSE, "select the purse")

    # ---- reading -------------------------------------------------------------------------
    def info(self) -> PurseInfo:
        f = tlv.decode(self.apdu.send(Apdu(CLA, INS.READ_INFO, 0, 0, b"", 0), "read the purse"))
        tries = f.get(0xC7, b"\0\0")
        return PurseInfo(
            card_number=f[0xC1], currency=int.from_bytes(f[0xC2], "big"), balance=int.from_bytes(f[0xC3], "big"),
            max_balance=int.from_bytes(f[0xC4], "big"), load_counter=int.from_bytes(f[0xC5], "big"),
            debit_counter=int.from_bytes(f[0xC6], "big"), pin_tries=tries[0], puk_tries=tries[1],
            load_pending=f.get(0xC8, b"\0") != b"\0", load_sequence=int.from_bytes(f.get(0xC9, b""), "big"))

    def certificate(self) -> bytes:
        """The purse's certificate, read once per session: it is written at personalisation and never
        after, and every payment sends it (three APDUs with GET RESPONSE)."""
        if self._cert is None:
            self._cert = self.apdu.send(Apdu(CLA, INS.GET_CERTIFICATE, 0x01, 0x00, b"", 0), "read the card certificate")
        return self._cert

    def log(self) -> list[LogEntry]:
        """The on-card log, newest first (at most 15 entries)."""
        from .errors import NotFoundError
        out = []
        for n in range(1, 16):
            try:
                raw = self.apdu.send(Apdu(CLA, INS.READ_LOG, n, 0, b"", 0), "read the purse log")
            except NotFoundError:
                break
            kind = "load" if raw[0] == ord("L") else "debit"
            size = LOAD_SIZE if kind == "load" else DebitRecord.SIZE
            out.append(LogEntry(kind, int.from_bytes(raw[1:5], "big"), Signed.split(raw[5:], size)))
        return out

    # ---- PIN --------------------------------------------------------------------------------
    def verify_pin(self, pin: bytes) -> None:
        self.apdu.send(Apdu(CLA_ISO, INS.VERIFY, 0x00, P2_PIN, bytes(pin)), "verify the PIN")

    def has_pin_pad(self) -> bool:
        """True when the reader can take the PIN on its own keypad (PC/SC part 10)."""
        from .readers import has_pin_pad
        conn = self.apdu.connection
        return hasattr(conn, "control") and has_pin_pad(conn)

    def verify_pin_on_pad(self) -> None:
        """Let the reader's keypad collect the PIN and send it to the card; the host never sees it."""
        from .iso7816 import error_for
        from .readers import FEATURE_VERIFY_PIN_DIRECT, reader_features, verify_pin_structure
        conn = self.apdu.connection
        code = reader_features(conn).get(FEATURE_VERIFY_PIN_DIRECT)
        if code is None:
            from .errors import ReaderError
            raise ReaderError("this reader has no PIN pad")
        template = bytes([CLA_ISO, INS.VERIFY, 0x00, P2_PIN, 0x08]) + b"\xff" * 8
        answer = cast(PcscConnection, conn).control(code, verify_pin_structure(template))   # a reader: it has code
        sw = (answer[-2] << 8) | answer[-1] if len(answer) >= 2 else 0x6F00
        if sw != 0x9000:
            raise error_for(sw, "verify the PIN on the PIN pad")

    def pin_verified(self) -> bool:
        """Ask the card without spending a try (VERIFY with no data)."""
        from .errors import CardError
        try:
            self.apdu.send(Apdu(CLA_ISO, INS.VERIFY, 0x00, P2_PIN), "PIN status")
            return True
        except CardError:
            return False

    def change_pin(self, old: bytes, new: bytes) -> None:
        self.apdu.send(Apdu(CLA_ISO, INS.CHANGE_REFERENCE_DATA, 0x00, P2_PIN, bytes([len(old)]) + old + new),
                       "change the PIN")

    def unblock_pin(self, puk: bytes, new: bytes) -> None:
        self.apdu.send(Apdu(CLA_ISO, INS.RESET_RETRY_COUNTER, 0x00, P2_PIN, bytes([len(puk)]) + puk + new),
                       "unblock the PIN")

    # ---- load ---------------------------------------------------------------------------------
    def find_debit_proof(self, request: DebitRecord) -> tuple[DebitRecord, Signed] | None:
        """The card's proof for ``request`` from its log: after a lost answer, whether the debit happened."""
        for entry in self.log():
            if entry.kind != "debit":
                continue
            proof = DebitRecord.decode(entry.signed.record, DEBIT_PROOF)
            if (proof.psam_id, proof.psam_sequence, proof.challenge) == (request.psam_id, request.psam_sequence,
                                                                         request.challenge):
                return proof, entry.signed
        return None

    def initialize_load(self, amount: int, currency: int) -> tuple[LoadRequest, Signed]:
        raw = self.apdu.send(Apdu(CLA, INS.INITIALIZE_LOAD, 0, 0, struct.pack(">IH", amount, currency), 0),
                             "start a load")
        signed = Signed.split(raw, LOAD_REQUEST_SIZE)
        return LoadRequest.decode(signed.record), signed

    def load(self, command: Signed) -> tuple[LoadConfirmation, Signed]:
        raw = self.apdu.send(Apdu(CLA, INS.LOAD, 0, 0, command.blob, 0), "load the purse")
        signed = Signed.split(raw, LOAD_SIZE)
        return LoadConfirmation.decode(signed.record), signed

    # ---- purchase -----------------------------------------------------------------------------
    def debit(self, psam_certificate: bytes, request: Signed) -> tuple[DebitRecord, Signed]:
        data = tlv.encode(0x01, psam_certificate) + tlv.encode(0x02, request.record) + tlv.encode(0x03,
                                                                                                  request.signature)
        raw = self.apdu.send(Apdu(CLA, INS.DEBIT, 0, 0, data, 0), "pay from the purse")
        signed = Signed.split(raw, DebitRecord.SIZE)
        return DebitRecord.decode(signed.record, DEBIT_PROOF), signed

    # ---- personalisation (issuer side, before the card is issued) ----------------------------
    def generate_key(self) -> bytes:
        return self.apdu.send(Apdu(CLA, INS.GENERATE_KEY, 0, 0, b"", 0), "generate the purse key")

    def put_perso(self, item: int, value: bytes) -> None:
        self._cert = None
        self.apdu.send(Apdu(CLA, INS.PUT_PERSO, item, 0, value), "personalise the purse")

    def end_personalisation(self) -> None:
        self.apdu.send(Apdu(CLA, INS.END_PERSO, 0, 0), "close personalisation")


PERSO_PARAMS, PERSO_PIN, PERSO_PUK, PERSO_ROOT, PERSO_ISSUER, PERSO_CERT = 1, 2, 3, 4, 5, 6
__all__ = ["PurseSession", "PurseInfo", "LogEntry", "LOAD_COMMAND_SIZE"]
