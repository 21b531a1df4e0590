"""The few DER primitives the statement profile needs: write a TLV, read one strictly.

Why by hand: a general ASN.1 library (asn1crypto) builds a Python object per node and re-encodes
on the way out, which made a statement cost more than a millisecond of host time — more than the
token's signature. The statement profile (:mod:`client.support.cms_profile`) is one fixed shape,
so it needs only these primitives. Reading is strict DER: definite, minimal lengths, single-byte
tags, nothing left over; anything else is :class:`DerError`, and callers fall back to the general
parser, which gives the detailed message.
"""
from __future__ import annotations

from semper.hardware.errors import SemperError


class DerError(SemperError, ValueError):
    """Not the strict DER this reader takes (the general parser may still make sense of it)."""

    http_status = 400
    code = "bad_der"


def length(n: int) -> bytes:
    """DER length octets of ``n`` (short form below 128, else the fewest big-endian bytes)."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    if n < 0x10000:
        return bytes((0x82, n >> 8, n & 0xFF))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def head(tag: int, n: int) -> bytes:
    """Tag and length octets of a TLV with ``n`` content bytes: what :func:`tlv` puts before the content.

    Why its own function: the statement writer asks for eight of these per statement; the lengths of a
    statement (below 64 KiB) are written in one ``bytes`` call each, without a second call for the length."""
    if n < 0x80:
        return bytes((tag, n))
    if n < 0x100:
        return bytes((tag, 0x81, n))
    if n < 0x10000:
        return bytes((tag, 0x82, n >> 8, n & 0xFF))
    return bytes((tag,)) + length(n)


def tlv(tag: int, content: bytes) -> bytes:
    return head(tag, len(content)) + content


def integer(value: int) -> bytes:
    """DER INTEGER (two's complement, minimal)."""
    size = max(1, (value + (value < 0)).bit_length() // 8 + 1)
    return tlv(0x02, value.to_bytes(size, "big", signed=True))


def read(buf: bytes, pos: int, end: int | None = None) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at ``pos``; strict DER, inside ``end``."""
    end = len(buf) if end is None else end
    if pos + 2 > end:
        raise DerError("truncated")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tag")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        n = first
    else:
        k = first & 0x7F
        if k == 0 or k > 4 or pos + k > end:
            raise DerError("indefinite or oversized length")
        n = int.from_bytes(buf[pos:pos + k], "big")
        if n < 0x80 or buf[pos] == 0:
            raise DerError("non-minimal length")
        pos += k
    if pos + n > end:
        raise DerError("truncated")
    return tag, pos, pos + n


def expect(buf: bytes, pos: int, tag: int, end: int | None = None) -> tuple[int, int]:
    """(content start, content end) of a TLV that must carry ``tag``: :func:`read`'s refusals, then the tag's.

    (A copy of read's checks written out here saved one call per TLV, about 1 µs a statement: not worth
    two parsers to keep equal.)"""
    got, start, stop = read(buf, pos, end)
    if got != tag:
        raise DerError(f"tag {got:#x} where {tag:#x} was expected")
    return start, stop


def read_integer(buf: bytes, start: int, stop: int) -> int:
    if stop == start:
        raise DerError("empty integer")
    if stop - start > 1 and ((buf[start] == 0 and buf[start + 1] < 0x80)
                             or (buf[start] == 0xFF and buf[start + 1] >= 0x80)):
        raise DerError("non-minimal integer")
    return int.from_bytes(buf[start:stop], "big", signed=True)
