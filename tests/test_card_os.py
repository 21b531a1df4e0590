"""The card OS: class and instruction checks, SELECT, response and command chaining, power, rollback."""
from __future__ import annotations

import pytest
from conftest import PIN

from semper.card_applet_sim import tlv
from semper.card_applet_sim.os import ATR
from semper.card_applet_sim.sw import CardError
from semper.hardware import errors
from semper.hardware.iso7816 import Apdu
from semper.hardware.purse import PurseSession
from semper.hardware.transport import InProcessConnection

H = bytes.fromhex
PURSE_AID = H("F053454D50455201")
PSAM_AID = H("F053454D50455202")
SELECT_PURSE = H("00A4040C 08") + PURSE_AID
READ_PURSE = H("80500000 00")


def tx(card, raw: bytes | str) -> tuple[bytes, int]:
    resp = card.transmit(H(raw) if isinstance(raw, str) else raw)
    assert isinstance(resp, bytes) and len(resp) >= 2
    return resp[:-2], (resp[-2] << 8) | resp[-1]


@pytest.fixture
def selected(card_os):
    assert tx(card_os, SELECT_PURSE) == (b"", 0x9000)
    return card_os


class Recorder(InProcessConnection):
    """An in-process connection that keeps every C-APDU and R-APDU."""

    def __init__(self, card) -> None:
        super().__init__(card)
        self.log: list[tuple[bytes, bytes]] = []

    def transmit(self, apdu: bytes) -> bytes:
        resp = super().transmit(apdu)
        self.log.append((apdu, resp))
        return resp


# ---- ATR and power ----------------------------------------------------------------------------
def test_atr_is_well_formed(card_os) -> None:
    assert card_os.atr == ATR == card_os.reset() == card_os.power_on()
    assert ATR[0] == 0x3B and b"SEMPER-SIM" in ATR
    check = 0
    for b in ATR[1:]:
        check ^= b
    assert check == 0, "TCK must make T0..TCK XOR to zero"


# ---- class byte ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cla", [0xFF, 0x20, 0x2F, 0x30, 0x3F])
def test_invalid_class_is_6e00(selected, cla: int) -> None:
    assert tx(selected, bytes([cla, 0x50, 0, 0, 0])) == (b"", 0x6E00)
    assert tx(selected, bytes([cla, 0xA4, 4, 0, 8]) + PURSE_AID) == (b"", 0x6E00)


@pytest.mark.parametrize("cla", [0x01, 0x02, 0x03, 0x40, 0x41, 0x60, 0x7F, 0x81, 0x83])
def test_logical_channel_is_6881(selected, cla: int) -> None:
    assert tx(selected, bytes([cla, 0x50, 0, 0, 0])) == (b"", 0x6881)


@pytest.mark.parametrize("cla", [0x04, 0x08, 0x0C, 0x84, 0x88, 0x8C])
def test_secure_messaging_is_6882(selected, cla: int) -> None:
    assert tx(selected, bytes([cla, 0x50, 0, 0, 0])) == (b"", 0x6882)


def test_applets_check_iso_versus_proprietary_class(selected) -> None:
    assert tx(selected, "00500000 00") == (b"", 0x6E00)                     # READ PURSE is proprietary
    assert tx(selected, "80200081 04" + PIN.hex()) == (b"", 0x6E00)         # VERIFY is ISO
    assert tx(selected, READ_PURSE)[1] == 0x9000


# ---- instruction byte -------------------------------------------------------------------------
@pytest.mark.parametrize("cla", [0x00, 0x80])
@pytest.mark.parametrize("ins", [0x60, 0x61, 0x6C, 0x6F, 0x90, 0x9F])
def test_ins_6x_9x_is_6d00(selected, cla: int, ins: int) -> None:
    assert tx(selected, bytes([cla, ins, 0, 0, 0])) == (b"", 0x6D00)


def test_unknown_ins_is_6d00(selected) -> None:
    assert tx(selected, "80120000 00") == (b"", 0x6D00)


def test_no_applet_selected_is_6d00(card_os) -> None:
    card_os.reset()
    assert tx(card_os, READ_PURSE) == (b"", 0x6D00)
    assert tx(card_os, "00200081") == (b"", 0x6D00)


# ---- SELECT -----------------------------------------------------------------------------------
def _fci(data: bytes) -> tuple[bytes, bytes]:
    outer = tlv.decode(data)
    inner = tlv.decode(outer[0x6F])
    return inner[0x84], tlv.decode(inner[0xA5])[0x50]


def test_select_by_full_aid_returns_fci(card_os) -> None:
    data, sw = tx(card_os, H("00A40400 08") + PURSE_AID + H("00"))
    assert sw == 0x9000
    assert _fci(data) == (PURSE_AID, b"semper e-purse")
    assert tx(card_os, READ_PURSE)[1] == 0x9000


@pytest.mark.parametrize("prefix_len", [1, 5, 7])
def test_select_by_partial_aid(card_os, prefix_len: int) -> None:
    data, sw = tx(card_os, bytes([0, 0xA4, 4, 0, prefix_len]) + PURSE_AID[:prefix_len] + H("00"))
    assert sw == 0x9000 and _fci(data)[0] == PURSE_AID
    assert tx(card_os, READ_PURSE)[1] == 0x9000


def test_partial_aid_on_the_psam_card_selects_the_psam(psam_os) -> None:
    data, sw = tx(psam_os, H("00A40400 06") + PSAM_AID[:6] + H("00"))
    assert sw == 0x9000 and _fci(data) == (PSAM_AID, b"semper PSAM")


def test_select_without_le_announces_the_fci(card_os) -> None:
    data, sw = tx(card_os, H("00A40400 08") + PURSE_AID)
    assert data == b"" and sw >> 8 == 0x61
    fci, sw2 = tx(card_os, bytes([0, 0xC0, 0, 0, sw & 0xFF]))
    assert sw2 == 0x9000 and len(fci) == sw & 0xFF and _fci(fci)[0] == PURSE_AID


def test_select_p2_0c_returns_no_fci(card_os) -> None:
    assert tx(card_os, H("00A4040C 08") + PURSE_AID + H("00")) == (b"", 0x9000)
    assert tx(card_os, H("00C00000 00")) == (b"", 0x6985)          # and nothing is waiting either
    assert tx(card_os, READ_PURSE)[1] == 0x9000


@pytest.mark.parametrize("aid", [H("A000000003"), PSAM_AID, PURSE_AID + H("00"), H("F153")])
def test_unknown_aid_is_6a82_and_keeps_the_selection(selected, aid: bytes) -> None:
    assert tx(selected, bytes([0, 0xA4, 4, 0, len(aid)]) + aid) == (b"", 0x6A82)
    assert tx(selected, READ_PURSE)[1] == 0x9000


@pytest.mark.parametrize("raw, sw", [
    ("00A40000 08" + PURSE_AID.hex(), 0x6A82),    # select by file id: no file system
    ("00A40200 02 3F00", 0x6A82),
    ("00A40404 08" + PURSE_AID.hex(), 0x6A86),
    ("00A40401 08" + PURSE_AID.hex(), 0x6A86),
    ("00A40400 11" + "F0" * 17, 0x6700),           # AID longer than 16 bytes
    ("00A40400 00", None),                         # case 2 (no AID): 6700 ...
])
def test_select_parameter_errors(card_os, raw: str, sw: int | None) -> None:
    assert tx(card_os, raw) == (b"", sw or 0x6700)
    assert tx(card_os, READ_PURSE) == (b"", 0x6D00)  # ... and nothing got selected


# ---- response chaining ------------------------------------------------------------------------
def test_certificate_read_is_chained_with_61xx(selected) -> None:
    cert = selected.store.get("purse/cert")
    assert len(cert) > 256
    data, sw = tx(selected, "80520100 00")               # Le = 256
    assert len(data) == 256
    rest = len(cert) - 256
    assert sw == 0x6100 | (min(rest, 256) & 0xFF)
    got = bytearray(data)
    while sw >> 8 == 0x61:
        announced = (sw & 0xFF) or 256
        part, sw = tx(selected, bytes([0x00, 0xC0, 0, 0, sw & 0xFF]))
        assert len(part) == min(announced, len(cert) - len(got))
        got += part
    assert sw == 0x9000
    assert bytes(got) == cert
    assert tx(selected, "00C00000 00") == (b"", 0x6985)  # everything was delivered


def test_small_le_forces_exact_parts(selected) -> None:
    cert = selected.store.get("purse/cert")
    data, sw = tx(selected, "80520100 10")
    assert data == cert[:16] and sw >> 8 == 0x61
    got, offset = bytearray(data), 16
    while sw >> 8 == 0x61:
        announced = (sw & 0xFF) or 256
        assert announced == min(len(cert) - offset, 256)
        part, sw = tx(selected, "00C00000 20")
        assert part == cert[offset:offset + 0x20], f"wrong part at offset {offset}"
        offset += len(part)
        got += part
    assert sw == 0x9000 and bytes(got) == cert and offset == len(cert)


def test_extended_le_takes_everything_at_once(selected) -> None:
    assert tx(selected, "80520100 00 0000") == (selected.store.get("purse/cert"), 0x9000)


def test_get_response_larger_than_the_rest(selected) -> None:
    cert = selected.store.get("purse/cert")
    first = len(cert) - 100
    data, sw = tx(selected, H("80520100 00") + first.to_bytes(2, "big"))     # extended Le
    assert data == cert[:first] and sw == 0x6100 | 100
    assert tx(selected, "00C00000 00") == (cert[first:], 0x9000)              # asks 256, gets 100


def test_case_1_command_with_an_answer_waits_for_get_response(selected) -> None:
    full, sw = tx(selected, READ_PURSE)
    assert sw == 0x9000
    data, sw = tx(selected, "80500000")                  # no Le at all
    assert data == b"" and sw == 0x6100 | len(full)
    assert tx(selected, bytes([0, 0xC0, 0, 0, len(full)])) == (full, 0x9000)


def test_get_response_with_nothing_pending_is_6985(selected) -> None:
    assert tx(selected, "00C00000 00") == (b"", 0x6985)
    assert tx(selected, "00C00000") == (b"", 0x6985)


def test_another_command_drops_the_pending_response(selected) -> None:
    assert tx(selected, "80520100 10")[1] >> 8 == 0x61
    assert tx(selected, READ_PURSE)[1] == 0x9000
    assert tx(selected, "00C00000 00") == (b"", 0x6985)
    # an applet error drops it as well
    assert tx(selected, "80520100 10")[1] >> 8 == 0x61
    assert tx(selected, "80560900 00") == (b"", 0x6A83)  # no 9th log record
    assert tx(selected, "00C00000 00") == (b"", 0x6985)


@pytest.mark.parametrize("raw, sw", [("80C00000 00", 0x6E00), ("00C00100 00", 0x6A86), ("00C00001 00", 0x6A86),
                                     ("00C00000 01 00", 0x6700)])
def test_get_response_parameter_errors(selected, raw: str, sw: int) -> None:
    assert tx(selected, "80520100 10")[1] >> 8 == 0x61
    assert tx(selected, raw) == (b"", sw)


# ---- command chaining -------------------------------------------------------------------------
@pytest.fixture
def debit_data(psam, purse, scheme):
    """The DEBIT payload (PSAM certificate, request, signature) for a card loaded with 1000."""
    from semper.client.payment import card_purse
    card_purse.load(purse, scheme, 1000, PIN)
    info = purse.info()
    _req, signed = psam.begin_debit(info.card_number, info.debit_counter + 1, 125, info.currency)
    cert = psam.certificate()
    return (tlv.encode(0x01, cert) + tlv.encode(0x02, signed.record) + tlv.encode(0x03, signed.signature))


def test_command_chaining_assembles_a_debit(buyer_card, debit_data: bytes) -> None:
    conn = Recorder(buyer_card.card)
    purse = PurseSession(conn)
    purse.apdu.chunk = 50
    conn.log.clear()
    raw = purse.apdu.send(Apdu(0x80, 0x54, 0, 0, debit_data, 0))
    parts = [c for c, _ in conn.log if c[1] == 0x54]
    assert len(parts) == -(-len(debit_data) // 50) > 10
    assert all(c[0] == 0x90 for c in parts[:-1]) and parts[-1][0] == 0x80
    assert all(r == H("9000") for c, r in conn.log if c[0] == 0x90)
    assert b"".join(c[5:5 + c[4]] for c in parts) == debit_data
    assert raw[:4] == b"DPF1"
    assert purse.info().balance == 1000 - 125


def test_extended_length_debit(buyer_card, debit_data: bytes) -> None:
    conn = Recorder(buyer_card.card)
    purse = PurseSession(conn)
    purse.apdu.extended = True
    conn.log.clear()
    raw = purse.apdu.send(Apdu(0x80, 0x54, 0, 0, debit_data, 0))
    assert len(conn.log) == 1 and conn.log[0][0][4] == 0x00          # one extended-length APDU
    assert raw[:4] == b"DPF1" and purse.info().balance == 875


def _chain(data: bytes, cla: int = 0x80, ins: int = 0x54, size: int = 100) -> list[bytes]:
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    return [bytes([cla | (0x10 if i < len(parts) - 1 else 0), ins, 0, 0, len(p)]) + p for i, p in enumerate(parts)]


@pytest.mark.parametrize("intruder", [
    "90560100 01 00",        # other INS, still chained
    "80560100 00",           # other INS, unchained
    "90540100 01 00",        # same INS, other P1
    "90540001 01 00",        # same INS, other P2
    "10540000 01 00",        # same INS, other class
])
def test_mismatched_header_mid_chain_is_6883_and_drops_the_chain(
        buyer_card, purse, debit_data: bytes, intruder: str) -> None:
    card = buyer_card.card
    assert tx(card, SELECT_PURSE)[1] == 0x9000
    before = card.store.snapshot()
    parts = _chain(debit_data)
    assert tx(card, parts[0]) == (b"", 0x9000)
    assert tx(card, intruder) == (b"", 0x6883)
    # the rest of the old chain is now a chain of its own, without the first part: not a debit
    for p in parts[1:-1]:
        assert tx(card, p) == (b"", 0x9000)
    assert tx(card, parts[-1])[1] == 0x6A80
    assert card.store.snapshot() == before
    # a complete chain afterwards is assembled from scratch and works
    for p in parts[:-1]:
        assert tx(card, p) == (b"", 0x9000)
    data, sw = tx(card, parts[-1])                       # no Le: the proof waits behind 61xx
    assert data == b"" and sw >> 8 == 0x61
    assert purse.info().balance == 875


def test_chained_data_longer_than_65535_is_6700(selected) -> None:
    first = H("90540000 00 9C40") + bytes(40000)
    second = H("80540000 00 9C40") + bytes(40000)
    assert tx(selected, first) == (b"", 0x9000)
    assert tx(selected, second) == (b"", 0x6700)
    assert tx(selected, READ_PURSE)[1] == 0x9000          # the chain is gone


def test_power_off_drops_a_chain(buyer_card, debit_data: bytes) -> None:
    card = buyer_card.card
    parts = _chain(debit_data)
    assert tx(card, SELECT_PURSE)[1] == 0x9000
    for p in parts[:-1]:
        assert tx(card, p) == (b"", 0x9000)
    card.power_off()
    assert tx(card, SELECT_PURSE)[1] == 0x9000
    assert tx(card, parts[-1])[1] == 0x6A80               # alone, the last part is no debit


# ---- power clears transient state --------------------------------------------------------------
@pytest.mark.parametrize("how", ["power_off", "reset"])
def test_power_cycle_clears_pin_validation(purse, card_os, how: str) -> None:
    purse.verify_pin(PIN)
    assert purse.pin_verified()
    purse.initialize_load(100, 978)                        # allowed while verified
    getattr(card_os, how)()
    assert tx(card_os, READ_PURSE) == (b"", 0x6D00)        # nothing selected after power-up
    purse.select()
    assert not purse.pin_verified()
    with pytest.raises(errors.PinRequiredError):
        purse.initialize_load(100, 978)
    assert purse.info().pin_tries == 3                     # asking spent no try


def test_power_off_drops_pending_response(selected) -> None:
    assert tx(selected, "80520100 10")[1] >> 8 == 0x61
    selected.power_off()
    assert not selected.powered
    assert tx(selected, "00C00000 00") == (b"", 0x6985)    # transmit powers the card up again
    assert selected.powered


# ---- each command is one transaction ------------------------------------------------------------
@pytest.mark.parametrize("failure, sw", [(CardError(0x6A80, "refused"), 0x6A80), (RuntimeError("bug"), 0x6F00),
                                         (KeyError("bug"), 0x6F00)], ids=["status word", "RuntimeError", "KeyError"])
def test_failing_command_rolls_back(selected, monkeypatch: pytest.MonkeyPatch, failure: Exception,
                                    sw: int) -> None:
    applet = selected.selected
    before = selected.store.snapshot()

    def broken(cmd):
        selected.store.put_int("purse/balance", 10**6)
        selected.store.delete("purse/cert")
        raise failure

    monkeypatch.setattr(applet, "_read_purse", broken)
    assert tx(selected, READ_PURSE) == (b"", sw)
    assert not selected.store.in_transaction
    assert selected.store.snapshot() == before
    assert selected.store.get_int("purse/balance") == 0
    monkeypatch.undo()
    assert tx(selected, READ_PURSE)[1] == 0x9000


def test_wrong_pin_try_is_committed_even_though_the_command_fails(selected) -> None:
    assert tx(selected, "00200081 04 39393939") == (b"", 0x63C2)
    assert selected.store.get_int("card/pin/tries") == 2
    assert not selected.store.in_transaction
