"""C-APDU parsing on the card (card_applet_sim.apdu) and the host encoder that must agree with it."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semper.card_applet_sim import apdu
from semper.card_applet_sim.sw import CardError
from semper.hardware.iso7816 import Apdu

H = bytes.fromhex


# ---- well-formed cases ------------------------------------------------------------------------
@pytest.mark.parametrize("raw, data, ne, extended", [
    # case 1
    (H("00A40400"), b"", 0, False),
    # case 2 short: Le 1..255, and 00 meaning 256
    (H("80500000 10"), b"", 0x10, False),
    (H("80500000 FF"), b"", 255, False),
    (H("80500000 00"), b"", 256, False),
    # case 3 short
    (H("80540000 03 AABBCC"), H("AABBCC"), 0, False),
    (H("80540000 01 00"), H("00"), 0, False),
    (H("80540000 FF") + bytes(range(255)), bytes(range(255)), 0, False),
    # case 4 short
    (H("80540000 03 AABBCC 00"), H("AABBCC"), 256, False),
    (H("80540000 03 AABBCC 07"), H("AABBCC"), 7, False),
    (H("80540000 FF") + bytes(range(255)) + H("80"), bytes(range(255)), 0x80, False),
    # case 2 extended: 00 Le Le, 0000 meaning 65536
    (H("80500000 00 0000"), b"", 65536, True),
    (H("80500000 00 0102"), b"", 258, True),
    (H("80500000 00 0001"), b"", 1, True),
    # case 3 extended
    (H("80540000 00 0003 AABBCC"), H("AABBCC"), 0, True),
    (H("80540000 00 012C") + bytes(300), bytes(300), 0, True),
    # case 4 extended
    (H("80540000 00 0003 AABBCC 0000"), H("AABBCC"), 65536, True),
    (H("80540000 00 0003 AABBCC 0102"), H("AABBCC"), 258, True),
    (H("80540000 00 012C") + bytes(300) + H("FFFF"), bytes(300), 65535, True),
])
def test_parse_cases(raw: bytes, data: bytes, ne: int, extended: bool) -> None:
    cmd = apdu.parse(raw)
    assert (cmd.cla, cmd.ins, cmd.p1, cmd.p2) == tuple(raw[:4])
    assert cmd.data == data
    assert cmd.ne == ne
    assert cmd.extended is extended


def test_chain_bit_and_header() -> None:
    cmd = apdu.parse(H("90540000 02 0102"))
    assert cmd.chained
    assert cmd.header == (0x80, 0x54, 0x00, 0x00)
    assert not apdu.parse(H("80540000 02 0102")).chained


# ---- every malformed length -> 6700 ---------------------------------------------------------
MALFORMED = {
    "empty": b"",
    "1 byte": H("00"),
    "3 bytes": H("00A404"),
    "short Lc larger than the data": H("80540000 05 AABBCC"),
    "short Lc smaller than the data (2 extra)": H("80540000 01 AABBCC"),
    "short Lc with 3 trailing bytes": H("80540000 01 AA BBCCDD"),
    "short Lc with 2 trailing bytes": H("80540000 02 AABB 0000"),
    "6 bytes with b4=0": H("80500000 00 00"),
    "6 bytes with b4=0 nonzero b5": H("80500000 00 05"),
    "extended Lc=0 with 1 byte": H("80540000 00 0000 00"),
    "extended Lc=0 with 2 bytes (looks like case 4E with Le)": H("80540000 00 0000 0000"),
    "extended Lc=0 with more": H("80540000 00 0000 AABBCCDD"),
    "truncated extended data": H("80540000 00 0005 AABB"),
    "extended data one byte short": H("80540000 00 0003 AABB"),
    "extended data with one Le byte": H("80540000 00 0003 AABBCC 00"),
    "extended data with three trailing bytes": H("80540000 00 0003 AABBCC 000000"),
    "extended Lc larger than the data, plus Le": H("80540000 00 0100") + bytes(200) + H("0000"),
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_lengths_are_6700(raw: bytes) -> None:
    with pytest.raises(CardError) as e:
        apdu.parse(raw)
    assert e.value.sw == 0x6700


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_lengths_reach_no_applet(card_os, raw: bytes) -> None:
    """The card answers exactly 6700 (no data), before selection or dispatch matters."""
    assert card_os.transmit(H("00A4040C 08 F053454D50455201")) == H("9000")
    before = card_os.store.snapshot()
    assert card_os.transmit(raw) == H("6700")
    assert card_os.store.snapshot() == before
    # the applet is still selected and working
    assert card_os.transmit(H("80500000 00"))[-2:] == H("9000")


# ---- the host encoder and the card parser agree -----------------------------------------------
def _expected_ne(le: int | None, extended: bool) -> int:
    if le is None:
        return 0
    if le == 0:
        return 65536 if extended else 256
    return le


headers = st.tuples(*(st.integers(0, 255) for _ in range(4)))
payloads = st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=600))
les = st.one_of(st.none(), st.integers(0, 256), st.integers(0, 65536),
                st.sampled_from([0, 1, 255, 256, 257, 65535, 65536]))


@settings(max_examples=300, deadline=None)
@given(headers, payloads, les)
def test_host_encoding_round_trips_default_form(head: tuple[int, int, int, int], data: bytes, le: int | None) -> None:
    encoded = Apdu(*head, data, le).encode()
    cmd = apdu.parse(encoded)
    extended = len(data) > 255 or (le is not None and le > 256)
    assert (cmd.cla, cmd.ins, cmd.p1, cmd.p2) == head
    assert cmd.data == data
    assert cmd.ne == _expected_ne(le, extended)
    assert cmd.extended is (extended and (bool(data) or le is not None))


@settings(max_examples=300, deadline=None)
@given(headers, payloads, les)
def test_host_encoding_round_trips_extended_form(head: tuple[int, int, int, int], data: bytes, le: int | None) -> None:
    encoded = Apdu(*head, data, le).encode(extended=True)
    cmd = apdu.parse(encoded)
    assert (cmd.cla, cmd.ins, cmd.p1, cmd.p2) == head
    assert cmd.data == data
    assert cmd.ne == _expected_ne(le, True)
    if data or le is not None:
        assert cmd.extended


@settings(max_examples=300, deadline=None)
@given(headers, st.binary(max_size=255), st.one_of(st.none(), st.integers(0, 256)))
def test_host_encoding_round_trips_short_form(head: tuple[int, int, int, int], data: bytes, le: int | None) -> None:
    encoded = Apdu(*head, data, le).encode(extended=False)
    assert len(encoded) == 4 + (len(data) + 1 if data else 0) + (0 if le is None else 1)
    cmd = apdu.parse(encoded)
    assert cmd.data == data
    assert cmd.ne == _expected_ne(le, False)
    assert not cmd.extended


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=12), st.binary(min_size=4, max_size=400),
                 st.builds(lambda h, body: h + b"\x00" + body, st.binary(min_size=4, max_size=4),
                           st.binary(max_size=300))))
def test_parse_is_total_and_canonical(raw: bytes) -> None:
    """Any bytes either parse into a command the host encodes back to the same bytes, or are 6700."""
    try:
        cmd = apdu.parse(raw)
    except CardError as e:
        assert e.sw == 0x6700
        return
    le = None if cmd.ne == 0 else cmd.ne
    assert Apdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, le).encode(extended=cmd.extended) == raw
