"""The PSAM applet: the seller's purse-acceptance module, a card in the seller's second reader.

It issues signed debit requests carrying a fresh challenge, accepts a card's debit proof only for
a request it still has outstanding (persistently, so a tear on either side loses nothing), and
keeps a sequence-numbered batch whose running digest and signed header let the acquirer check
that no entry was added, dropped or altered before clearing.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .. import crypto, tlv
from ..apdu import Command
from ..applet import CLA_PROPRIETARY, INS_END_PERSO, INS_GENERATE_KEY, INS_PUT_PERSO, KeyPairPersonalisation
from ..sw import SW, CardError
from .purse_records import DEBIT_PROOF, DEBIT_REQUEST, BatchHeader, DebitRecord

if TYPE_CHECKING:
    from ..store import Store

AID = bytes.fromhex("F053454D50455202")      # F0 'SEMPER' 02
MAX_PENDING = 16
MAX_BATCH = 5000

INS_READ_INFO = 0x50
INS_GET_CERTIFICATE = 0x52
INS_BEGIN_DEBIT = 0x30
INS_COMPLETE_DEBIT = 0x32
INS_CLOSE_BATCH = 0x34
INS_READ_BATCH_ENTRY = 0x36
INS_READ_BATCH_HEADER = 0x38

PERSO_PARAMS = 0x01
PERSO_ROOT = 0x04
PERSO_CERT = 0x06

_PARAMS = struct.Struct(">8sH")   # PSAM id, currency
_BEGIN = struct.Struct(">8sIIH")  # card number, next debit counter, amount, currency


class PsamApplet(KeyPairPersonalisation):
    AID = AID
    NAME = "psam"
    LABEL = "semper PSAM"

    PERSO_ITEMS = {
        PERSO_PARAMS: ("params", _PARAMS.size),
        PERSO_ROOT: ("root_point", 65),
        PERSO_CERT: ("cert", None),
    }

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._cert_cache: dict[bytes, tuple[bytes, str]] = {}

    @classmethod
    def install(cls, store: Store) -> None:
        super().install(store)
        store.put_int("psam/seq", 0)
        store.put_int("psam/batch_no", 1)
        store.put_int("psam/total", 0)

    def process(self, cmd: Command) -> bytes:
        if cmd.ins in (INS_PUT_PERSO, INS_GENERATE_KEY, INS_END_PERSO):
            return self.perso(cmd, self.PERSO_ITEMS)
        fn = {
            INS_READ_INFO: self._read_info,
            INS_GET_CERTIFICATE: self._get_certificate,
            INS_BEGIN_DEBIT: self._begin_debit,
            INS_COMPLETE_DEBIT: self._complete_debit,
            INS_CLOSE_BATCH: self._close_batch,
            INS_READ_BATCH_ENTRY: self._read_batch_entry,
            INS_READ_BATCH_HEADER: self._read_batch_header,
        }.get(cmd.ins)
        if fn is None:
            raise CardError(SW.INS_NOT_SUPPORTED)
        self.require_cla(cmd, CLA_PROPRIETARY)
        self.require_active()
        return fn(cmd)

    # ---- state -----------------------------------------------------------------------------
    def _params(self) -> tuple[bytes, int]:
        return _PARAMS.unpack(self.store.get(self.k("params")) or bytes(_PARAMS.size))

    def _batch_key(self, batch_no: int, part: str) -> str:
        return self.k(f"batch/{batch_no}/{part}")

    def _pending_seqs(self) -> list[int]:
        """Sequence numbers of outstanding requests, oldest first (an index, so no key scan)."""
        raw = self.store.get(self.k("pending_seqs")) or b""
        return [int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw), 4)]

    def _set_pending_seqs(self, seqs: list[int]) -> None:
        self.store.put(self.k("pending_seqs"), b"".join(q.to_bytes(4, "big") for q in seqs))

    def _sign(self, record: bytes) -> bytes:
        return record + crypto.sign(self.store.get(self.k(self.KEY_PRIVATE)) or b"", record)

    # ---- commands --------------------------------------------------------------------------
    def _read_info(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0, 0)
        self.require_no_data(cmd)
        psam_id, currency = self._params()
        s = self.store
        batch_no = s.get_int(self.k("batch_no"))
        return b"".join([
            tlv.encode(0xD1, psam_id),
            tlv.encode(0xD2, currency.to_bytes(2, "big")),
            tlv.encode(0xD3, s.get_int(self.k("seq")).to_bytes(4, "big")),
            tlv.encode(0xD4, batch_no.to_bytes(4, "big")),
            tlv.encode(0xD5, s.get_int(self._batch_key(batch_no, "count")).to_bytes(4, "big")),
            tlv.encode(0xD6, s.get_int(self._batch_key(batch_no, "total")).to_bytes(8, "big")),
            tlv.encode(0xD7, len(self._pending_seqs()).to_bytes(2, "big")),
            tlv.encode(0xD8, s.get_int(self.k("total")).to_bytes(8, "big")),
        ])

    def _get_certificate(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0x01, 0x00)
        self.require_no_data(cmd)
        return self.store.get(self.k("cert")) or b""

    def _begin_debit(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0, 0)
        if len(cmd.data) != _BEGIN.size:
            raise CardError(SW.WRONG_LENGTH, "expected card number(8) || debit counter(4) || amount(4) || currency(2)")
        card_number, debit_counter, amount, currency = _BEGIN.unpack(cmd.data)
        psam_id, my_currency = self._params()
        if currency != my_currency or amount == 0:
            raise CardError(SW.WRONG_DATA, "wrong currency or zero amount")
        seq = self.store.get_int(self.k("seq")) + 1
        self.store.put_int(self.k("seq"), seq)
        request = DebitRecord(DEBIT_REQUEST, psam_id, seq, card_number, debit_counter, amount, currency,
                              crypto.random_bytes(16))
        pending = self._pending_seqs()
        for old in pending[:max(0, len(pending) - MAX_PENDING + 1)]:
            self.store.delete(self.k(f"pending/{old:010d}"))
        self._set_pending_seqs(pending[max(0, len(pending) - MAX_PENDING + 1):] + [seq])
        self.store.put(self.k(f"pending/{seq:010d}"), request.encode())
        return self._sign(request.encode())

    def _check_card_certificate(self, der: bytes) -> tuple[bytes, str]:
        h = crypto.sha256(der)
        hit = self._cert_cache.get(h)
        if hit is None:
            hit = crypto.check_certificate(der, self.store.get(self.k("root_point")) or b"", crypto.ROLE_PURSE_CARD)
            if len(self._cert_cache) > 256:
                self._cert_cache.clear()
            self._cert_cache[h] = hit
        return hit

    def _complete_debit(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0, 0)
        fields = tlv.decode(cmd.data)
        card_cert = tlv.require(fields, 0x01)
        proof_bytes = tlv.require(fields, 0x02, DebitRecord.SIZE)
        signature = tlv.require(fields, 0x03)
        proof = DebitRecord.decode(DEBIT_PROOF, proof_bytes)
        pending = self.store.get(self.k(f"pending/{proof.psam_sequence:010d}"))
        if pending is None:
            raise CardError(SW.STALE_OR_REPLAYED, "no outstanding request with this sequence number")
        if DebitRecord.decode(DEBIT_REQUEST, pending).as_proof() != proof:
            raise CardError(SW.NOT_AUTHENTIC, "proof does not match the outstanding request")
        card_point, card_serial = self._check_card_certificate(card_cert)
        if card_serial != proof.card_number.hex().upper():
            raise CardError(SW.NOT_AUTHENTIC, "card certificate is for another card")
        if not crypto.verify(card_point, proof_bytes, signature):
            raise CardError(SW.NOT_AUTHENTIC, "debit proof not signed by the card")
        batch_no = self.store.get_int(self.k("batch_no"))
        count = self.store.get_int(self._batch_key(batch_no, "count"))
        if count >= MAX_BATCH:
            raise CardError(SW.NOT_ENOUGH_MEMORY, "batch full: close it for clearing first")
        entry = tlv.encode(0x01, card_cert) + tlv.encode(0x02, proof_bytes) + tlv.encode(0x03, signature)
        digest = self.store.get(self._batch_key(batch_no, "digest")) or bytes(32)
        total = self.store.get_int(self._batch_key(batch_no, "total")) + proof.amount
        self.store.delete(self.k(f"pending/{proof.psam_sequence:010d}"))
        self._set_pending_seqs([q for q in self._pending_seqs() if q != proof.psam_sequence])
        self.store.put(self._batch_key(batch_no, f"e/{count:06d}"), entry)
        self.store.put(self._batch_key(batch_no, "digest"), crypto.sha256(digest + crypto.sha256(entry)))
        self.store.put_int(self._batch_key(batch_no, "count"), count + 1)
        self.store.put_int(self._batch_key(batch_no, "total"), total)
        self.store.put_int(self.k("total"), self.store.get_int(self.k("total")) + proof.amount)
        return struct.pack(">IIQ", batch_no, count, total)

    def _close_batch(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0, 0)
        self.require_no_data(cmd)
        psam_id, currency = self._params()
        batch_no = self.store.get_int(self.k("batch_no"))
        header = BatchHeader(psam_id, batch_no, self.store.get_int(self._batch_key(batch_no, "count")),
                             self.store.get_int(self._batch_key(batch_no, "total")), currency,
                             self.store.get(self._batch_key(batch_no, "digest")) or bytes(32))
        signed = self._sign(header.encode())
        for key in list(self.store.keys(self.k(f"batch/{batch_no - 1}/"))):
            self.store.delete(key)                  # the batch closed before this one is gone now
        self.store.put(self._batch_key(batch_no, "header"), signed)
        self.store.put_int(self.k("batch_no"), batch_no + 1)
        return signed

    def _batch_arg(self, cmd: Command) -> int:
        if len(cmd.data) != 4:
            raise CardError(SW.WRONG_LENGTH, "expected batch number(4)")
        batch_no = int.from_bytes(cmd.data, "big")
        current = self.store.get_int(self.k("batch_no"))
        if batch_no not in (current, current - 1) or batch_no < 1:
            raise CardError(SW.RECORD_NOT_FOUND, "only the open batch and the last closed one are kept")
        return batch_no

    def _read_batch_entry(self, cmd: Command) -> bytes:
        batch_no = self._batch_arg(cmd)
        index = (cmd.p1 << 8) | cmd.p2
        entry = self.store.get(self._batch_key(batch_no, f"e/{index:06d}"))
        if entry is None:
            raise CardError(SW.RECORD_NOT_FOUND)
        return entry

    def _read_batch_header(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0, 0)
        batch_no = self._batch_arg(cmd)
        header = self.store.get(self._batch_key(batch_no, "header"))
        if header is None:
            raise CardError(SW.RECORD_NOT_FOUND, "batch is still open")
        return header
