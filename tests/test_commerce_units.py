"""The commerce layer's pieces on their own: forms, deal attributes, the offer and order checks, the PIN
gate, the archive shared by threads. No services, no cards: certificates from a throwaway root."""
from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st
from test_tinguin_samples import SoftSigner

from semper.bench.policy_ui import PolicyUI
from semper.client.commerce import documents as docs
from semper.client.commerce.archive import SharedArchive
from semper.client.commerce.catalogue import demo_catalogue
from semper.client.commerce.deal import DealAttributes, deal_attributes, new_deal_id
from semper.client.commerce.errors import CommerceError, FormError, OfferRefused
from semper.client.commerce.forms import DELIVERY, PICKUP, form_for
from semper.client.commerce.pin import GatedSigner, PinNotEntered, tinguin_pin
from semper.client.support.archive import ArchiveError
from semper.client.support.cms import sign_statement
from semper.client.support.pki import ROLES
from semper.client.support.trust import TrustStore
from semper.client.support.verify import verify_statement

NOW = dt.datetime.now(dt.UTC)


def _cert(root_key: Any, root: x509.Certificate, role: str, cn: str
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    oid = x509.ObjectIdentifier(str(ROLES[role].role_oid))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(root.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(hours=1)).not_valid_after(NOW + dt.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, oid]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    return key, cert


def _root(common_name: str, days: int = 30) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed test root CA (key, certificate), valid from a day ago for ``days``."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(root_key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    return root_key, root


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    root_key, root = _root("unit root")
    seller = SoftSigner(*_cert(root_key, root, "seller", "Teapot Shop"))
    person = SoftSigner(*_cert(root_key, root, "person", "Mallory"))
    return {"trust": TrustStore([root]), "seller": seller, "person": person}


def _offer(signer: SoftSigner, nonce: str = "n" * 32, valid: dt.timedelta = dt.timedelta(minutes=30),
           **changes: Any) -> bytes:
    cat = demo_catalogue()
    body = docs.offer_body(deal_id=new_deal_id(), nonce=nonce, workflow="mail-order",
                           lines=[(cat.get("teapot"), 2), (cat.get("market-report"), 1)], payment=["card-purse"],
                           seller_account="A1", psam="5053AA", attributes=deal_attributes("mail-order"),
                           form=DELIVERY, valid_until=NOW + valid)
    body.update(changes)
    return sign_statement(signer, body)


def test_forms_validate_what_is_signed() -> None:
    ok = DELIVERY.validate({"name": " Bob   Buyer ", "street": "1 Main St", "postcode": "12345", "city": "Town",
                            "country": "de"})
    assert ok["name"] == "Bob Buyer" and ok["country"] == "DE"
    for values, field in (({"name": "Bob"}, "street"),
                          ({**ok, "colour": "red"}, "colour"),
                          ({**ok, "name": "Bob\u202eevil"}, "name"),            # a bidi override would hide text
                          ({**ok, "postcode": "12/45"}, "postcode"),
                          ({**ok, "country": "Germany"}, "country")):
        with pytest.raises(FormError) as e:
            DELIVERY.validate(values)
        assert e.value.field == field
    assert PICKUP.validate({"pickup": "Kiosk C"}) == {"pickup": "Kiosk C"}
    with pytest.raises(FormError):
        PICKUP.validate({"pickup": "my home"})
    assert form_for("physical", anonymous=True) is PICKUP and form_for("physical", anonymous=False) is DELIVERY
    assert DELIVERY.lines(ok)[0] == ("Deliver to", "Bob Buyer")


def test_deal_attributes_are_consistent() -> None:
    with pytest.raises(CommerceError, match="anonymous"):
        DealAttributes(anonymous=True, non_repudiation=True)
    anon = deal_attributes("mail-order", anonymous=True)
    assert anon.payment_requirements().anonymous and not anon.non_repudiation and "anonymous" in anon.labels()
    assert deal_attributes("information").fair and not deal_attributes("mail-order").fair
    assert DealAttributes.from_dict(anon.as_dict()) == anon
    with pytest.raises(CommerceError):
        DealAttributes.from_dict({"anonymous": "yes"})


def test_offer_checks(pki: dict[str, Any]) -> None:
    trust, seller, person = pki["trust"], pki["seller"], pki["person"]
    vs = verify_statement(_offer(seller), trust)
    offer = docs.parse_offer(vs, deal_id=None, nonce="n" * 32)
    assert offer.total == 2 * 1250 + 400 and offer.lines[1].sha256 and offer.psam == "5053AA"
    cases = [(_offer(seller, nonce="m" * 32), "replayed"),
             (_offer(seller, valid=dt.timedelta(seconds=-1)), "expired"),
             (_offer(seller, valid=dt.timedelta(days=3)), "implausible"),
             (_offer(seller, total=1), "inconsistent"),
             (_offer(person), "not a seller"),
             (_offer(seller, items=[{"sku": "x", "kind": "information", "quantity": 1, "unit_price": 5}], total=5),
              "digest")]
    for der, why in cases:
        with pytest.raises(OfferRefused, match=why):
            docs.parse_offer(verify_statement(der, trust), deal_id=None, nonce="n" * 32)


def test_the_seller_checks_the_order_against_its_own_offer(pki: dict[str, Any]) -> None:
    der = _offer(pki["seller"])
    vs = verify_statement(der, pki["trust"])
    offer = docs.parse_offer(vs, deal_id=None, nonce="n" * 32)
    form = {"name": "Bob", "street": "1 Main St", "postcode": "12345", "city": "Town", "country": "DE"}
    order = docs.order_body(offer, payment="card-purse", payment_label="card", confirmation_sha256="ab" * 32,
                            scripted=False, action="ORDER_AND_PAY", details=(), form=form,
                            attributes=offer.attributes)
    assert docs.check_order(order, vs.body, offer.digest) == form
    for change, why in (({"total": 1}, "differ"), ({"offer_sha256": "00" * 32}, "another offer"),
                        ({"payment": "ecash"}, "does not accept"), ({"confirmation": {}}, "confirmation"),
                        ({"attributes": deal_attributes("mail-order", anonymous=True).as_dict()}, "attributes")):
        with pytest.raises(CommerceError, match=why):
            docs.check_order({**order, **change}, vs.body, offer.digest)
    with pytest.raises(FormError):
        docs.check_order({**order, "form": {"name": "Bob"}}, vs.body, offer.digest)


def test_every_card_signature_waits_for_a_pin_entry(pki: dict[str, Any]) -> None:
    inner = pki["person"]
    signed: list[bytes] = []

    class Counting(SoftSigner):
        def sign_digest(self, digest: bytes) -> bytes:
            signed.append(digest)
            return super().sign_digest(digest)
    card = Counting(inner.key, inner.cert)
    no_pin = PolicyUI(pin=None)
    with pytest.raises(PinNotEntered):
        GatedSigner(card, no_pin).sign_digest(b"\0" * 32)
    assert signed == [] and no_pin.pins == ["sign with your card's key"]
    ui = PolicyUI(pin=b"1234")
    gated = GatedSigner(card, ui)
    with gated.purpose_for("sign the order for 25.00 EUR"):
        gated.sign_digest(b"\1" * 32)
        tinguin_pin(ui)("sign a cheque for 25.00", gated)      # a module's PIN entry: announced, not asked twice
        gated.sign_digest(b"\2" * 32)
        gated.sign_digest(b"\3" * 32)
    assert ui.pins == ["sign the order for 25.00 EUR", "sign a cheque for 25.00", "sign the order for 25.00 EUR"]
    assert len(signed) == 3 and gated.signatures == 3


def test_one_archive_file_from_many_threads(tmp_path: Path) -> None:
    archive = SharedArchive(tmp_path / "ev.sqlite3")

    def write(n: int) -> None:
        for i in range(20):
            archive.append("d" * 32, "note", f"{n}-{i}".encode())
    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    archive.sync()
    assert len(archive.entries("d" * 32)) == 80
    assert archive.verify().ok
    archive.close()


def test_a_batch_writes_its_entries_together_and_before_the_flush(tmp_path: Path) -> None:
    """A seller's request handler archives in a batch: nothing is in the file until the block ends or
    the deal is flushed, then everything is, in order, on a valid chain; an exception ending the block
    still writes what was archived; a bad entry is refused at once, not at the end."""
    archive = SharedArchive(tmp_path / "ev.sqlite3")
    path = tmp_path / "ev.sqlite3"

    def stored() -> list[bytes]:
        with sqlite3.connect(path) as db:
            return [bytes(r[0]) for r in db.execute("SELECT content FROM archive_entry ORDER BY entry_index")]
    archive.append("d" * 32, "note", b"before")
    with archive.batch():
        archive.append("d" * 32, "note", b"one")
        with archive.batch():                            # nested: the outer block writes
            archive.append("d" * 32, "note", b"two")
        assert stored() == [b"before"]
        with pytest.raises(ArchiveError):
            archive.append("d" * 32, "", b"no kind")     # refused now, nothing queued
        archive.sync()                                   # a flush covers what the batch holds
        assert stored() == [b"before", b"one", b"two"]
        archive.append("e" * 32, "note", b"three")
    assert stored() == [b"before", b"one", b"two", b"three"]
    with pytest.raises(RuntimeError):
        with archive.batch():
            archive.append("e" * 32, "decision", b"refused")
            raise RuntimeError("the payment failed")
    assert stored()[-1] == b"refused"
    assert archive.verify().ok and len(archive.entries()) == 5
    archive.close()


def test_threads_that_sync_together_share_a_flush_that_covers_each_of_them(tmp_path: Path, monkeypatch) -> None:
    """Group commit: fewer flushes than callers, and every caller returns only after a flush that
    started after its own entry was written."""
    import time
    archive = SharedArchive(tmp_path / "ev.sqlite3")
    flushes: list[tuple[float, float]] = []

    def slow_flush() -> None:
        start = time.monotonic()
        time.sleep(0.02)
        flushes.append((start, time.monotonic()))
    monkeypatch.setattr(archive, "_fsync_log", slow_flush)
    seen: list[tuple[float, float]] = []

    def deliver(n: int) -> None:
        archive.append("d" * 32, "note", str(n).encode())
        written = time.monotonic()
        archive.sync()
        seen.append((written, time.monotonic()))
    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(seen) == 8 and 1 <= len(flushes) < 8
    for written, returned in seen:
        assert any(written <= start and end <= returned for start, end in flushes)
    archive.close()


@given(st.datetimes(min_value=dt.datetime(1000, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)))
def test_a_time_reads_back_exactly_as_the_shop_writes_it(when: dt.datetime) -> None:
    when = when.replace(microsecond=0, tzinfo=dt.UTC)
    assert docs.parse_time(docs.rfc3339(when), "validity") == when


@given(st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30, 23, 59, 59)),
       st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(-dt.timedelta(hours=8))]))
def test_a_time_is_written_as_strftime_wrote_it(when: dt.datetime, zone: dt.tzinfo) -> None:
    """rfc3339, written by hand, gives strftime's text for every time and zone (a year below 1000 too)."""
    when = when.replace(tzinfo=zone)
    assert docs.rfc3339(when) == when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("text", ["2026-1-05T01:02:03Z", "2026-01-05T1:02:03Z", "2026-02-30T00:00:00Z",
                                  "2026-01-05 01:02:03Z", "2026-01-05T01:02:03+00:00", "2026-01-05T01:02:03",
                                  "２０２６-01-05T01:02:03Z", "+026-01-05T01:02:03Z", "2026-01-05T24:00:00Z", "",
                                  None, 20260105])
def test_a_time_not_exactly_as_the_shop_writes_it_is_refused(text: Any) -> None:
    """Only the one form ``rfc3339`` writes: unpadded fields (which strptime took), other separators,
    offsets, non-ASCII digits and impossible dates are refused."""
    with pytest.raises(OfferRefused, match="not a time"):
        docs.parse_time(text, "validity")
    with pytest.raises(OfferRefused, match="not a time"):       # and again: a refusal is not remembered as a time
        docs.parse_time(text, "validity")


def test_times_and_roles_read_once_are_the_same_when_read_again() -> None:
    """parse_time and has_role keep what they read (docs/performance.md): the same answer the second time, for
    each text and each certificate (one parsed again from its DER is the same certificate), and a bound."""
    when = dt.datetime(2026, 12, 7, 10, 0, 1, tzinfo=dt.UTC)
    assert docs.parse_time("2026-12-07T10:00:01Z", "validity") == when == docs.parse_time("2026-12-07T10:00:01Z", "x")
    root_key, root = _root("roles root")
    person, seller = _cert(root_key, root, "person", "P")[1], _cert(root_key, root, "seller", "S")[1]
    again = x509.load_der_x509_certificate(person.public_bytes(serialization.Encoding.DER))
    for _ in range(2):
        assert docs.has_role(person, "person") and docs.has_role(again, "person")
        assert not docs.has_role(person, "seller") and not docs.has_role(root, "person")
        assert docs.has_role(seller, "seller") and not docs.has_role(seller, "person")
    for n in range(docs._REMEMBERED + 1):
        docs.parse_time(docs.rfc3339(when + dt.timedelta(seconds=n)), "validity")
    assert len(docs._times) <= docs._REMEMBERED
    assert person in docs._usages and seller in docs._usages
    # a certificate larger than a memo keeps (padded with an extension of its own) is answered, and not kept
    big = (x509.CertificateBuilder().subject_name(person.subject).issuer_name(root.subject)
           .public_key(person.public_key()).serial_number(7).not_valid_before(person.not_valid_before_utc)
           .not_valid_after(person.not_valid_after_utc)
           .add_extension(person.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value, critical=False)
           .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\0" * 20_000),
                          critical=False)
           .sign(root_key, hashes.SHA256()))
    assert docs.has_role(big, "person") and not docs.has_role(big, "seller") and big not in docs._usages


def test_form_values_are_refused_for_every_control_or_line_separator_and_nothing_else() -> None:
    """The form check's shortcut for printable ASCII (forms._plain) refuses exactly what asking each
    character's Unicode category refuses: every ASCII control (tab, DEL), the line and paragraph separators
    and the format characters beyond ASCII; spaces are folded either way."""
    import unicodedata

    from semper.client.commerce.errors import FormError
    from semper.client.commerce.forms import _plain
    for c in [*range(0x100), 0x2028, 0x2029, 0x200B, 0x202E, 0xFEFF, 0xE000]:
        ch = chr(c)
        refused = unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")
        for value in (ch, f"a {ch}b", f"Bahnhofstra\u00dfe 1{ch}"):
            try:
                out = _plain(value, "street")
            except FormError:
                assert refused, (hex(c), value)
            else:
                assert not refused and out == " ".join(value.split()), (hex(c), value)
