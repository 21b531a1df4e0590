"""The card through the real PC/SC stack: pcscd + vpcd, pyscard, OpenSC's opensc-tool, scriptor.

Every test here starts from the module's own pcscd (its own reader.conf, free ports) and stops it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import SCHEME_PIN

from semper.client.payment import card_purse
from semper.client.support.personalisation import CardProfile, personalise_psam, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware import errors, readers
from semper.hardware.iso7816 import AID
from semper.hardware.pcscd import VirtualCards
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card
from semper.hardware.transport import ApduSession, PcscConnection

pytestmark = pytest.mark.pcsc
PIN = b"4711"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pcsc")
    scheme = Scheme.load_or_create(folder / "scheme", SCHEME_PIN)
    buyer, psam = folder / "buyer.card", folder / "psam.card"
    personalise_purse_card(buyer, scheme, CardProfile(PIN, b"87654321"), sync=False)
    personalise_psam(psam, scheme, sync=False)
    with scheme, VirtualCards([buyer, psam], sync=False) as vc:
        yield {"folder": folder, "scheme": scheme, "vc": vc, "buyer": vc.readers[0], "psam": vc.readers[1]}


@pytest.fixture
def sessions(world):
    with PcscConnection(world["buyer"]) as c1, PcscConnection(world["psam"]) as c2:
        yield PurseSession(c1), PsamSession(c2)


def test_readers_show_both_simulated_cards(world):
    infos = {i.name: i for i in readers.list_readers()}
    for name in (world["buyer"], world["psam"]):
        assert infos[name].card_present
        assert b"SEMPER-SIM" in infos[name].atr
    assert readers.find_card(AID.PURSE) == world["buyer"]
    assert readers.find_card(AID.PSAM) == world["psam"]


def test_the_reader_survey_names_the_applets_each_card_answers_for(world):
    """The one AID probe (SELECT per applet) behind ``semper readers``, the TINGUIN's reader screen and
    ``find_card``: the buyer's card carries purse and PIV, the PSAM card only the PSAM."""
    found = {r.name: r for r in readers.survey()}
    buyer, psam = found[world["buyer"]], found[world["psam"]]
    assert buyer.card_present and not buyer.problem and set(buyer.applets) == {AID.PURSE, AID.PIV}
    assert psam.applets == (AID.PSAM,) and not psam.pin_pad
    assert readers.probe(world["psam"], (AID.PURSE,)) == ((), False)
    with pytest.raises(errors.ReaderError, match="no reader holds a purse card"):
        readers.find_card(AID.PURSE, exclude=(world["buyer"],))


def test_load_and_purchase_conserve_money_through_pcscd(world, sessions):
    purse, psam = sessions
    before, psam_before = purse.info(), psam.info()
    card_purse.load(purse, world["scheme"], 3000, PIN)
    for amount in (100, 250, 1):
        card_purse.purchase(purse, psam, amount, world["scheme"].root_cert)
    after, psam_after = purse.info(), psam.info()
    assert after.balance == before.balance + 3000 - 351
    assert after.load_counter == before.load_counter + 1
    assert after.debit_counter == before.debit_counter + 3
    assert psam_after.lifetime_total - psam_before.lifetime_total == 351
    log = purse.log()
    assert [e.kind for e in log[:4]] == ["debit", "debit", "debit", "load"]
    assert log[0].balance_after == after.balance


def test_wrong_pin_counts_down_and_right_pin_restores(sessions):
    purse, _ = sessions
    with pytest.raises(errors.WrongPinError) as e:
        purse.verify_pin(b"0000")
    assert e.value.tries_left == 2
    assert purse.info().pin_tries == 2
    purse.verify_pin(PIN)
    assert purse.info().pin_tries == 3


def test_response_chaining_and_command_chaining_through_pcscd(world, sessions):
    purse, psam = sessions
    cert = purse.certificate()                     # > 256 bytes? then 61xx + GET RESPONSE did the work
    with open_card_copy(world) as local:
        assert cert == PurseSession(local).certificate()
    # force response chaining with a small Le on a raw connection
    conn = purse.apdu.connection
    conn.transmit(bytes.fromhex("00A4040008") + AID.PURSE.value)
    first = conn.transmit(bytes.fromhex("8052010010"))
    assert first[-2] == 0x61 and first[:-2] == cert[:16]
    rest = conn.transmit(bytes([0x00, 0xC0, 0x00, 0x00, first[-1]]))
    assert rest[:-2] == cert[16:16 + (first[-1] or 256)]
    # command chaining: a DEBIT carries the PSAM certificate (several hundred bytes) in 255-byte parts
    card_purse.load(purse, world["scheme"], 500, PIN)
    chained = ApduSession(conn, chunk=100)
    purse.apdu = chained
    purse.select()
    paid = card_purse.purchase(purse, psam, 5, world["scheme"].root_cert)
    assert paid.proof.amount == 5


def test_extended_length_through_pcscd(sessions):
    purse, _ = sessions
    conn = purse.apdu.connection
    conn.transmit(bytes.fromhex("00A4040008") + AID.PURSE.value)
    cert_len = len(purse.certificate())
    r = conn.transmit(bytes.fromhex("8052010000") + b"\x00\x00")       # case 2 extended, Le = 65536
    assert r[-2:] == b"\x90\x00" and len(r) - 2 == cert_len


class _Counting:
    """A PC/SC connection that counts the exchanges, and can play a card that takes no extended length."""

    def __init__(self, inner, *, refuse_extended: str = "") -> None:
        self.inner, self.refuse_extended, self.sent = inner, refuse_extended, []
        self.reader = inner.reader

    def transmit(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        if self.refuse_extended and len(apdu) > 7 and apdu[4] == 0:
            if self.refuse_extended == "link":      # T=0, or a reader exchanging short APDUs: no answer at all
                raise errors.TransportError("PC/SC transmit failed: Transaction failed.")
            return b"\x67\x00"                     # a card that takes no extended length
        return self.inner.transmit(apdu)


def test_the_psam_takes_a_proof_in_one_extended_apdu_through_pcscd(world, sessions):
    """COMPLETE DEBIT carries the card's certificate (about 600 bytes): one extended-length exchange
    through pcscd, not a chain of three, so a purchase costs the seller two exchanges with its PSAM.
    A card that answers 6700 to the long form, or a link that cannot carry it (the transmit fails), is sent
    chains from then on, and the debit completes: the card that debited itself is paid for."""
    purse, psam = sessions
    card_purse.load(purse, world["scheme"], 100, PIN)
    real = psam.apdu.connection
    for refuse in ("", "card", "link"):
        if refuse:
            psam.apdu.extended = True                 # as a fresh session starts (the default: the first round)
        counting = psam.apdu.connection = _Counting(real, refuse_extended=refuse)
        before, taken = purse.info().balance, psam.info().lifetime_total
        counting.sent.clear()
        card_purse.purchase(purse, psam, 7, world["scheme"].root_cert)
        assert purse.info().balance == before - 7 and psam.info().lifetime_total == taken + 7
        exchanges = [a for a in counting.sent if a[1] in (0x30, 0x32)]     # BEGIN / COMPLETE DEBIT
        if not refuse:
            assert len(exchanges) == 2, [a[:5].hex() for a in exchanges]
            assert len(exchanges[1]) > 261                                # the whole proof in one APDU
        else:
            assert not psam.apdu.extended                                 # it fell back to chaining
            assert len(exchanges) >= 4 and all(len(a) <= 261 for a in exchanges[2:])
    psam.apdu.connection = real


def open_card_copy(world):
    """The buyer card's image copied and opened in process (the served one is locked)."""
    src = world["folder"] / "buyer.card"
    dst = world["folder"] / "buyer-copy.card"
    shutil.copyfile(src, dst)
    return open_card(dst, sync=False)


@pytest.mark.skipif(shutil.which("opensc-tool") is None, reason="opensc not installed")
def test_opensc_tool_as_outside_client(world):
    out = subprocess.run(["opensc-tool", "-c", "default", "-r", world["buyer"], "-s",
                          "00 A4 04 00 08 F0 53 45 4D 50 45 52 01 00",
                          "-s", "80 50 00 00 00", "-s", "00 A4 04 00 05 A0 00 00 00 99 00"],
                         capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert "semper e-purse" in text
    assert text.count("SW1=0x90, SW2=0x00") == 2
    assert "SW1=0x6A, SW2=0x82" in text                                 # unknown AID


@pytest.mark.skipif(shutil.which("scriptor") is None, reason="pcsc-tools not installed")
def test_scriptor_sends_malformed_apdus_and_gets_status_words(world, sessions):
    purse, _ = sessions
    before = purse.info()
    script = "00 A4 04 00 08 F0 53 45 4D 50 45 52 01\n80 50\n80 54 00 00 05 01 02\nFF 00 00 00\n80 40 00 00\n"
    out = subprocess.run(["scriptor", "-r", world["buyer"]], input=script, capture_output=True, text=True, timeout=60)
    text = out.stdout
    assert ": 67 00" in text or "67 00" in text                          # 2-byte and Lc-mismatch commands
    assert "6E 00" in text                                             # class FF
    after = purse.info()
    assert (after.balance, after.load_counter, after.debit_counter) == (before.balance, before.load_counter,
                                                                      before.debit_counter)


def test_no_pin_pad_on_vpcd_and_feature_parsing(world):
    with PcscConnection(world["buyer"]) as conn:
        assert readers.has_pin_pad(conn) is False
        assert PurseSession(conn).has_pin_pad() is False
    feats = readers.parse_features(bytes.fromhex("06 04 42 33 00 06 0A 04 42 33 00 0A".replace(" ", "")))
    assert feats[readers.FEATURE_VERIFY_PIN_DIRECT] == 0x42330006
    with pytest.raises(errors.TransportError):
        readers.parse_features(b"\x06\x03\x00\x00\x00")


def test_cli_through_pcscd(world):
    (world["folder"] / "scheme.pin").write_bytes(SCHEME_PIN)
    env = dict(os.environ, SEMPER_HOME=str(world["folder"] / "home"),
               SEMPER_SCHEME_PIN_FILE=str(world["folder"] / "scheme.pin"))
    # the cards were issued by the module's scheme: point the CLI's local issuer at it
    (world["folder"] / "home").mkdir(exist_ok=True)
    if not (world["folder"] / "home" / "scheme").exists():
        shutil.copytree(world["folder"] / "scheme", world["folder"] / "home" / "scheme")
    semper = [sys.executable, "-m", "semper.client.cli"]
    info = subprocess.run(semper + ["card", "info", "--json", "--reader", world["buyer"]], env=env,
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    balance = json.loads(info.stdout)["balance"]
    load = subprocess.run(semper + ["card", "load", "10.00", "--pin-stdin"], input=PIN.decode() + "\n", env=env,
                          capture_output=True, text=True, timeout=60)
    assert load.returncode == 0, load.stderr
    pay = subprocess.run(semper + ["card", "pay", "2.50"], env=env, capture_output=True, text=True, timeout=60)
    assert pay.returncode == 0, pay.stderr
    after = json.loads(subprocess.run(semper + ["card", "info", "--json"], env=env, capture_output=True, text=True,
                                      timeout=60).stdout)["balance"]
    assert float(after.split()[0]) == pytest.approx(float(balance.split()[0]) + 7.50)
    bad = subprocess.run(semper + ["card", "pay", "-3"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "positive" in bad.stderr
    wrong = subprocess.run(semper + ["card", "load", "1.00", "--pin-stdin"], input="0000\n", env=env,
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "wrong PIN" in wrong.stderr and "Traceback" not in wrong.stderr
    ok = subprocess.run(semper + ["card", "load", "1.00", "--pin-stdin"], input=PIN.decode() + "\n", env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0
    listing = subprocess.run(semper + ["readers"], env=env, capture_output=True, text=True, timeout=60)
    assert "applets: purse" in listing.stdout and "applets: psam" in listing.stdout
