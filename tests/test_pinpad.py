"""PC/SC part 10 PIN pad: the feature list parser and the PIN_VERIFY_STRUCTURE layout.

vpcd has no PIN pad, so the pad path cannot run end to end here; what can be checked is that the
detection reads the feature TLV right and that the structure handed to the reader matches the
part 10 layout byte for byte (a reader would reject or misplace the PIN otherwise).
"""
from __future__ import annotations

import struct

from semper.hardware import readers


def test_feature_list_with_and_without_verify_pin_direct():
    with_pad = bytes.fromhex("0604423300060704423300071204423300120A0442330A0A")
    feats = readers.parse_features(with_pad)
    assert readers.FEATURE_VERIFY_PIN_DIRECT in feats and feats[0x07] == 0x42330007
    assert readers.FEATURE_VERIFY_PIN_DIRECT not in readers.parse_features(bytes.fromhex("120442330012"))
    assert readers.parse_features(b"") == {}


def test_verify_pin_structure_layout():
    template = bytes([0x00, 0x20, 0x00, 0x81, 0x08]) + b"\xff" * 8
    s = readers.verify_pin_structure(template)
    assert len(s) == 19 + len(template)
    (timeout, timeout2, fmt, block, length_fmt, extra, cond, nmsg, lang, idx, prologue, dlen) = struct.unpack(
        "<BBBBBHBBHB3sI", s[:19])
    assert fmt == 0x82                       # bytes, ASCII, left-justified, PIN at offset 0 of the data
    assert block == 0x08 and length_fmt == 0
    assert extra >> 8 == 4 and extra & 0xFF == 8      # min 4, max 8 digits
    assert cond == 0x02 and dlen == len(template) and s[19:] == template
    assert readers.scard_ctl_code(3400) == 0x42000D48
