"""Client for the PSAM applet (the seller's purse-acceptance module)."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from . import tlv
from .errors import NotFoundError
from .iso7816 import AID, CLA_PROPRIETARY, INS, Apdu
from .purse_records import DEBIT_REQUEST, BatchHeader, DebitRecord, Signed
from .transport import ApduSession, Connection

CLA = CLA_PROPRIETARY


@dataclass(frozen=True)
class PsamInfo:
    psam_id: bytes
    currency: int
    sequence: int
    batch_number: int
    batch_count: int
    batch_total: int
    pending: int
    lifetime_total: int


@dataclass(frozen=True)
class BatchEntry:
    card_certificate: bytes
    proof: Signed


class PsamSession:
    def __init__(self, connection: Connection, *, select: bool = True, extended: bool = True) -> None:
        """``extended``: send long commands as one extended-length APDU. The PSAM's COMPLETE DEBIT
        carries the card's certificate (about 600 bytes in all): chained, it is three exchanges through
        pcscd per purchase, in one it is one; the seller pays for each exchange in CPU (docs/card.md,
        docs/performance.md). A card that answers 6700 to the long form gets chains from then on."""
        self.apdu = ApduSession(connection, extended=extended)
        self._selected = False
        self._cert: bytes | None = None
        if select:
            self.select()

    def _send(self, apdu: Apdu, what: str) -> bytes:
        """Send; after any failure (a refusal, a reset or removed card) the next step selects again."""
        try:
            return self.apdu.send(apdu, what)
        except BaseException:
            self._selected = False
            raise

    def select(self) -> bytes:
        self._selected = False
        answer = self.apdu.select(AID.PSAM, "select the PSAM")
        self._selected = True
        return answer

    def ensure_selected(self) -> None:
        """Select the PSAM unless this session selected it and nothing failed since: a seller's PSAM card
        holds only this applet and is used through this session alone, so one SELECT per purchase step
        (a third of a millisecond through pcscd, inside the payment lock) buys nothing."""
        if not self._selected:
            self.select()

    def info(self) -> PsamInfo:
        f = tlv.decode(self._send(Apdu(CLA, INS.READ_INFO, 0, 0, b"", 0), "read the PSAM"))
        num = lambda t: int.from_bytes(f[t], "big")
        return PsamInfo(f[0xD1], num(0xD2), num(0xD3), num(0xD4), num(0xD5), num(0xD6), num(0xD7), num(0xD8))

    def certificate(self) -> bytes:
        """The PSAM's certificate, read once per session (it is written at personalisation, never after)."""
        if self._cert is None:
            self._cert = self._send(Apdu(CLA, INS.GET_CERTIFICATE, 0x01, 0x00, b"", 0), "read the PSAM certificate")
        return self._cert

    def begin_debit(self, card_number: bytes, next_debit_counter: int, amount: int, currency: int
                    ) -> tuple[DebitRecord, Signed]:
        data = struct.pack(">8sIIH", card_number, next_debit_counter, amount, currency)
        signed = Signed.split(self._send(Apdu(CLA, INS.BEGIN_DEBIT, 0, 0, data, 0), "start a debit"), DebitRecord.SIZE)
        return DebitRecord.decode(signed.record, DEBIT_REQUEST), signed

    def complete_debit(self, card_certificate: bytes, proof: Signed) -> tuple[int, int, int]:
        """Returns (batch number, entry index, batch total)."""
        data = tlv.encode(0x01, card_certificate) + tlv.encode(0x02, proof.record) + tlv.encode(0x03, proof.signature)
        raw = self._send(Apdu(CLA, INS.COMPLETE_DEBIT, 0, 0, data, 0), "complete the debit")
        return struct.unpack(">IIQ", raw)

    def close_batch(self) -> tuple[BatchHeader, Signed]:
        signed = Signed.split(self._send(Apdu(CLA, INS.CLOSE_BATCH, 0, 0, b"", 0), "close the batch"), BatchHeader.SIZE)
        return BatchHeader.decode(signed.record), signed

    def batch_entries(self, batch_number: int) -> list[BatchEntry]:
        out = []
        for index in range(0, 65536):
            try:
                raw = self._send(Apdu(CLA, INS.READ_BATCH_ENTRY, index >> 8, index & 0xFF,
                                      batch_number.to_bytes(4, "big"), 0), "read a batch entry")
            except NotFoundError:
                break
            f = tlv.decode(raw)
            out.append(BatchEntry(f[0x01], Signed(f[0x02], f[0x03])))
        return out

    def find_proof(self, proof_record: bytes) -> tuple[int, int] | None:
        """(batch number, index) of the entry holding this DPF1 in the open or the last closed batch (the
        only two the PSAM keeps), newest batch first; None when neither holds it. Reads every entry: for
        the rare proof the PSAM refused as stale (taken before, or its request evicted)."""
        info = self.info()
        for number in (info.batch_number, info.batch_number - 1):
            if number < 1:
                continue
            for index, entry in enumerate(self.batch_entries(number)):
                if entry.proof.record == proof_record:
                    return number, index
        return None

    def batch_header(self, batch_number: int) -> tuple[BatchHeader, Signed]:
        raw = self._send(Apdu(CLA, INS.READ_BATCH_HEADER, 0, 0, batch_number.to_bytes(4, "big"), 0),
                         "read a batch header")
        signed = Signed.split(raw, BatchHeader.SIZE)
        return BatchHeader.decode(signed.record), signed

    # personalisation
    def generate_key(self) -> bytes:
        return self._send(Apdu(CLA, INS.GENERATE_KEY, 0, 0, b"", 0), "generate the PSAM key")

    def put_perso(self, item: int, value: bytes) -> None:
        self._cert = None
        self._send(Apdu(CLA, INS.PUT_PERSO, item, 0, value), "personalise the PSAM")

    def end_personalisation(self) -> None:
        self._send(Apdu(CLA, INS.END_PERSO, 0, 0), "close personalisation")
