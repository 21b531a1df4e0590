"""The purse applet through the host's PurseSession: PIN, load, debit, personalisation, log, money."""
from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import pytest
from conftest import EUR, MAX_BALANCE, PIN, PUK
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from semper.card_applet_sim import crypto
from semper.client.payment import card_purse
from semper.client.payment.errors import InstrumentError, InsufficientFunds
from semper.client.support.personalisation import personalise_psam
from semper.client.support.scheme import ROLE_PURSE_CARD
from semper.hardware import errors
from semper.hardware.iso7816 import Apdu
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.purse_records import DEBIT_REQUEST, DebitRecord, LoadConfirmation, Signed
from semper.hardware.signer import sign_message
from semper.hardware.simulator import create_card, open_card


def load_command(purse: PurseSession, scheme, amount: int, *, verify: bool = True) -> Signed:
    """INITIALIZE LOAD on the card and the issuer's signed LCM1 for it (not yet sent)."""
    if verify:
        purse.verify_pin(PIN)
    request, _signed = purse.initialize_load(amount, EUR)
    command = request.command()
    return Signed(command, scheme.sign_load(command))


def debit_request(purse: PurseSession, psam: PsamSession, amount: int) -> Signed:
    info = purse.info()
    return psam.begin_debit(info.card_number, info.debit_counter + 1, amount, info.currency)[1]


def resign(record: bytes, key: ec.EllipticCurvePrivateKey) -> Signed:
    return Signed(record, key.sign(record, ec.ECDSA(hashes.SHA256())))


# ---- information -----------------------------------------------------------------------------
def test_info_of_a_fresh_card(purse: PurseSession, scheme) -> None:
    info = purse.info()
    assert (info.currency, info.balance, info.max_balance) == (EUR, 0, MAX_BALANCE)
    assert (info.load_counter, info.debit_counter) == (0, 0)
    assert (info.pin_tries, info.puk_tries, info.load_pending) == (3, 3, False)
    cert = x509.load_der_x509_certificate(purse.certificate())
    scheme.root_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == info.card_id
    assert ROLE_PURSE_CARD in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert purse.log() == []


def test_info_shows_a_pending_load(purse: PurseSession, scheme) -> None:
    load_command(purse, scheme, 100)
    assert purse.info().load_pending


# ---- PIN ---------------------------------------------------------------------------------------
def test_wrong_pin_counts_down_then_blocks(purse: PurseSession) -> None:
    for left in (2, 1, 0):
        with pytest.raises(errors.WrongPinError) as e:
            purse.verify_pin(b"9999")
        assert e.value.tries_left == left and e.value.sw == 0x63C0 | left
        assert purse.info().pin_tries == left
    with pytest.raises(errors.PinBlockedError) as b:
        purse.verify_pin(b"9999")
    assert b.value.sw == 0x6983
    with pytest.raises(errors.PinBlockedError):
        purse.verify_pin(PIN)                        # not even the right PIN gets through now
    assert purse.info().pin_tries == 0
    assert not purse.pin_verified()


def test_right_pin_restores_the_counter(purse: PurseSession) -> None:
    for _ in range(2):
        with pytest.raises(errors.WrongPinError):
            purse.verify_pin(b"0000")
    purse.verify_pin(PIN)
    assert purse.info().pin_tries == 3
    assert purse.pin_verified()


def test_verify_without_data_reports_status_without_spending_a_try(purse: PurseSession, card_os) -> None:
    assert not purse.pin_verified()
    with pytest.raises(errors.WrongPinError):
        purse.verify_pin(b"0000")
    for _ in range(5):
        assert card_os.transmit(bytes.fromhex("00200081")) == bytes.fromhex("63C2")
        assert not purse.pin_verified()
    assert purse.info().pin_tries == 2
    purse.verify_pin(PIN)
    assert purse.pin_verified()
    assert card_os.transmit(bytes.fromhex("00200081")) == bytes.fromhex("9000")


def test_a_wrong_pin_revokes_an_earlier_verification(purse: PurseSession) -> None:
    purse.verify_pin(PIN)
    with pytest.raises(errors.WrongPinError):
        purse.verify_pin(b"0000")
    assert not purse.pin_verified()
    with pytest.raises(errors.PinRequiredError):
        purse.initialize_load(100, EUR)


@pytest.mark.parametrize("bad", [b"12a4", b"123", b"123456789", b"12 4"])
def test_malformed_pin_is_refused_without_spending_a_try(purse: PurseSession, bad: bytes) -> None:
    with pytest.raises(errors.InvalidInputError):
        purse.verify_pin(bad)
    assert purse.info().pin_tries == 3


def test_ff_padded_pin_block(purse: PurseSession) -> None:
    purse.verify_pin(PIN + b"\xff" * 4)                 # what a PIN pad sends
    assert purse.pin_verified()


def test_puk_unblocks_and_sets_a_new_pin(purse: PurseSession, scheme) -> None:
    for _ in range(3):
        with pytest.raises(errors.WrongPinError):
            purse.verify_pin(b"0000")
    purse.unblock_pin(PUK, b"5678")
    info = purse.info()
    assert (info.pin_tries, info.puk_tries) == (3, 3)
    with pytest.raises(errors.WrongPinError):
        purse.verify_pin(PIN)                            # the old PIN is gone
    purse.verify_pin(b"5678")
    purse.load(load_command(purse, scheme, 100, verify=False))
    assert purse.info().balance == 100


def test_wrong_puk_counts_down_then_blocks(purse: PurseSession) -> None:
    for _ in range(3):
        with pytest.raises(errors.WrongPinError):
            purse.verify_pin(b"0000")
    for left in (2, 1, 0):
        with pytest.raises(errors.WrongPinError) as e:
            purse.unblock_pin(b"00000000", b"5678")
        assert e.value.tries_left == left
        assert purse.info().puk_tries == left
    with pytest.raises(errors.PinBlockedError):
        purse.unblock_pin(PUK, b"5678")
    info = purse.info()
    assert (info.pin_tries, info.puk_tries) == (0, 0)
    with pytest.raises(errors.PinBlockedError):
        purse.verify_pin(b"5678")


def test_right_puk_restores_its_counter(purse: PurseSession) -> None:
    with pytest.raises(errors.WrongPinError):
        purse.unblock_pin(b"00000000", b"5678")
    assert purse.info().puk_tries == 2
    purse.unblock_pin(PUK, b"5678")
    assert purse.info().puk_tries == 3


def test_change_pin(purse: PurseSession) -> None:
    purse.change_pin(PIN, b"87654321")
    assert purse.pin_verified()                          # changing proves knowledge of the old PIN
    with pytest.raises(errors.WrongPinError):
        purse.verify_pin(PIN)
    purse.verify_pin(b"87654321")
    assert purse.info().pin_tries == 3


def test_change_pin_with_the_wrong_old_pin(purse: PurseSession) -> None:
    with pytest.raises(errors.WrongPinError) as e:
        purse.change_pin(b"0000", b"5678")
    assert e.value.tries_left == 2
    purse.verify_pin(PIN)                                # unchanged


@pytest.mark.parametrize("new", [b"12", b"abcd", b"123456789"])
def test_change_to_a_malformed_pin_is_refused(purse: PurseSession, new: bytes) -> None:
    with pytest.raises(errors.InvalidInputError):
        purse.change_pin(PIN, new)
    assert purse.info().pin_tries == 3
    purse.verify_pin(PIN)


# ---- load --------------------------------------------------------------------------------------
def test_load_applies_and_confirms(purse: PurseSession, scheme) -> None:
    result = card_purse.load(purse, scheme, 5000, PIN)
    conf = result.confirmation
    info = purse.info()
    assert (info.balance, info.load_counter, info.load_pending) == (5000, 1, False)
    assert (conf.amount, conf.load_counter, conf.balance, conf.card_number) == (5000, 1, 5000, info.card_number)
    scheme.verify_card_signature(purse.certificate(), result.signed.record, result.signed.signature)
    card_purse.load(purse, scheme, 250)                  # PIN still verified in this session
    assert purse.info().balance == 5250 and purse.info().load_counter == 2


def test_initialize_load_needs_the_pin(purse: PurseSession) -> None:
    with pytest.raises(errors.PinRequiredError):
        purse.initialize_load(100, EUR)
    assert not purse.info().load_pending


@pytest.mark.parametrize("amount, currency", [(0, EUR), (100, 840)])
def test_initialize_load_checks_amount_and_currency(purse: PurseSession, amount: int, currency: int) -> None:
    purse.verify_pin(PIN)
    with pytest.raises(errors.InvalidInputError):
        purse.initialize_load(amount, currency)


def test_load_above_the_maximum_balance(purse: PurseSession, scheme) -> None:
    with pytest.raises(InstrumentError, match="exceed its maximum balance"):    # the card refuses (9F11)
        card_purse.load(purse, scheme, MAX_BALANCE + 1, PIN)
    card_purse.load(purse, scheme, MAX_BALANCE - 10)
    with pytest.raises(InstrumentError, match="exceed its maximum balance"):
        card_purse.load(purse, scheme, 11)
    card_purse.load(purse, scheme, 10)                   # exactly the maximum is fine
    info = purse.info()
    assert (info.balance, info.load_counter) == (MAX_BALANCE, 2)


def test_load_signed_by_another_key_is_not_authentic(purse: PurseSession, scheme, other_scheme) -> None:
    good = load_command(purse, scheme, 700)
    for forged in (Signed(good.record, other_scheme.sign_load(good.record)),                # another issuer
                   Signed(good.record, sign_message(scheme.root_signer, good.record)),    # the root is not the issuer
                   Signed(good.record, good.signature[:-1] + bytes([good.signature[-1] ^ 1]))):
        with pytest.raises(errors.NotAuthenticError):
            purse.load(forged)
        info = purse.info()
        assert (info.balance, info.load_counter, info.load_pending) == (0, 0, True)
    purse.load(good)                                     # the pending request survived
    assert purse.info().balance == 700


def test_load_for_another_amount_or_nonce_is_refused(purse: PurseSession, scheme) -> None:
    good = load_command(purse, scheme, 700)
    tag, card, ctr, amount, cur, nonce = struct.unpack(">4s8sIIH16s", good.record)
    for fields in ((tag, card, ctr, 7000, cur, nonce), (tag, card, ctr, amount, cur, bytes(16)),
                   (tag, card, ctr + 1, amount, cur, nonce), (tag, bytes(8), ctr, amount, cur, nonce)):
        record = struct.pack(">4s8sIIH16s", *fields)
        with pytest.raises(errors.ReplayError):          # issuer-signed, but not for the pending request
            purse.load(Signed(record, scheme.sign_load(record)))
    assert purse.info().balance == 0
    purse.load(good)
    assert purse.info().balance == 700


def test_load_replayed_is_refused(purse: PurseSession, scheme) -> None:
    command = load_command(purse, scheme, 300)
    purse.load(command)
    with pytest.raises(errors.ReplayError):
        purse.load(command)
    # and still refused once a new load is pending (new nonce and counter)
    second = load_command(purse, scheme, 200, verify=False)
    with pytest.raises(errors.ReplayError):
        purse.load(command)
    purse.load(second)
    info = purse.info()
    assert (info.balance, info.load_counter) == (500, 2)


def test_second_initialize_load_replaces_the_first(purse: PurseSession, scheme) -> None:
    first = load_command(purse, scheme, 300)
    second = load_command(purse, scheme, 400, verify=False)
    with pytest.raises(errors.ReplayError):
        purse.load(first)
    purse.load(second)
    assert purse.info().balance == 400 and purse.info().load_counter == 1


def test_load_after_a_tear_applies_exactly_once(buyer_card, buyer_image: Path, open_image, scheme) -> None:
    purse = PurseSession(buyer_card)
    command = load_command(purse, scheme, 900)
    buyer_card.close()                                  # the card is pulled before LOAD arrives
    card = open_image(buyer_image)
    purse = PurseSession(card)
    assert purse.info().load_pending
    assert not purse.pin_verified()                     # a new session, and LOAD needs no PIN
    purse.load(command)
    with pytest.raises(errors.ReplayError):
        purse.load(command)
    card.close()
    purse = PurseSession(open_image(buyer_image))
    with pytest.raises(errors.ReplayError):
        purse.load(command)
    info = purse.info()
    assert (info.balance, info.load_counter, info.load_pending) == (900, 1, False)


# ---- debit -------------------------------------------------------------------------------------
@pytest.fixture
def funded(purse: PurseSession, scheme) -> PurseSession:
    card_purse.load(purse, scheme, 1000, PIN)
    return purse


def test_debit(funded: PurseSession, psam: PsamSession, scheme) -> None:
    request = debit_request(funded, psam, 125)
    proof, signed = funded.debit(psam.certificate(), request)
    req = DebitRecord.decode(request.record, DEBIT_REQUEST)
    assert proof.tag == b"DPF1"
    assert (proof.psam_id, proof.psam_sequence, proof.challenge, proof.amount, proof.debit_counter) == (
        req.psam_id, req.psam_sequence, req.challenge, 125, 1)
    scheme.verify_card_signature(funded.certificate(), signed.record, signed.signature)
    info = funded.info()
    assert (info.balance, info.debit_counter) == (875, 1)


def test_insufficient_funds_changes_nothing(funded: PurseSession, psam: PsamSession, card_os) -> None:
    before = card_os.store.snapshot()
    with pytest.raises(errors.InsufficientFundsError):
        funded.debit(psam.certificate(), debit_request(funded, psam, 1001))
    assert card_os.store.snapshot() == before
    funded.debit(psam.certificate(), debit_request(funded, psam, 1000))   # exactly the balance
    assert funded.info().balance == 0


def test_replayed_debit_request_is_refused(funded: PurseSession, psam: PsamSession, card_os) -> None:
    request = debit_request(funded, psam, 100)
    cert = psam.certificate()
    funded.debit(cert, request)
    after = card_os.store.snapshot()
    with pytest.raises(errors.ReplayError):
        funded.debit(cert, request)
    assert card_os.store.snapshot() == after
    assert funded.info().balance == 900


def test_request_for_a_future_counter_is_refused(funded: PurseSession, psam: PsamSession) -> None:
    info = funded.info()
    _r, request = psam.begin_debit(info.card_number, info.debit_counter + 2, 100, EUR)
    with pytest.raises(errors.ReplayError):
        funded.debit(psam.certificate(), request)


def test_psam_of_another_scheme_is_not_authentic(funded: PurseSession, other_scheme, tmp_path: Path,
                                                 open_image, card_os) -> None:
    image = tmp_path / "foreign.psam"
    personalise_psam(image, other_scheme, sync=False)
    foreign = PsamSession(open_image(image))
    before = card_os.store.snapshot()
    with pytest.raises(errors.NotAuthenticError):
        funded.debit(foreign.certificate(), debit_request(funded, foreign, 100))
    assert card_os.store.snapshot() == before


def test_psam_certificate_for_another_psam_id(funded: PurseSession, psam: PsamSession, scheme,
                                              tmp_path: Path, open_image, card_os) -> None:
    image = tmp_path / "second.psam"
    personalise_psam(image, scheme, sync=False)
    second = PsamSession(open_image(image))
    request = debit_request(funded, psam, 100)
    before = card_os.store.snapshot()
    with pytest.raises(errors.NotAuthenticError):         # genuine certificate, but of the other PSAM
        funded.debit(second.certificate(), request)
    with pytest.raises(errors.NotAuthenticError):         # the purse card's own certificate: wrong role
        funded.debit(funded.certificate(), request)
    # A misbehaving second PSAM signs, with its own genuine key and certificate, a request that
    # claims the first PSAM's id: only the certificate's serialNumber check can catch this.
    second_key = second.apdu.connection.card.store.get("psam/key/private")
    claimed = Signed(request.record, crypto.sign(second_key, request.record))
    with pytest.raises(errors.NotAuthenticError):
        funded.debit(second.certificate(), claimed)
    assert card_os.store.snapshot() == before
    funded.debit(psam.certificate(), request)            # the right certificate still works
    assert funded.info().balance == 900


def test_tampered_or_forged_request_is_not_authentic(funded: PurseSession, psam: PsamSession, card_os) -> None:
    request = debit_request(funded, psam, 100)
    fields = list(struct.unpack(">4s8sI8sIIH16s", request.record))
    fields[5] = 1                                         # amount 100 -> 1 under the PSAM's signature
    tampered = Signed(struct.pack(">4s8sI8sIIH16s", *fields), request.signature)
    forged = resign(request.record, ec.generate_private_key(ec.SECP256R1()))
    before = card_os.store.snapshot()
    for bad in (tampered, forged):
        with pytest.raises(errors.NotAuthenticError):
            funded.debit(psam.certificate(), bad)
    assert card_os.store.snapshot() == before
    funded.debit(psam.certificate(), request)
    assert funded.info().balance == 900


@pytest.mark.parametrize("damage", ["unknown signature algorithm", "truncated", "not DER", "one byte flipped"])
def test_damaged_psam_certificate_is_not_authentic(funded: PurseSession, psam: PsamSession, card_os,
                                                   damaged_certificate, damage: str) -> None:
    """Refused as not authentic (9F13), never an internal error (6F00)."""
    request = debit_request(funded, psam, 100)
    before = card_os.store.snapshot()
    with pytest.raises(errors.NotAuthenticError):
        funded.debit(damaged_certificate(psam.certificate(), damage), request)
    assert card_os.store.snapshot() == before


def test_request_for_another_card_or_currency(funded: PurseSession, psam: PsamSession) -> None:
    info = funded.info()
    _r, other_card = psam.begin_debit(bytes(8), info.debit_counter + 1, 100, EUR)
    with pytest.raises(errors.InvalidInputError):
        funded.debit(psam.certificate(), other_card)
    assert funded.info().balance == 1000


@pytest.mark.parametrize("data", [b"", b"\x01\x02", bytes.fromhex("0100 0200 0300"), bytes.fromhex("01FF")])
def test_malformed_debit_data(funded: PurseSession, data: bytes) -> None:
    with pytest.raises(errors.InvalidInputError):
        funded.apdu.send(Apdu(0x80, 0x54, 0, 0, data, 0))


# ---- personalisation ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    Apdu(0x80, 0xE2, 0, 0, b"", 0),                           # GENERATE KEY
    Apdu(0x80, 0xE0, 1, 0, bytes(14)),                        # params
    Apdu(0x80, 0xE0, 2, 0, b"0000"),                          # PIN
    Apdu(0x80, 0xE0, 3, 0, b"00000000"),                      # PUK
    Apdu(0x80, 0xE0, 4, 0, bytes(65)),                        # root point
    Apdu(0x80, 0xE0, 5, 0, bytes(65)),                        # issuer point
    Apdu(0x80, 0xE0, 6, 0, b"cert"),                          # certificate
    Apdu(0x80, 0xEE, 0, 0),                                   # END PERSONALISATION
])
def test_personalisation_is_closed_after_end_perso(purse: PurseSession, card_os, command: Apdu) -> None:
    before = card_os.store.snapshot()
    with pytest.raises(errors.ConditionsError):
        purse.apdu.send(command)
    assert card_os.store.snapshot() == before
    purse.verify_pin(PIN)                                 # PIN untouched


def test_blank_card_refuses_purse_commands_until_personalised(tmp_path: Path, scheme) -> None:
    with create_card(tmp_path / "blank.card", ["purse"], sync=False) as card:
        purse = PurseSession(card)
        with pytest.raises(errors.ConditionsError):
            purse.info()
        with pytest.raises(errors.ConditionsError):
            purse.verify_pin(PIN)
        with pytest.raises(errors.ConditionsError):        # nothing set yet
            purse.end_personalisation()
        with pytest.raises(errors.InvalidInputError):
            purse.put_perso(2, b"12")                     # PIN too short
        with pytest.raises(errors.InvalidInputError):
            purse.put_perso(3, b"1234")                   # PUK must be 8 digits
        with pytest.raises(errors.InvalidInputError):
            purse.put_perso(4, b"\x04" + bytes(64))       # not a point on P-256
        purse.put_perso(2, PIN)
        purse.put_perso(3, PUK)
        with pytest.raises(errors.ConditionsError):       # params, keys, certificate still missing
            purse.end_personalisation()


# ---- log ---------------------------------------------------------------------------------------
def test_log_keeps_the_last_15_newest_first(purse: PurseSession, psam: PsamSession, scheme) -> None:
    events = []                          # (kind, counter, amount, balance after)
    balance = 0
    for n, amount in enumerate((3000, 2000), 1):
        card_purse.load(purse, scheme, amount, PIN)
        balance += amount
        events.append(("load", n, amount, balance))
    for n in range(1, 19):
        amount = 10 * n + 1
        card_purse.purchase(purse, psam, amount, scheme.root_cert)
        balance -= amount
        events.append(("debit", n, amount, balance))
    log = purse.log()
    assert len(log) == 15
    expected = list(reversed(events))[:15]
    assert [(e.kind, e.counter, e.amount, e.balance_after) for e in log] == expected
    cert = purse.certificate()
    for e in log:
        scheme.verify_card_signature(cert, e.signed.record, e.signed.signature)
    assert purse.info().balance == balance == log[0].balance_after


def test_log_of_a_load_holds_the_confirmation(purse: PurseSession, scheme) -> None:
    result = card_purse.load(purse, scheme, 1234, PIN)
    (entry,) = purse.log()
    assert entry.signed == result.signed
    assert LoadConfirmation.decode(entry.signed.record).balance == entry.balance_after == 1234


@pytest.mark.parametrize("p1", [0, 16, 0xFF])
def test_log_record_number_out_of_range(funded: PurseSession, p1: int) -> None:
    with pytest.raises(errors.InvalidInputError):
        funded.apdu.send(Apdu(0x80, 0x56, p1, 0, b"", 0))
    with pytest.raises(errors.NotFoundError):
        funded.apdu.send(Apdu(0x80, 0x56, 2, 0, b"", 0))  # only one entry so far


# ---- money is conserved ------------------------------------------------------------------------
operations = st.lists(st.tuples(st.sampled_from(["load", "buy"]), st.integers(1, 9000)), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_money_is_conserved(fresh_images, scheme, ops: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        buyer, psam_image = fresh_images(Path(d))
        with open_card(buyer, sync=False) as c1, open_card(psam_image, sync=False) as c2:
            purse, psam = PurseSession(c1), PsamSession(c2)
            purse.verify_pin(PIN)
            loads = debits = 0
            for kind, amount in ops:
                balance = loads - debits
                if kind == "load":
                    if balance + amount > MAX_BALANCE:
                        with pytest.raises(InstrumentError, match="exceed its maximum balance"):
                            card_purse.load(purse, scheme, amount)
                    else:
                        card_purse.load(purse, scheme, amount)
                        loads += amount
                else:
                    if amount > balance:
                        with pytest.raises(InsufficientFunds):
                            card_purse.purchase(purse, psam, amount, scheme.root_cert)
                    else:
                        card_purse.purchase(purse, psam, amount, scheme.root_cert)
                        debits += amount
                info, pinfo = purse.info(), psam.info()
                assert info.balance == loads - debits
                assert pinfo.lifetime_total == pinfo.batch_total == debits
            entries = psam.batch_entries(psam.info().batch_number)
            assert sum(DebitRecord.decode(e.proof.record, b"DPF1").amount for e in entries) == debits
