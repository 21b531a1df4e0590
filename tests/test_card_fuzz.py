"""Fuzzing the card OS with random and mutated APDUs, and a state machine over a purse and a PSAM.

Whatever arrives, the card answers with a status word (never an exception, never 6F00), leaves no
transaction open, and changes its committed state only when it says 9000/61xx (a wrong PIN or PUK
guess may cost a try, and nothing else).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from conftest import EUR, MAX_BALANCE, PIN, PUK
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from semper.card_applet_sim.os import CardOS
from semper.card_applet_sim.sw import SW
from semper.client.payment import card_purse
from semper.client.payment.errors import InstrumentError, InsufficientFunds
from semper.hardware import errors, tlv
from semper.hardware.iso7816 import AID, Apdu
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.purse_records import Signed
from semper.hardware.simulator import open_card
from semper.hardware.transport import InProcessConnection

KNOWN_SW = {int(s) for s in SW}
PIN_INS = {0x20, 0x24, 0x2C}                        # a refused guess may cost a try
TRY_KEYS = {"card/pin/tries", "card/puk/tries"}
READ_ONLY_INS = {0x50, 0x52, 0x56, 0xA4, 0xC0, 0x36, 0x38}
KNOWN_INS = [0xA4, 0xC0, 0x20, 0x24, 0x2C, 0x40, 0x42, 0x50, 0x52, 0x54, 0x56, 0x30, 0x32, 0x34, 0x36, 0x38,
             0xE0, 0xE2, 0xEE]
HEADER_BYTES = [0x00, 0x10, 0x80, 0x90, 0xFF, 0x01, 0x0C, 0x20, 0x61, *KNOWN_INS]


def _debit_tlv(cert: bytes, signed: Signed) -> bytes:
    return tlv.encode(0x01, cert) + tlv.encode(0x02, signed.record) + tlv.encode(0x03, signed.signature)


def _chain(cla: int, ins: int, data: bytes, size: int = 200) -> list[bytes]:
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    return [Apdu(cla | (0x10 if i < len(parts) - 1 else 0), ins, 0, 0, p).encode() for i, p in enumerate(parts)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, fresh_images, scheme):
    """A loaded purse card and a PSAM (module-scoped: hypothesis examples share them) and templates
    of valid commands for each, some of which would really change the card if they got through."""
    buyer_image, psam_image = fresh_images(tmp_path_factory.mktemp("fuzz"))
    card, psam_card = CardOS.open(buyer_image, sync=False), CardOS.open(psam_image, sync=False)
    purse, psam = PurseSession(InProcessConnection(card)), PsamSession(InProcessConnection(psam_card))
    card_purse.load(purse, scheme, 5000, PIN)
    card_purse.purchase(purse, psam, 100, scheme.root_cert)
    info = purse.info()
    card_cert, psam_cert = purse.certificate(), psam.certificate()
    # a proof the PSAM has not seen yet (COMPLETE DEBIT would accept it once)
    _r, req = psam.begin_debit(info.card_number, info.debit_counter + 1, 50, EUR)
    _p, proof = purse.debit(psam_cert, req)
    # a request for the card's next counter (DEBIT would accept it once)
    _r, next_req = psam.begin_debit(info.card_number, info.debit_counter + 2, 75, EUR)
    # a pending load and the issuer's answer (LOAD would accept it once)
    lrq, _s = purse.initialize_load(100, EUR)
    lcm = lrq.command()
    load_blob = lcm + scheme.sign_load(lcm)
    debit_data = _debit_tlv(psam_cert, next_req)
    complete_data = _debit_tlv(card_cert, proof)
    purse_templates = [
        Apdu(0x00, 0xA4, 0x04, 0x00, AID.PURSE.value, 0).encode(),
        Apdu(0x00, 0xA4, 0x04, 0x0C, AID.PURSE.value[:5]).encode(),
        Apdu(0x80, 0x50, 0, 0, b"", 0).encode(),
        Apdu(0x80, 0x52, 1, 0, b"", 0x10).encode(),
        Apdu(0x80, 0x56, 1, 0, b"", 0).encode(),
        Apdu(0x00, 0xC0, 0, 0, b"", 0).encode(),
        Apdu(0x00, 0x20, 0x00, 0x81).encode(),
        Apdu(0x00, 0x20, 0x00, 0x81, b"9999").encode(),
        Apdu(0x00, 0x24, 0x00, 0x81, b"\x04" + b"9999" + b"5678").encode(),
        Apdu(0x00, 0x2C, 0x00, 0x81, b"\x08" + b"99999999" + b"5678").encode(),
        Apdu(0x80, 0x40, 0, 0, (100).to_bytes(4, "big") + EUR.to_bytes(2, "big"), 0).encode(),
        Apdu(0x80, 0x42, 0, 0, load_blob, 0).encode(),
        Apdu(0x80, 0x54, 0, 0, debit_data, 0).encode(),
        *_chain(0x80, 0x54, debit_data),
        Apdu(0x80, 0xE2, 0, 0, b"", 0).encode(),
        Apdu(0x80, 0xE0, 1, 0, bytes(14)).encode(),
        Apdu(0x80, 0xE0, 2, 0, b"0000").encode(),
        Apdu(0x80, 0xEE, 0, 0).encode(),
    ]
    psam_templates = [
        Apdu(0x00, 0xA4, 0x04, 0x00, AID.PSAM.value, 0).encode(),
        Apdu(0x80, 0x50, 0, 0, b"", 0).encode(),
        Apdu(0x80, 0x52, 1, 0, b"", 0).encode(),
        Apdu(0x80, 0x30, 0, 0, info.card_number + (9).to_bytes(4, "big") + (10).to_bytes(4, "big")
             + EUR.to_bytes(2, "big"), 0).encode(),
        Apdu(0x80, 0x32, 0, 0, complete_data, 0).encode(),
        *_chain(0x80, 0x32, complete_data),
        Apdu(0x80, 0x34, 0, 0, b"", 0).encode(),
        Apdu(0x80, 0x36, 0, 0, (1).to_bytes(4, "big"), 0).encode(),
        Apdu(0x80, 0x38, 0, 0, (1).to_bytes(4, "big"), 0).encode(),
        Apdu(0x80, 0xE0, 4, 0, bytes(65)).encode(),
        Apdu(0x80, 0xEE, 0, 0).encode(),
    ]
    card.reset()
    yield {"purse": (card, purse_templates, AID.PURSE.value), "psam": (psam_card, psam_templates, AID.PSAM.value)}
    card.close()
    psam_card.close()


@st.composite
def mutated(draw, templates: list[bytes]) -> bytes:
    raw = bytearray(draw(st.sampled_from(templates)))
    byte = st.one_of(st.integers(0, 255), st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate", "append", "length", "header"]))
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "set" and raw:
            raw[pos] = draw(byte)
        elif op == "flip" and raw:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and raw:
            del raw[pos:pos + draw(st.integers(1, 4))]
        elif op == "truncate":
            del raw[pos:]
        elif op == "append":
            raw += draw(st.binary(min_size=1, max_size=8))
        elif op == "length" and len(raw) > 4:
            raw[4] = draw(st.sampled_from([0, 1, 0x7F, 0xFF, len(raw) - 5, len(raw) - 6, len(raw) - 4])) & 0xFF
        elif op == "header" and len(raw) >= 4:
            raw[draw(st.integers(0, 3))] = draw(st.one_of(st.sampled_from(HEADER_BYTES), byte, st.integers(0, 16)))
    return bytes(raw)


def _random_apdu() -> st.SearchStrategy[bytes]:
    small = st.one_of(st.integers(0, 16), st.integers(0, 255))
    header = st.tuples(st.sampled_from([0x00, 0x80, 0x90, 0x10, 0xFF, 0x84]),
                       st.one_of(st.sampled_from(KNOWN_INS), st.integers(0, 255)), small, small).map(bytes)
    return st.one_of(st.binary(max_size=300), st.builds(lambda h, b: h + b, header, st.binary(max_size=40)))


def _check_one(card: CardOS, raw: bytes) -> int:
    before = card.store.snapshot()
    resp = card.transmit(raw)
    assert isinstance(resp, bytes) and len(resp) >= 2, f"no status word for {raw.hex()}"
    sw = (resp[-2] << 8) | resp[-1]
    assert sw in KNOWN_SW or sw >> 8 == 0x61 or 0x63C0 <= sw <= 0x63CF, f"{raw.hex()} -> invalid SW {sw:04X}"
    assert sw != SW.UNKNOWN, f"{raw.hex()} caused an internal error"
    assert not card.store.in_transaction
    if sw != 0x9000 and sw >> 8 != 0x61:
        assert len(resp) == 2, "an error carries no data"
    after = card.store.snapshot()
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    ins = raw[1] if len(raw) > 1 else None
    if sw == 0x9000 or sw >> 8 == 0x61:
        if ins in READ_ONLY_INS:
            assert not changed, f"read-only {raw.hex()} changed {changed}"
    elif 0x63C0 <= sw <= 0x63CF or sw == 0x6983:
        assert ins in PIN_INS
        assert changed <= TRY_KEYS, f"{raw.hex()} -> {sw:04X} changed {changed}"
    else:
        assert not changed, f"{raw.hex()} -> {sw:04X} changed {changed}"
    for key in ("purse/balance",):
        if key in after:
            assert 0 <= card.store.get_int(key) <= MAX_BALANCE
    for key in ("purse/load_ctr", "purse/debit_ctr", "purse/log_count", "psam/seq", "psam/batch_no", "psam/total"):
        if key in before:
            assert int.from_bytes(after[key], "big", signed=True) >= int.from_bytes(before[key], "big", signed=True)
    return sw


@pytest.mark.parametrize("which", ["purse", "psam"])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_apdus(world, which: str, data) -> None:
    card, templates, aid = world[which]
    card.reset()
    if data.draw(st.booleans()):
        assert card.transmit(Apdu(0x00, 0xA4, 0x04, 0x0C, aid).encode()) == b"\x90\x00"
    for raw in data.draw(st.lists(st.one_of(mutated(templates), st.sampled_from(templates)), min_size=1, max_size=6)):
        _check_one(card, raw)


@pytest.mark.parametrize("which", ["purse", "psam"])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_apdus(world, which: str, data) -> None:
    card, _templates, aid = world[which]
    card.reset()
    assert card.transmit(Apdu(0x00, 0xA4, 0x04, 0x0C, aid).encode()) == b"\x90\x00"
    for raw in data.draw(st.lists(_random_apdu(), min_size=1, max_size=5)):
        _check_one(card, raw)


# ---- the purse and the PSAM as a state machine ---------------------------------------------------
def test_purse_and_psam_state_machine(fresh_images, scheme) -> None:
    class PurseAndPsam(RuleBasedStateMachine):
        """Model: money in (loads), money out (debits), PIN tries; the cards must agree at every step."""

        def __init__(self) -> None:
            super().__init__()
            self.tmp = tempfile.TemporaryDirectory()
            self.buyer_image, self.psam_image = fresh_images(Path(self.tmp.name))
            self.c1 = self.c2 = None
            self.loads = self.debits = self.batch_total = 0
            self.n_loads = self.n_debits = 0
            self.pin_tries = 3
            self.verified = False
            self.used_load: Signed | None = None
            self.used_request: Signed | None = None
            self.used_proof: Signed | None = None
            self.high = (0, 0, 0, 0)
            self._open()

        def _open(self) -> None:
            self.c1, self.c2 = open_card(self.buyer_image, sync=False), open_card(self.psam_image, sync=False)
            self.purse, self.psam = PurseSession(self.c1), PsamSession(self.c2)
            self.verified = False

        def teardown(self) -> None:
            self.c1.close()
            self.c2.close()
            self.tmp.cleanup()

        @property
        def balance(self) -> int:
            return self.loads - self.debits

        # -- rules ------------------------------------------------------------------------
        @rule()
        def verify_pin(self) -> None:
            if self.pin_tries == 0:
                with pytest.raises(errors.PinBlockedError):
                    self.purse.verify_pin(PIN)
                return
            self.purse.verify_pin(PIN)
            self.pin_tries, self.verified = 3, True

        @rule()
        def wrong_pin(self) -> None:
            if self.pin_tries == 0:
                with pytest.raises(errors.PinBlockedError):
                    self.purse.verify_pin(b"0000")
                return
            with pytest.raises(errors.WrongPinError) as e:
                self.purse.verify_pin(b"0000")
            self.pin_tries -= 1
            self.verified = False
            assert e.value.tries_left == self.pin_tries

        @rule()
        def unblock(self) -> None:
            self.purse.unblock_pin(PUK, PIN)
            self.pin_tries = 3

        @rule(amount=st.integers(1, 6000))
        def load(self, amount: int) -> None:
            if not self.verified:
                with pytest.raises(InstrumentError, match="PIN verified"):        # the card refuses (6982)
                    card_purse.load(self.purse, scheme, amount)
            elif self.balance + amount > MAX_BALANCE:
                with pytest.raises(InstrumentError, match="exceed its maximum balance"):     # (9F11)
                    card_purse.load(self.purse, scheme, amount)
            else:
                result = card_purse.load(self.purse, scheme, amount)
                self.loads += amount
                self.n_loads += 1
                command = result.confirmation
                assert command.balance == self.balance and command.load_counter == self.n_loads

        @precondition(lambda self: self.verified)
        @rule(amount=st.integers(1, 3000))
        def load_across_a_tear(self, amount: int) -> None:
            """INITIALIZE LOAD, the card is pulled, the issuer's answer arrives in a new session."""
            if self.balance + amount > MAX_BALANCE:
                return
            request, _s = self.purse.initialize_load(amount, EUR)
            command = request.command()
            signed = Signed(command, scheme.sign_load(command))
            self.tear()
            self.purse.load(signed)
            self.loads += amount
            self.n_loads += 1
            self.used_load = signed

        @rule(amount=st.integers(1, 3000))
        def purchase(self, amount: int) -> None:
            if amount > self.balance:
                with pytest.raises(InsufficientFunds):
                    card_purse.purchase(self.purse, self.psam, amount, scheme.root_cert)
                return
            result = card_purse.purchase(self.purse, self.psam, amount, scheme.root_cert)
            self.debits += amount
            self.batch_total += amount
            self.n_debits += 1
            self.used_proof = result.signed
            self.used_request = None

        @rule(amount=st.integers(1, 3000), lose_proof=st.booleans())
        def purchase_across_a_tear(self, amount: int, lose_proof: bool) -> None:
            """The card debits, then both cards are pulled before the PSAM has the proof."""
            if amount > self.balance:
                return
            info = self.purse.info()
            request, signed_request = self.psam.begin_debit(info.card_number, info.debit_counter + 1, amount, EUR)
            _p, proof = self.purse.debit(self.psam.certificate(), signed_request)
            self.tear()
            if lose_proof:                              # the answer never reached the host
                recovered = self.purse.find_debit_proof(request)
                assert recovered is not None
                assert recovered[1] == proof
            self.psam.complete_debit(self.purse.certificate(), proof)
            self.debits += amount
            self.batch_total += amount
            self.n_debits += 1
            self.used_request, self.used_proof = signed_request, proof

        @rule()
        def tear(self) -> None:
            self.c1.close()
            self.c2.close()
            self._open()

        @precondition(lambda self: self.used_load is not None)
        @rule()
        def replay_load(self) -> None:
            with pytest.raises(errors.ReplayError):
                self.purse.load(self.used_load)

        @precondition(lambda self: self.used_request is not None)
        @rule()
        def replay_debit_request(self) -> None:
            with pytest.raises(errors.ReplayError):
                self.purse.debit(self.psam.certificate(), self.used_request)

        @precondition(lambda self: self.used_proof is not None)
        @rule()
        def replay_proof(self) -> None:
            with pytest.raises(errors.ReplayError):
                self.psam.complete_debit(self.purse.certificate(), self.used_proof)

        @rule()
        def close_batch(self) -> None:
            header, _signed = self.psam.close_batch()
            assert header.total == self.batch_total
            self.batch_total = 0

        # -- invariants -------------------------------------------------------------------
        @invariant()
        def money_is_conserved(self) -> None:
            info, pinfo = self.purse.info(), self.psam.info()
            assert info.balance == self.balance == self.loads - self.debits
            assert pinfo.lifetime_total == self.debits
            assert pinfo.batch_total == self.batch_total
            assert (info.load_counter, info.debit_counter) == (self.n_loads, self.n_debits)
            assert info.pin_tries == self.pin_tries
            counters = (info.load_counter, info.debit_counter, pinfo.sequence, pinfo.batch_number)
            assert all(now >= before for now, before in zip(counters, self.high, strict=True)), "a counter went back"
            self.high = counters

    run_state_machine_as_test(PurseAndPsam, settings=settings(max_examples=100, stateful_step_count=40,
                                                                deadline=None))
