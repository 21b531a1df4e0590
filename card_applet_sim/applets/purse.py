"""The e-purse applet, GeldKarte-style: balance on the card, loads online, purchases offline.

Load (PIN needed): INITIALIZE LOAD makes the card sign a load request with a fresh nonce, its next
load counter and the next number of its load request sequence; the pending request is kept
persistently, so an issuer-signed LOAD that arrives after a tear still applies. A new INITIALIZE
LOAD replaces the pending request, and the sequence number tells the issuer which of two requests
for one counter replaced the other. LOAD accepts only the issuer's signature over exactly the
pending request, once.

Purchase (no PIN): DEBIT accepts a request signed by a PSAM whose certificate chains to the scheme
root held on the card, for this card, in this currency and for the card's *next* debit counter, so a
replayed request fails. Balance, counter and log change in one transaction; the signed proof is kept
in the log so it can be read again if the answer was lost.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .. import crypto, tlv
from ..apdu import Command
from ..applet import (
    CLA_ISO,
    CLA_PROPRIETARY,
    INS_END_PERSO,
    INS_GENERATE_KEY,
    INS_PUT_PERSO,
    KeyPairPersonalisation,
)
from ..pin import Pin
from ..sw import SW, CardError
from .purse_records import (
    DEBIT_REQUEST,
    LOAD_COMMAND,
    LOAD_CONFIRMATION,
    LOAD_REQUEST,
    DebitRecord,
    LoadRecord,
    split_signed,
)

if TYPE_CHECKING:
    from ..store import Store

AID = bytes.fromhex("F053454D50455201")      # F0 'SEMPER' 01
LOG_SIZE = 15

INS_VERIFY = 0x20
INS_CHANGE_REFERENCE_DATA = 0x24
INS_RESET_RETRY_COUNTER = 0x2C
INS_INITIALIZE_LOAD = 0x40
INS_LOAD = 0x42
INS_READ_PURSE = 0x50
INS_GET_CERTIFICATE = 0x52
INS_DEBIT = 0x54
INS_READ_LOG = 0x56

P2_PIN = 0x81

PERSO_PARAMS = 0x01
PERSO_PIN = 0x02
PERSO_PUK = 0x03
PERSO_ROOT = 0x04
PERSO_ISSUER = 0x05
PERSO_CERT = 0x06

LOG_LOAD = ord("L")
LOG_DEBIT = ord("D")

_PARAMS = struct.Struct(">8sHI")   # card number, currency, maximum balance


class PurseApplet(KeyPairPersonalisation):
    AID = AID
    NAME = "purse"
    LABEL = "semper e-purse"

    PERSO_ITEMS = {
        PERSO_PARAMS: ("params", _PARAMS.size),
        PERSO_ROOT: ("root_point", 65),
        PERSO_ISSUER: ("issuer_point", 65),
        PERSO_CERT: ("cert", None),
    }

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.pin = Pin(store, "card/pin", 4, 8)
        self.puk = Pin(store, "card/puk", 8, 8)

    @classmethod
    def install(cls, store: Store) -> None:
        super().install(store)
        store.put_int("purse/balance", 0)
        store.put_int("purse/load_ctr", 0)
        store.put_int("purse/load_seq", 0)
        store.put_int("purse/debit_ctr", 0)
        store.put_int("purse/log_count", 0)

    def reset(self) -> None:
        self.pin.validated = False
        self.puk.validated = False

    # ----------------------------------------------------------------------------------------
    def process(self, cmd: Command) -> bytes:
        ins = cmd.ins
        if ins in (INS_PUT_PERSO, INS_GENERATE_KEY, INS_END_PERSO):
            if ins == INS_PUT_PERSO and cmd.p1 in (PERSO_PIN, PERSO_PUK) and cmd.p2 == 0:
                self.require_cla(cmd, CLA_PROPRIETARY)
                self.require_personalisation()
                (self.pin if cmd.p1 == PERSO_PIN else self.puk).set(cmd.data, 3)
                return b""
            if ins == INS_END_PERSO and (not self.pin.is_set or not self.puk.is_set):
                self.require_personalisation()
                raise CardError(SW.CONDITIONS_NOT_SATISFIED, "PIN and PUK must be set")
            return self.perso(cmd, self.PERSO_ITEMS)
        handler = {
            INS_VERIFY: (CLA_ISO, self._verify),
            INS_CHANGE_REFERENCE_DATA: (CLA_ISO, self._change_pin),
            INS_RESET_RETRY_COUNTER: (CLA_ISO, self._unblock_pin),
            INS_READ_PURSE: (CLA_PROPRIETARY, self._read_purse),
            INS_GET_CERTIFICATE: (CLA_PROPRIETARY, self._get_certificate),
            INS_INITIALIZE_LOAD: (CLA_PROPRIETARY, self._initialize_load),
            INS_LOAD: (CLA_PROPRIETARY, self._load),
            INS_DEBIT: (CLA_PROPRIETARY, self._debit),
            INS_READ_LOG: (CLA_PROPRIETARY, self._read_log),
        }.get(ins)
        if handler is None:
            raise CardError(SW.INS_NOT_SUPPORTED)
        cla, fn = handler
        self.require_cla(cmd, cla)
        self.require_active()
        return fn(cmd)

    # ---- fields ----------------------------------------------------------------------------
    def _params(self) -> tuple[bytes, int, int]:
        return _PARAMS.unpack(self.store.get(self.k("params")) or bytes(_PARAMS.size))

    def _key(self) -> bytes:
        return self.store.get(self.k(self.KEY_PRIVATE)) or b""

    def _sign(self, record: bytes) -> bytes:
        return record + crypto.sign(self._key(), record)

    # ---- PIN -------------------------------------------------------------------------------
    def _verify(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0x00, P2_PIN)
        if not cmd.data:
            self.pin.status()
            return b""
        pin = cmd.data.rstrip(b"\xff")          # PIN-pad readers send a block padded with FF
        self.pin.check_format(pin)
        self.pin.verify(pin)
        return b""

    def _split_old_new(self, cmd: Command) -> tuple[bytes, bytes]:
        if len(cmd.data) < 2 or cmd.data[0] + 1 >= len(cmd.data):
            raise CardError(SW.WRONG_LENGTH, "expected len(old) || old || new")
        n = cmd.data[0]
        return cmd.data[1:1 + n], cmd.data[1 + n:]

    def _change_pin(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0x00, P2_PIN)
        old, new = self._split_old_new(cmd)
        self.pin.check_format(new)
        self.pin.check_format(old)
        self.pin.verify(old)
        self.pin.set(new, self.pin.max_tries)
        self.pin.validated = True
        return b""

    def _unblock_pin(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0x00, P2_PIN)
        puk, new = self._split_old_new(cmd)
        self.pin.check_format(new)
        self.puk.check_format(puk)
        self.puk.verify(puk)
        self.pin.set(new, self.pin.max_tries)
        return b""

    # ---- information -----------------------------------------------------------------------
    def _read_purse(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0, 0)
        self.require_no_data(cmd)
        card_number, currency, max_balance = self._params()
        s = self.store
        return b"".join([
            tlv.encode(0xC1, card_number),
            tlv.encode(0xC2, currency.to_bytes(2, "big")),
            tlv.encode(0xC3, s.get_int(self.k("balance")).to_bytes(4, "big")),
            tlv.encode(0xC4, max_balance.to_bytes(4, "big")),
            tlv.encode(0xC5, s.get_int(self.k("load_ctr")).to_bytes(4, "big")),
            tlv.encode(0xC6, s.get_int(self.k("debit_ctr")).to_bytes(4, "big")),
            tlv.encode(0xC7, bytes([self.pin.tries_left, self.puk.tries_left])),
            tlv.encode(0xC8, bytes([1 if self.store.get(self.k("pending_load")) else 0])),
            tlv.encode(0xC9, s.get_int(self.k("load_seq")).to_bytes(4, "big")),
        ])

    def _get_certificate(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0x01, 0x00)
        self.require_no_data(cmd)
        return self.store.get(self.k("cert")) or b""

    def _read_log(self, cmd: Command) -> bytes:
        if not 1 <= cmd.p1 <= LOG_SIZE or cmd.p2 != 0:
            raise CardError(SW.INCORRECT_P1P2)
        self.require_no_data(cmd)
        count = self.store.get_int(self.k("log_count"))
        if cmd.p1 > min(count, LOG_SIZE):
            raise CardError(SW.RECORD_NOT_FOUND)
        slot = (count - cmd.p1) % LOG_SIZE
        return self.store.get(self.k(f"log/{slot}")) or b""

    def _append_log(self, kind: int, balance_after: int, signed: bytes) -> None:
        count = self.store.get_int(self.k("log_count"))
        self.store.put(self.k(f"log/{count % LOG_SIZE}"), bytes([kind]) + balance_after.to_bytes(4, "big") + signed)
        self.store.put_int(self.k("log_count"), count + 1)

    # ---- load ------------------------------------------------------------------------------
    def _initialize_load(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0, 0)
        if len(cmd.data) != 6:
            raise CardError(SW.WRONG_LENGTH, "expected amount(4) || currency(2)")
        if not self.pin.validated:
            raise CardError(SW.SECURITY_STATUS_NOT_SATISFIED, "PIN required for a load")
        amount, currency = struct.unpack(">IH", cmd.data)
        card_number, my_currency, max_balance = self._params()
        if currency != my_currency or amount == 0:
            raise CardError(SW.WRONG_DATA, "wrong currency or zero amount")
        balance = self.store.get_int(self.k("balance"))
        if balance + amount > max_balance:
            raise CardError(SW.MAX_BALANCE_EXCEEDED)
        sequence = self.store.get_int(self.k("load_seq")) + 1
        request = LoadRecord(LOAD_REQUEST, card_number, self.store.get_int(self.k("load_ctr")) + 1, amount, currency,
                             crypto.random_bytes(16), balance, sequence)
        self.store.put_int(self.k("load_seq"), sequence)          # one transaction with the pending request
        self.store.put(self.k("pending_load"), request.encode())
        return self._sign(request.encode())

    def _load(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0, 0)
        record, signature = split_signed(cmd.data, LoadRecord.command_size())
        command = LoadRecord.decode(LOAD_COMMAND, record)
        pending = self.store.get(self.k("pending_load"))
        if pending is None or len(pending) != LoadRecord.request_size():     # (an LRQ1 left by an older applet
            raise CardError(SW.STALE_OR_REPLAYED, "no load is pending")     # is no longer a request it can apply)
        if not command.same_load(LoadRecord.decode(LOAD_REQUEST, pending)):
            raise CardError(SW.STALE_OR_REPLAYED, "load command does not match the pending request")
        if not crypto.verify(self.store.get(self.k("issuer_point")) or b"", record, signature):
            raise CardError(SW.NOT_AUTHENTIC, "load command not signed by the issuer")
        balance = self.store.get_int(self.k("balance")) + command.amount
        if balance > self._params()[2]:
            raise CardError(SW.MAX_BALANCE_EXCEEDED)
        self.store.put_int(self.k("balance"), balance)
        self.store.put_int(self.k("load_ctr"), command.load_counter)
        self.store.delete(self.k("pending_load"))
        confirmation = self._sign(LoadRecord(LOAD_CONFIRMATION, command.card_number, command.load_counter,
                                             command.amount, command.currency, command.nonce, balance).encode())
        self._append_log(LOG_LOAD, balance, confirmation)
        return confirmation

    # ---- purchase --------------------------------------------------------------------------
    def _debit(self, cmd: Command) -> bytes:
        self.require_p1p2(cmd, 0, 0)
        fields = tlv.decode(cmd.data)
        psam_cert = tlv.require(fields, 0x01)
        request = DebitRecord.decode(DEBIT_REQUEST, tlv.require(fields, 0x02, DebitRecord.SIZE))
        signature = tlv.require(fields, 0x03)
        if not 8 <= len(signature) <= 72:
            raise CardError(SW.WRONG_DATA, "bad signature length")
        card_number, currency, _ = self._params()
        if request.card_number != card_number or request.currency != currency or request.amount == 0:
            raise CardError(SW.WRONG_DATA, "request is for another card, currency or a zero amount")
        debit_ctr = self.store.get_int(self.k("debit_ctr"))
        if request.debit_counter != debit_ctr + 1:
            raise CardError(SW.STALE_OR_REPLAYED, "debit request is not for the next debit counter")
        psam_point, psam_serial = crypto.check_certificate(psam_cert, self.store.get(self.k("root_point")) or b"",
                                                           crypto.ROLE_PSAM)
        if psam_serial != request.psam_id.hex().upper():
            raise CardError(SW.NOT_AUTHENTIC, "PSAM certificate is for another PSAM")
        if not crypto.verify(psam_point, request.encode(), signature):
            raise CardError(SW.NOT_AUTHENTIC, "debit request not signed by the PSAM")
        balance = self.store.get_int(self.k("balance"))
        if request.amount > balance:
            raise CardError(SW.INSUFFICIENT_FUNDS)
        balance -= request.amount
        self.store.put_int(self.k("balance"), balance)
        self.store.put_int(self.k("debit_ctr"), request.debit_counter)
        proof = self._sign(request.as_proof().encode())
        self._append_log(LOG_DEBIT, balance, proof)
        return proof
