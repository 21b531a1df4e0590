"""The PIV applet in process: every command, its wrong lengths / P1P2 / key references, PIN life."""
from __future__ import annotations

import hashlib

import pytest
from conftest import SCHEME_PIN
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semper.client.support.personalisation import CardProfile, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware import errors, tlv
from semper.hardware.iso7816 import AID
from semper.hardware.piv import CHUID, PivSession, PivSigner, Slot
from semper.hardware.signer import sign_message
from semper.hardware.simulator import open_card

PIN, PUK = b"123456", b"12345678"
SELECT = bytes.fromhex("00A4040009A00000030800001000")


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    folder = tmp_path_factory.mktemp("piv")
    image = folder / "card"
    with Scheme.load_or_create(folder / "scheme", SCHEME_PIN) as scheme:
        card = personalise_purse_card(image, scheme, CardProfile(PIN, PUK), sync=False)
    return folder, image, card


@pytest.fixture
def card(issued, tmp_path):
    """A fresh copy of the issued card for each test (PIN counters start at 3)."""
    import shutil
    _folder, image, _card = issued
    copy = tmp_path / "card"
    shutil.copyfile(image, copy)
    with open_card(copy, sync=False) as conn:
        yield conn


def raw(conn, hexstr: str | bytes) -> tuple[bytes, int]:
    r = conn.transmit(bytes.fromhex(hexstr) if isinstance(hexstr, str) else hexstr)
    return r[:-2], (r[-2] << 8) | r[-1]


def verify_sig(cert_der: bytes, digest: bytes, signature: bytes) -> None:
    cert = x509.load_der_x509_certificate(cert_der)
    cert.public_key().verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))


# ---- SELECT and GET DATA ---------------------------------------------------------------------------
def test_select_returns_application_property_template(card):
    data, sw = raw(card, SELECT + b"\x00")
    assert sw == 0x9000
    apt = tlv.decode(data)[0x61]
    fields = tlv.decode(apt)
    assert fields[0x4F] == bytes.fromhex("000010000100")
    assert tlv.decode(fields[0xAC])[0x80] == b"\x11"                      # ECC P-256


def test_get_data_objects(card):
    piv = PivSession(card)
    disc = tlv.decode(piv.get_object(b"\x7E"))[0x7E]
    assert tlv.decode(disc)[0x4F] == AID.PIV.value
    chuid = tlv.decode(tlv.decode(piv.get_object(CHUID))[0x53])
    assert len(chuid[0x34]) == 16 and len(chuid[0x30]) == 25
    for slot in (Slot.AUTHENTICATION, Slot.SIGNATURE):
        cert = x509.load_der_x509_certificate(piv.certificate(slot))
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature and ku.content_commitment == (slot is Slot.SIGNATURE)
    with pytest.raises(errors.NotFoundError):
        piv.get_object(bytes.fromhex("5FC101"))                          # no 9E certificate
    with pytest.raises(errors.NotFoundError):
        piv.get_object(bytes.fromhex("5FC107"))                          # no CCC


@pytest.mark.parametrize("apdu,sw", [
    ("00CB3FFF035C017E00", 0x9000),
    ("00CB3FFF035C017E", 0x6114),          # no Le: the answer waits for GET RESPONSE
    ("00CB3FFE035C017E", 0x6A86),          # wrong P2
    ("00CB00FF035C017E", 0x6A86),          # wrong P1
    ("00CB3FFF025C01", 0x6A80),            # tag list too short
    ("00CB3FFF035D017E", 0x6A80),          # not a 5C tag list
    ("00CB3FFF045C027E00", 0x6A80),        # 2-byte tag length is not a PIV object id
    ("00CB3FFF055C017E0000", 0x6A80),      # trailing data
    ("00CB3FFF", 0x6A80),                   # no data
    ("80CB3FFF035C017E", 0x6E00),          # wrong class
    ("00CB3FFF045C017E", 0x6700),          # Lc says 4, 3 follow
])
def test_get_data_rejects_malformed(card, apdu, sw):
    raw(card, SELECT)
    assert raw(card, apdu)[1] == sw


# ---- PIN and PUK -------------------------------------------------------------------------------------
def test_pin_counter_down_to_blocked_and_back_with_puk(card):
    piv = PivSession(card)
    assert piv.pin_status().tries_left == 3
    for left in (2, 1):
        with pytest.raises(errors.WrongPinError) as e:
            piv.verify_pin(b"000000")
        assert e.value.tries_left == left
        assert piv.pin_status().tries_left == left                       # empty VERIFY spends nothing
    with pytest.raises(errors.WrongPinError) as e:
        piv.verify_pin(b"000000")
    assert e.value.tries_left == 0
    with pytest.raises(errors.PinBlockedError):
        piv.verify_pin(PIN)                                               # even the right PIN
    assert piv.pin_status().blocked
    with pytest.raises(errors.WrongPinError):
        piv.unblock_pin(b"00000000", b"654321")                           # wrong PUK costs a PUK try
    piv.unblock_pin(PUK, b"654321")
    assert piv.pin_status().tries_left == 3
    piv.verify_pin(b"654321")
    assert piv.pin_status().verified


def test_puk_blocks_after_three_wrong(card):
    piv = PivSession(card)
    for _ in range(3):
        with pytest.raises(errors.WrongPinError):
            piv.verify_puk(b"00000000")
    with pytest.raises(errors.PinBlockedError):
        piv.unblock_pin(PUK, b"654321")


def test_change_pin_and_puk(card):
    piv = PivSession(card)
    piv.change_pin(PIN, b"2468")
    with pytest.raises(errors.WrongPinError):
        piv.verify_pin(PIN)
    piv.verify_pin(b"2468")
    piv.change_puk(PUK, b"87654321")
    piv.verify_puk(b"87654321")
    with pytest.raises(errors.WrongPinError):
        piv.change_pin(b"999999", b"111111")                             # old PIN wrong: a try is spent
    assert piv.pin_status().tries_left == 2


@pytest.mark.parametrize("apdu,sw", [
    ("0020008008313233343536FFFF", 0x9000),
    ("00200080083132333435FFFFFF", 0x63C2),    # wrong PIN
    ("002000800731323334353600", 0x6700),      # Lc 7
    ("00200080083132FFFF353636FF", 0x6A80),    # FF inside
    ("0020008008414243444546FFFF", 0x6A80),    # not digits: no try spent
    ("0020008208313233343536FFFF", 0x6A86),    # unknown reference
    ("0020000008313233343536FFFF", 0x6A88),    # reference 00: global PIN not supported
    ("0020018008313233343536FFFF", 0x6A86),    # P1 not 00/FF
    ("0024008008313233343536FFFF", 0x6700),    # CHANGE needs 16 bytes
    ("002C008110313233343536373831323334FFFFFFFF", 0x6A86),   # unblock the PUK: not a thing
])
def test_pin_commands_reject_malformed(card, apdu, sw):
    raw(card, SELECT)
    assert raw(card, apdu)[1] == sw


def test_verify_p1_ff_resets_security_status(card):
    piv = PivSession(card)
    piv.verify_pin(PIN)
    assert piv.pin_status().verified
    raw(card, "0020FF80")
    assert not piv.pin_status().verified


# ---- signatures -----------------------------------------------------------------------------------------
def test_9c_needs_pin_right_before_each_signature(card):
    piv = PivSession(card)
    digest = hashlib.sha256(b"order 42").digest()
    with pytest.raises(errors.PinRequiredError):
        piv.sign_digest(Slot.SIGNATURE, digest)
    piv.verify_pin(PIN)
    sig = piv.sign_digest(Slot.SIGNATURE, digest)
    verify_sig(piv.certificate(Slot.SIGNATURE), digest, sig)
    with pytest.raises(errors.PinRequiredError):
        piv.sign_digest(Slot.SIGNATURE, digest)                           # PIN always: once per signature
    piv.sign_digest(Slot.AUTHENTICATION, digest)                           # 9A: PIN once is enough


def test_signer_protocol_over_piv(card):
    signer = PivSigner(PivSession(card))
    signer.verify_pin(PIN)
    message = b"I order one book for 12.50 EUR"
    sig = sign_message(signer, message)
    cert = x509.load_der_x509_certificate(signer.certificate())
    cert.public_key().verify(sig, message, ec.ECDSA(hashes.SHA256()))
    assert signer.public_point()[0] == 4 and len(signer.public_point()) == 65


@pytest.mark.parametrize("apdu,sw", [
    ("00871191 04 7C028200", 0x6A86),           # slot 91 does not exist
    ("00871C9C 04 7C028200", 0x6A86),           # RSA algorithm 07? (1C) not supported
    # no key in 9E
    ("0087119E 26 7C24820081200000000000000000000000000000000000000000000000000000000000000000", 0x6A88),
    ("0087119A 04 7C028200", 0x6A80),           # no hash
    ("0087119A 04 7D028200", 0x6A80),           # not a 7C template
    ("0087119A 05 7C028200", 0x6700),           # Lc mismatch
])
def test_general_authenticate_rejects_malformed(card, apdu, sw):
    raw(card, SELECT)
    raw(card, "0020008008313233343536FFFF")
    assert raw(card, apdu.replace(" ", ""))[1] == sw


def test_short_and_long_hashes_follow_ecdsa_truncation(card):
    piv = PivSession(card)
    piv.verify_pin(PIN)
    cert = piv.certificate(Slot.AUTHENTICATION)
    long_hash = hashlib.sha512(b"x").digest()
    verify_sig(cert, long_hash[:32], piv.sign_digest(Slot.AUTHENTICATION, long_hash))
    short = b"\x01\x02\x03"
    verify_sig(cert, short.rjust(32, b"\0"), piv.sign_digest(Slot.AUTHENTICATION, short))


# ---- management --------------------------------------------------------------------------------------------
def test_generate_and_put_data_need_management_key_or_pin(card, issued):
    piv = PivSession(card)
    with pytest.raises(errors.PinRequiredError):
        piv.generate(Slot.KEY_MANAGEMENT)
    with pytest.raises(errors.NotAuthenticError):
        piv.authenticate_admin(bytes(16))
    piv.authenticate_admin(issued[2].piv_admin_key)
    point = piv.generate(Slot.KEY_MANAGEMENT)
    assert len(point) == 65 and point[0] == 4
    # a certificate written with PUT DATA (chained: it is longer than 255 bytes) reads back
    cert = piv.certificate(Slot.SIGNATURE)
    piv.put_certificate(Slot.KEY_MANAGEMENT, cert)
    assert piv.certificate(Slot.KEY_MANAGEMENT) == cert
    # the new key signs, and only its own signatures verify against its point
    piv.verify_pin(PIN)
    digest = hashlib.sha256(b"k").digest()
    sig = piv.sign_digest(Slot.KEY_MANAGEMENT, digest)
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point).verify(
        sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))


@pytest.mark.parametrize("apdu,sw", [
    ("00470091 05 AC03800111", 0x6A86),         # no such slot
    ("0047019A 05 AC03800111", 0x6A86),         # P1 must be 00
    ("0047009A 05 AC03800114", 0x6A80),         # P-384 not supported
    ("0047009A 05 AB03800111", 0x6A80),         # no AC template
    ("00DB3FFF 07 5C035FC1057000", 0x6A80),     # object not in a 53 template
    ("00DB3FFF 07 5C035FC1FF5300", 0x6A82),     # not a writable object
    ("00DB3FFF 05 5C017E5300", 0x6982),         # discovery object is fixed
])
def test_management_commands_reject_malformed(card, apdu, sw):
    raw(card, SELECT)
    raw(card, "0020008008313233343536FFFF")
    assert raw(card, apdu.replace(" ", ""))[1] == sw


def test_personalisation_closed(card):
    raw(card, SELECT)
    assert raw(card, "80E0070010" + "00" * 16)[1] == 0x6985                # cannot set a new management key
    assert raw(card, "80EE0000")[1] == 0x6985


def test_private_keys_never_leave_the_card(card):
    """No command answers with a private scalar: collect every answer and look for them."""
    store = card.card.store                                               # the test may look inside
    secrets = [store.get(k) for k in store.keys("piv/key/")]
    assert secrets
    answers = b""
    for hexstr in ("00CB3FFF035C017E", "00CB3FFF055C035FC105", "00CB3FFF055C035FC10A", "00CB3FFF055C035FC102"):
        raw(card, SELECT)
        answers += card.transmit(bytes.fromhex(hexstr))
    for s in secrets:
        assert s not in answers


# ---- fuzz ------------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ins=st.sampled_from([0x20, 0x24, 0x2C, 0x47, 0x87, 0xCB, 0xDB, 0xC0, 0xA4]),
       p1=st.integers(0, 255), p2=st.integers(0, 255), data=st.binary(max_size=300),
       le=st.one_of(st.none(), st.integers(0, 255)))
def test_fuzz_piv_never_crashes_and_refusals_change_nothing(card, ins, p1, p2, data, le):
    from semper.hardware.iso7816 import Apdu
    raw(card, SELECT)
    store = card.card.store
    before = store.snapshot()
    apdu = Apdu(0x00, ins, p1, p2, data, le).encode()
    r = card.transmit(apdu)
    assert len(r) >= 2
    sw = (r[-2] << 8) | r[-1]
    assert sw != 0x6F00, f"internal error for {apdu.hex()}"
    after = store.snapshot()
    if sw != 0x9000 and r[-2] != 0x61:
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        # a wrong PIN/PUK legitimately spends a try (63Cx): only the counters may differ
        assert changed <= {"card/pin/tries", "card/puk/tries"}, (apdu.hex(), hex(sw), changed)
        if changed:
            assert 0x63C0 <= sw <= 0x63CF or sw == 0x6983


# ---- key agreement (9D) ------------------------------------------------------------------------------
def test_ecdh_with_key_9d_matches_the_host_side(card):
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    piv = PivSession(card)
    cert = x509.load_der_x509_certificate(piv.certificate(Slot.KEY_MANAGEMENT))
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_agreement
    peer = ec.generate_private_key(ec.SECP256R1())
    peer_point = peer.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    with pytest.raises(errors.PinRequiredError):
        piv.key_agreement(peer_point)
    piv.verify_pin(PIN)
    shared = piv.key_agreement(peer_point)
    assert shared == peer.exchange(ec.ECDH(), cert.public_key())
    with pytest.raises(errors.ConditionsError):
        piv.key_agreement(peer_point, Slot.SIGNATURE)                       # only 9D agrees keys
    with pytest.raises(errors.InvalidInputError):
        piv.key_agreement(b"\x04" + bytes(64))                              # not a point on the curve
