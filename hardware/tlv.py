"""BER-TLV decoding for card answers (flat lists; the few tags the host reads)."""
from __future__ import annotations

from .errors import TransportError


def encode(tag: int, value: bytes) -> bytes:
    t = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    n = len(value)
    ln = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n <= 0xFF else bytes([0x82, n >> 8, n & 0xFF])
    return t + ln + value


def decode(data: bytes) -> dict[int, bytes]:
    """A flat list of TLVs as a tag -> value map. A tag twice at one level is refused: which of the two
    values a caller would read is exactly what an attacker on the line would choose."""
    out: dict[int, bytes] = {}
    i = 0
    try:
        while i < len(data):
            tag = data[i]
            i += 1
            if tag & 0x1F == 0x1F:
                tag = (tag << 8) | data[i]
                i += 1
            ln = data[i]
            i += 1
            if ln & 0x80:
                nb = ln & 0x7F
                if not 1 <= nb <= 3:
                    raise TransportError("unsupported TLV length form from the card")
                ln = int.from_bytes(data[i:i + nb], "big")
                i += nb
            if i + ln > len(data):
                raise IndexError
            if tag in out:
                raise TransportError(f"the card's answer holds tag {tag:02X} twice")
            out[tag] = data[i:i + ln]
            i += ln
    except IndexError:
        raise TransportError("truncated TLV in the card's answer") from None
    return out
