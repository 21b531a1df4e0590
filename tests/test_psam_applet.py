"""The PSAM applet: outstanding requests, proof checks, replay, batches and their signed headers."""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path

import pytest
from conftest import EUR, PIN, PUK
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from semper.card_applet_sim import crypto
from semper.card_applet_sim.applets import psam as psam_applet
from semper.client.payment import card_purse
from semper.client.support.personalisation import CardProfile, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware import errors, tlv
from semper.hardware.iso7816 import Apdu
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.purse_records import BatchHeader, DebitRecord, Signed

_DEBIT = ">4s8sI8sIIH16s"


@pytest.fixture
def funded(purse: PurseSession, scheme) -> PurseSession:
    card_purse.load(purse, scheme, 10000, PIN)
    return purse


def card_debit(purse: PurseSession, psam: PsamSession, amount: int) -> tuple[Signed, Signed]:
    """BEGIN DEBIT on the PSAM and DEBIT on the card, stopping before COMPLETE DEBIT."""
    info = purse.info()
    _r, request = psam.begin_debit(info.card_number, info.debit_counter + 1, amount, info.currency)
    _p, proof = purse.debit(psam.certificate(), request)
    return request, proof


def entry_tlv(cert: bytes, proof: Signed) -> bytes:
    return tlv.encode(0x01, cert) + tlv.encode(0x02, proof.record) + tlv.encode(0x03, proof.signature)


def batch_digest(entries: list[bytes]) -> bytes:
    d = bytes(32)
    for e in entries:
        d = hashlib.sha256(d + hashlib.sha256(e).digest()).digest()
    return d


def private_key_of(session) -> bytes:
    """A simulated card's private scalar, read from its image (tests only: no APDU returns it)."""
    store = session.apdu.connection.card.store
    return store.get("purse/key/private") or store.get("psam/key/private")


@pytest.fixture
def second_card(tmp_path: Path, scheme, open_image) -> PurseSession:
    image = tmp_path / "second.card"
    personalise_purse_card(image, scheme, CardProfile(PIN, PUK), sync=False)
    return PurseSession(open_image(image))


# ---- begin debit -------------------------------------------------------------------------------
def test_begin_debit_signs_a_fresh_request(psam: PsamSession, scheme) -> None:
    card = bytes.fromhex("6799000000000001")
    r1, s1 = psam.begin_debit(card, 1, 500, EUR)
    r2, _s2 = psam.begin_debit(card, 1, 500, EUR)
    info = psam.info()
    assert (r1.psam_id, r1.card_number, r1.amount, r1.currency, r1.debit_counter) == (info.psam_id, card, 500, EUR, 1)
    assert (r1.psam_sequence, r2.psam_sequence, info.sequence, info.pending) == (1, 2, 2, 2)
    assert r1.challenge != r2.challenge
    cert = x509.load_der_x509_certificate(psam.certificate())
    scheme.root_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    cert.public_key().verify(s1.signature, s1.record, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("amount, currency", [(0, EUR), (100, 840)])
def test_begin_debit_checks_amount_and_currency(psam: PsamSession, amount: int, currency: int) -> None:
    with pytest.raises(errors.InvalidInputError):
        psam.begin_debit(bytes(8), 1, amount, currency)
    assert psam.info().sequence == 0 and psam.info().pending == 0


def test_at_most_16_requests_are_outstanding(funded: PurseSession, psam: PsamSession) -> None:
    info = funded.info()
    _r, oldest = psam.begin_debit(info.card_number, info.debit_counter + 1, 100, EUR)
    for _ in range(16):
        psam.begin_debit(info.card_number, info.debit_counter + 1, 100, EUR)
    assert psam.info().pending == 16
    _p, proof = funded.debit(psam.certificate(), oldest)       # the card still pays it ...
    with pytest.raises(errors.ReplayError):                    # ... but the PSAM dropped it
        psam.complete_debit(funded.certificate(), proof)


# ---- complete debit ----------------------------------------------------------------------------
def test_complete_debit(funded: PurseSession, psam: PsamSession) -> None:
    _req, proof = card_debit(funded, psam, 250)
    assert psam.complete_debit(funded.certificate(), proof) == (1, 0, 250)
    _req, proof = card_debit(funded, psam, 50)
    assert psam.complete_debit(funded.certificate(), proof) == (1, 1, 300)
    info = psam.info()
    assert (info.batch_count, info.batch_total, info.lifetime_total, info.pending) == (2, 300, 300, 0)


def test_complete_debit_twice_is_a_replay(funded: PurseSession, psam: PsamSession, psam_os) -> None:
    _req, proof = card_debit(funded, psam, 250)
    cert = funded.certificate()
    psam.complete_debit(cert, proof)
    after = psam_os.store.snapshot()
    with pytest.raises(errors.ReplayError):
        psam.complete_debit(cert, proof)
    assert psam_os.store.snapshot() == after
    assert psam.info().lifetime_total == 250


def test_proof_for_an_unknown_sequence(funded: PurseSession, psam: PsamSession) -> None:
    _req, proof = card_debit(funded, psam, 250)
    fields = list(struct.unpack(_DEBIT, proof.record))
    fields[2] = 99
    record = struct.pack(_DEBIT, *fields)
    with pytest.raises(errors.ReplayError):
        psam.complete_debit(funded.certificate(), Signed(record, crypto.sign(private_key_of(funded), record)))


@pytest.mark.parametrize("field, value", [(5, 1), (5, 25000), (7, bytes(16)), (4, 7), (3, bytes(8))])
def test_tampered_proof_is_rejected(funded: PurseSession, psam: PsamSession, psam_os, field: int, value) -> None:
    """Amount, challenge, counter or card number changed: even the card's own signature does not help."""
    _req, proof = card_debit(funded, psam, 250)
    fields = list(struct.unpack(_DEBIT, proof.record))
    fields[field] = value
    record = struct.pack(_DEBIT, *fields)
    before = psam_os.store.snapshot()
    for bad in (Signed(record, proof.signature), Signed(record, crypto.sign(private_key_of(funded), record))):
        with pytest.raises(errors.NotAuthenticError):
            psam.complete_debit(funded.certificate(), bad)
    assert psam_os.store.snapshot() == before
    psam.complete_debit(funded.certificate(), proof)           # the genuine proof is still accepted
    assert psam.info().batch_total == 250


def test_proof_signed_by_another_card_is_rejected(funded: PurseSession, psam: PsamSession,
                                                  second_card: PurseSession, psam_os) -> None:
    _req, proof = card_debit(funded, psam, 250)
    other_key = private_key_of(second_card)
    by_other = Signed(proof.record, crypto.sign(other_key, proof.record))
    flipped = Signed(proof.record, proof.signature[:-1] + bytes([proof.signature[-1] ^ 1]))
    before = psam_os.store.snapshot()
    attempts = [
        (funded.certificate(), by_other),           # right certificate, another card's signature
        (second_card.certificate(), by_other),      # another card's certificate and signature
        (second_card.certificate(), proof),         # another card's certificate, our card's signature
        (funded.certificate(), flipped),            # damaged signature
        (psam.certificate(), proof),                # a PSAM certificate is not a card certificate
    ]
    for cert, bad in attempts:
        with pytest.raises(errors.NotAuthenticError):
            psam.complete_debit(cert, bad)
    assert psam_os.store.snapshot() == before
    psam.complete_debit(funded.certificate(), proof)
    assert psam.info().batch_count == 1


def test_card_certificate_of_another_scheme_is_rejected(psam: PsamSession, other_scheme, tmp_path: Path,
                                                        open_image, psam_os) -> None:
    """A card issued by a foreign root, for a request the PSAM really issued to that card number."""
    image = tmp_path / "foreign.card"
    personalise_purse_card(image, other_scheme, CardProfile(PIN, PUK), sync=False)
    foreign = PurseSession(open_image(image))
    card_purse.load(foreign, other_scheme, 1000, PIN)
    info = foreign.info()
    _r, request = psam.begin_debit(info.card_number, 1, 100, EUR)
    # the foreign card refuses our PSAM (wrong root), so it signs the proof with its own key here
    record = dataclasses.replace(DebitRecord.decode(request.record, b"DRQ1"), tag=b"DPF1").encode()
    before = psam_os.store.snapshot()
    with pytest.raises(errors.NotAuthenticError):
        psam.complete_debit(foreign.certificate(), Signed(record, crypto.sign(private_key_of(foreign), record)))
    assert psam_os.store.snapshot() == before


@pytest.mark.parametrize("damage", ["unknown signature algorithm", "truncated", "not DER", "one byte flipped"])
def test_damaged_card_certificate_is_not_authentic(funded: PurseSession, psam: PsamSession, psam_os,
                                                   damaged_certificate, damage: str) -> None:
    """Refused as not authentic (9F13), never an internal error (6F00); the proof stays usable."""
    _req, proof = card_debit(funded, psam, 250)
    before = psam_os.store.snapshot()
    with pytest.raises(errors.NotAuthenticError):
        psam.complete_debit(damaged_certificate(funded.certificate(), damage), proof)
    assert psam_os.store.snapshot() == before
    psam.complete_debit(funded.certificate(), proof)


@pytest.mark.parametrize("data", [b"", bytes.fromhex("0100"), bytes.fromhex("010102FF"), bytes(5)])
def test_malformed_complete_debit(psam: PsamSession, data: bytes) -> None:
    with pytest.raises(errors.InvalidInputError):
        psam.apdu.send(Apdu(0x80, 0x32, 0, 0, data, 0))


def test_full_batch_refuses_until_closed(funded: PurseSession, psam: PsamSession,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psam_applet, "MAX_BATCH", 2)
    cert = funded.certificate()
    for amount in (10, 20):
        psam.complete_debit(cert, card_debit(funded, psam, amount)[1])
    _req, proof = card_debit(funded, psam, 30)
    with pytest.raises(errors.CardError) as e:
        psam.complete_debit(cert, proof)
    assert e.value.sw == 0x6A84
    assert psam.info().pending == 1
    header, _signed = psam.close_batch()
    assert (header.count, header.total) == (2, 30)
    assert psam.complete_debit(cert, proof) == (2, 0, 30)      # the proof waited, nothing was lost


# ---- batches -----------------------------------------------------------------------------------
def test_close_batch_header_matches_the_entries(funded: PurseSession, psam: PsamSession, scheme: Scheme) -> None:
    amounts = [125, 1, 999, 40]
    cert = funded.certificate()
    expected_entries = []
    for a in amounts:
        result = card_purse.purchase(funded, psam, a, scheme.root_cert)
        expected_entries.append(entry_tlv(cert, result.signed))
    info = psam.info()
    header, signed = psam.close_batch()
    assert header == BatchHeader(info.psam_id, 1, len(amounts), sum(amounts), EUR, batch_digest(expected_entries))
    # what the acquirer reads back gives the same digest
    raw = [psam.apdu.send(Apdu(0x80, 0x36, 0, i, (1).to_bytes(4, "big"), 0)) for i in range(len(amounts))]
    assert raw == expected_entries
    assert [entry_tlv(e.card_certificate, e.proof) for e in psam.batch_entries(1)] == expected_entries
    # the header is signed by the PSAM's certified key
    psam_cert = x509.load_der_x509_certificate(psam.certificate())
    psam_cert.public_key().verify(signed.signature, signed.record, ec.ECDSA(hashes.SHA256()))
    assert psam.batch_header(1) == (header, signed)
    # a new, empty batch is open
    after = psam.info()
    assert (after.batch_number, after.batch_count, after.batch_total, after.lifetime_total) == (2, 0, 0, sum(amounts))


def test_tampered_header_does_not_verify(funded: PurseSession, psam: PsamSession, scheme: Scheme) -> None:
    card_purse.purchase(funded, psam, 100, scheme.root_cert)
    _header, signed = psam.close_batch()
    psam_cert = x509.load_der_x509_certificate(psam.certificate())
    record = bytearray(signed.record)
    record[24] ^= 1                                            # the total
    from cryptography.exceptions import InvalidSignature
    with pytest.raises(InvalidSignature):
        psam_cert.public_key().verify(signed.signature, bytes(record), ec.ECDSA(hashes.SHA256()))


def test_batch_numbers_increase_and_old_batches_disappear(funded: PurseSession, psam: PsamSession,
                                                          psam_os, scheme: Scheme) -> None:
    card_purse.purchase(funded, psam, 10, scheme.root_cert)
    card_purse.purchase(funded, psam, 20, scheme.root_cert)
    h1, s1 = psam.close_batch()
    assert h1.batch_number == 1 and psam.info().batch_number == 2
    with pytest.raises(errors.NotFoundError):
        psam.batch_header(2)                                   # still open
    card_purse.purchase(funded, psam, 30, scheme.root_cert)
    assert len(psam.batch_entries(1)) == 2                     # the last closed batch is kept
    assert psam.batch_header(1) == (h1, s1)
    h2, _s2 = psam.close_batch()
    assert (h2.batch_number, h2.count, h2.total) == (2, 1, 30)
    assert psam.info().batch_number == 3
    with pytest.raises(errors.NotFoundError):
        psam.batch_header(1)
    assert psam.batch_entries(1) == []
    assert not [k for k in psam_os.store.snapshot() if k.startswith("psam/batch/1/")]
    assert len(psam.batch_entries(2)) == 1
    h3, _s3 = psam.close_batch()                               # an empty batch closes too
    assert (h3.batch_number, h3.count, h3.total, h3.entries_digest) == (3, 0, 0, bytes(32))
    assert psam.info().lifetime_total == 60


@pytest.mark.parametrize("batch", [0, 2, 5, 0xFFFFFFFF])
def test_reading_a_batch_that_is_not_kept(psam: PsamSession, batch: int) -> None:
    psam.close_batch()                                         # batch 1 closed, batch 2 open
    if batch == 2:
        assert psam.batch_entries(2) == []
        with pytest.raises(errors.NotFoundError):
            psam.batch_header(2)
    else:
        with pytest.raises(errors.NotFoundError):
            psam.batch_header(batch)


def test_batch_argument_must_be_four_bytes(psam: PsamSession) -> None:
    with pytest.raises(errors.InvalidInputError):
        psam.apdu.send(Apdu(0x80, 0x38, 0, 0, b"\x01", 0))


def test_psam_personalisation_is_closed(psam: PsamSession, psam_os) -> None:
    before = psam_os.store.snapshot()
    for command in (Apdu(0x80, 0xE2, 0, 0, b"", 0), Apdu(0x80, 0xE0, 1, 0, bytes(10)),
                    Apdu(0x80, 0xE0, 4, 0, bytes(65)), Apdu(0x80, 0xE0, 6, 0, b"x"), Apdu(0x80, 0xEE, 0, 0)):
        with pytest.raises(errors.ConditionsError):
            psam.apdu.send(command)
    assert psam_os.store.snapshot() == before
