"""Byte layouts of the signed messages the purse scheme exchanges (card side).

Every record starts with a 4-byte type tag, so a signature over one kind of record can never be
presented as another kind. Integers are big-endian; amounts are in minor units of the currency
(ISO 4217 numeric code). docs/card.md documents the same layouts for other implementations.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..sw import SW, CardError

LOAD_REQUEST = b"LRQ2"
LOAD_COMMAND = b"LCM1"
LOAD_CONFIRMATION = b"LCF1"
DEBIT_REQUEST = b"DRQ1"
DEBIT_PROOF = b"DPF1"
BATCH_HEADER = b"BAT1"


def _unpack(fmt: struct.Struct, tag: bytes, data: bytes) -> tuple:
    if len(data) != fmt.size or data[:4] != tag:
        raise CardError(SW.WRONG_DATA, f"not a {tag.decode()} record")
    return fmt.unpack(data)[1:]


@dataclass(frozen=True)
class LoadRecord:
    """LRQ2 (card -> issuer), LCM1 (issuer -> card), LCF1 (card -> issuer).

    ``sequence`` (LRQ2 only) numbers every load request the card ever signed. A card keeps one
    pending request and INITIALIZE LOAD replaces it, so of two requests for the same load counter
    only the one with the higher sequence can still apply: that is what lets the issuer order them
    and reverse a load only on the card's own word that it replaced it (issue 12, item 1).
    """

    tag: bytes
    card_number: bytes
    load_counter: int
    amount: int
    currency: int
    nonce: bytes
    balance: int = 0          # LRQ2: balance before; LCF1: balance after; absent in LCM1
    sequence: int = 0         # LRQ2: the card's load request sequence number

    _REQUEST = struct.Struct(">4s8sIIH16sII")
    _WITH_BALANCE = struct.Struct(">4s8sIIH16sI")
    _WITHOUT = struct.Struct(">4s8sIIH16s")

    def encode(self) -> bytes:
        if self.tag == LOAD_COMMAND:
            return self._WITHOUT.pack(self.tag, self.card_number, self.load_counter, self.amount, self.currency,
                                      self.nonce)
        if self.tag == LOAD_REQUEST:
            return self._REQUEST.pack(self.tag, self.card_number, self.load_counter, self.amount, self.currency,
                                      self.nonce, self.balance, self.sequence)
        return self._WITH_BALANCE.pack(self.tag, self.card_number, self.load_counter, self.amount, self.currency,
                                       self.nonce, self.balance)

    @classmethod
    def decode(cls, tag: bytes, data: bytes) -> LoadRecord:
        if tag == LOAD_COMMAND:
            return cls(tag, *_unpack(cls._WITHOUT, tag, data))
        if tag == LOAD_REQUEST:
            return cls(tag, *_unpack(cls._REQUEST, tag, data))
        return cls(tag, *_unpack(cls._WITH_BALANCE, tag, data))

    @classmethod
    def command_size(cls) -> int:
        return cls._WITHOUT.size

    @classmethod
    def request_size(cls) -> int:
        return cls._REQUEST.size

    def same_load(self, other: LoadRecord) -> bool:
        return (self.card_number, self.load_counter, self.amount, self.currency, self.nonce) == (
            other.card_number, other.load_counter, other.amount, other.currency, other.nonce)


@dataclass(frozen=True)
class DebitRecord:
    """DRQ1 (PSAM -> card) and DPF1 (card -> PSAM): the same fields, signed by each side."""

    tag: bytes
    psam_id: bytes
    psam_sequence: int
    card_number: bytes
    debit_counter: int
    amount: int
    currency: int
    challenge: bytes

    _FMT = struct.Struct(">4s8sI8sIIH16s")
    SIZE = _FMT.size

    def encode(self) -> bytes:
        return self._FMT.pack(self.tag, self.psam_id, self.psam_sequence, self.card_number, self.debit_counter,
                              self.amount, self.currency, self.challenge)

    @classmethod
    def decode(cls, tag: bytes, data: bytes) -> DebitRecord:
        return cls(tag, *_unpack(cls._FMT, tag, data))

    def as_proof(self) -> DebitRecord:
        return DebitRecord(DEBIT_PROOF, self.psam_id, self.psam_sequence, self.card_number, self.debit_counter,
                           self.amount, self.currency, self.challenge)


@dataclass(frozen=True)
class BatchHeader:
    psam_id: bytes
    batch_number: int
    count: int
    total: int
    currency: int
    entries_digest: bytes

    _FMT = struct.Struct(">4s8sIIQH32s")

    def encode(self) -> bytes:
        return self._FMT.pack(BATCH_HEADER, self.psam_id, self.batch_number, self.count, self.total, self.currency,
                              self.entries_digest)


def split_signed(data: bytes, size: int) -> tuple[bytes, bytes]:
    """Split ``record || DER signature``; the signature must be a plausible DER ECDSA value."""
    if len(data) < size + 8 or len(data) > size + 72 or data[size] != 0x30:
        raise CardError(SW.WRONG_DATA, "expected a record followed by a DER signature")
    return data[:size], data[size:]
