"""The host's BER-TLV reader (hardware/tlv.py): what a card answer may and may not be."""
from __future__ import annotations

import pytest

from semper.hardware import tlv
from semper.hardware.errors import TransportError


def test_round_trip_of_short_long_and_two_byte_tags():
    data = tlv.encode(0x7C, b"\x01" * 3) + tlv.encode(0x7F49, b"\x02" * 200) + tlv.encode(0x53, b"\x03" * 300)
    assert tlv.decode(data) == {0x7C: b"\x01" * 3, 0x7F49: b"\x02" * 200, 0x53: b"\x03" * 300}


def test_a_duplicate_tag_is_refused_not_overwritten():
    """Before the fix the second value silently replaced the first (issue 13, item 10)."""
    data = tlv.encode(0x82, b"genuine signature") + tlv.encode(0x82, b"injected")
    with pytest.raises(TransportError, match="tag 82 twice"):
        tlv.decode(data)


@pytest.mark.parametrize("data", [b"\x53", b"\x53\x05abc", b"\x53\x84\x00\x00\x00\x01\x00", b"\x5f"])
def test_truncated_or_unsupported_lengths_are_refused(data):
    with pytest.raises(TransportError):
        tlv.decode(data)
