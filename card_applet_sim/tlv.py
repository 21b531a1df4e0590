"""Minimal BER-TLV for the card: one- and two-byte tags, definite lengths up to 65535."""
from __future__ import annotations

from .sw import SW, CardError


def encode(tag: int, value: bytes) -> bytes:
    t = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    n = len(value)
    if n < 0x80:
        ln = bytes([n])
    elif n <= 0xFF:
        ln = bytes([0x81, n])
    else:
        ln = bytes([0x82, n >> 8, n & 0xFF])
    return t + ln + value


def decode(data: bytes) -> dict[int, bytes]:
    """Parse a flat sequence of TLVs; malformed input raises CardError(6A80). Duplicate tags too."""
    out: dict[int, bytes] = {}
    i, n = 0, len(data)
    while i < n:
        tag = data[i]
        i += 1
        if tag & 0x1F == 0x1F:
            if i >= n:
                raise CardError(SW.WRONG_DATA, "truncated tag")
            tag = (tag << 8) | data[i]
            i += 1
        if i >= n:
            raise CardError(SW.WRONG_DATA, "missing length")
        ln = data[i]
        i += 1
        if ln == 0x81:
            if i >= n:
                raise CardError(SW.WRONG_DATA, "truncated length")
            ln = data[i]
            i += 1
        elif ln == 0x82:
            if i + 1 >= n:
                raise CardError(SW.WRONG_DATA, "truncated length")
            ln = (data[i] << 8) | data[i + 1]
            i += 2
        elif ln >= 0x80:
            raise CardError(SW.WRONG_DATA, "unsupported length form")
        if i + ln > n:
            raise CardError(SW.WRONG_DATA, "value runs past the data")
        if tag in out:
            raise CardError(SW.WRONG_DATA, "duplicate tag")
        out[tag] = data[i:i + ln]
        i += ln
    return out


def require(fields: dict[int, bytes], tag: int, length: int | None = None) -> bytes:
    v = fields.get(tag)
    if v is None or (length is not None and len(v) != length):
        raise CardError(SW.WRONG_DATA, f"tag {tag:02X} missing or of wrong length")
    return v
