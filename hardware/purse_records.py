"""The purse scheme's signed records as the host sees them (layouts: docs/card.md).

The card side has its own codec (``card_applet_sim`` imports nothing from here); tests run both
against each other, so a layout change on one side alone fails.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Self

from .errors import TransportError

LOAD_REQUEST = b"LRQ2"
LOAD_COMMAND = b"LCM1"
LOAD_CONFIRMATION = b"LCF1"
DEBIT_REQUEST = b"DRQ1"
DEBIT_PROOF = b"DPF1"
BATCH_HEADER = b"BAT1"

_LOAD = struct.Struct(">4s8sIIH16sI")
_LOAD_REQ = struct.Struct(">4s8sIIH16sII")
_LOAD_CMD = struct.Struct(">4s8sIIH16s")
_DEBIT = struct.Struct(">4s8sI8sIIH16s")
_BATCH = struct.Struct(">4s8sIIQH32s")


def _check(fmt: struct.Struct, tag: bytes, data: bytes) -> tuple:
    if len(data) != fmt.size or data[:4] != tag:
        raise TransportError(f"the card sent something that is not a {tag.decode()} record")
    return fmt.unpack(data)[1:]


@dataclass(frozen=True)
class Signed:
    """A record and the DER ECDSA signature over it."""

    record: bytes
    signature: bytes

    @property
    def blob(self) -> bytes:
        return self.record + self.signature

    @classmethod
    def split(cls, data: bytes, size: int) -> Signed:
        if len(data) <= size or data[size] != 0x30:
            raise TransportError("expected a record followed by a DER signature")
        return cls(data[:size], data[size:])


@dataclass(frozen=True)
class _LoadRecord:
    """LRQ2 and LCF1 share these fields; the tag and the meaning of ``balance`` differ."""

    card_number: bytes
    load_counter: int
    amount: int
    currency: int
    nonce: bytes
    balance: int

    TAG = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        return cls(*_check(_LOAD, cls.TAG, data))


@dataclass(frozen=True)
class LoadRequest(_LoadRecord):
    """The card's signed request (balance = before the load). ``sequence`` numbers every load request
    the card signed: of two requests for one load counter, the higher one replaced the other on the
    card, so only it can still apply."""

    sequence: int = 0

    TAG = LOAD_REQUEST

    @classmethod
    def decode(cls, data: bytes) -> LoadRequest:
        return cls(*_check(_LOAD_REQ, LOAD_REQUEST, data))

    def command(self) -> bytes:
        """The LCM1 record an issuer signs to approve exactly this request."""
        return _LOAD_CMD.pack(LOAD_COMMAND, self.card_number, self.load_counter, self.amount, self.currency, self.nonce)


@dataclass(frozen=True)
class LoadConfirmation(_LoadRecord):
    """The card's signed confirmation (balance = after the load)."""

    TAG = LOAD_CONFIRMATION


@dataclass(frozen=True)
class DebitRecord:
    """DRQ1 (a PSAM's request) or DPF1 (a card's proof): the same fields."""

    tag: bytes
    psam_id: bytes
    psam_sequence: int
    card_number: bytes
    debit_counter: int
    amount: int
    currency: int
    challenge: bytes

    SIZE = _DEBIT.size

    @classmethod
    def decode(cls, data: bytes, tag: bytes) -> DebitRecord:
        return cls(tag, *_check(_DEBIT, tag, data))

    def encode(self) -> bytes:
        return _DEBIT.pack(self.tag, self.psam_id, self.psam_sequence, self.card_number, self.debit_counter,
                           self.amount, self.currency, self.challenge)


@dataclass(frozen=True)
class BatchHeader:
    psam_id: bytes
    batch_number: int
    count: int
    total: int
    currency: int
    entries_digest: bytes

    SIZE = _BATCH.size

    @classmethod
    def decode(cls, data: bytes) -> BatchHeader:
        return cls(*_check(_BATCH, BATCH_HEADER, data))


LOAD_SIZE = _LOAD.size                    # an LCF1 confirmation (also what the card's log holds)
LOAD_REQUEST_SIZE = _LOAD_REQ.size        # an LRQ2 request
LEGACY_LOAD_REQUEST = b"LRQ1"             # the request before the sequence number: LOAD_SIZE bytes
LOAD_COMMAND_SIZE = _LOAD_CMD.size
