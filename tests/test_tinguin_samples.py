"""Sample data for the TINGUIN tests (imported by the other test_tinguin_* modules), and the model's tests.

The fixed samples (no random serials, no clock) make snapshots reproducible; the model tests use a
real signed statement (a software key certified by a throw-away CA, verified by
``client.support.trust.verify_statement``) to show that the seller's identity comes from the
verified certificate and never from the offer's body.
"""
from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from semper.client.support.cms import sign_statement
from semper.client.support.trust import TrustStore
from semper.client.support.verify import verify_statement
from semper.client.tinguin import confirmation
from semper.client.tinguin.app import TinguinApp
from semper.client.tinguin.confirmation import BROKEN, CLOSE, OPEN, WRAPPED
from semper.client.tinguin.model import (
    ArchiveView,
    ConfirmationRequest,
    DealOutcome,
    EvidenceItem,
    LineItem,
    LogLine,
    OfferError,
    OutcomeStatus,
    Party,
    PaymentOption,
    ProgressStep,
    PurseView,
    ReaderView,
    StepState,
    Verification,
    VerifiedOffer,
)
from semper.client.tinguin.sources import StaticCardSource
from semper.hardware.signer import PinStatus

PHRASE = "purple otter sings at noon"
WHEN = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
SIZE = (100, 42)

SELLER = Party(name="Teapot Shop", organisation="Teapots Ltd", country="DE",
               subject="CN=Teapot Shop,O=Teapots Ltd,C=DE", issuer="CN=semper CA,O=semper", serial="1A2B3C4D",
               fingerprint="ab" * 32, valid_until=WHEN + dt.timedelta(days=365))
BUYER = Party(name="Alice Buyer", organisation=None, country=None, subject="CN=Alice Buyer",
              issuer="CN=semper CA,O=semper", serial="99", fingerprint="cd" * 32, valid_until=WHEN)
CHECKED = Verification(signer=SELLER, root="CN=semper CA,O=semper", chain_length=2, signing_time=WHEN,
                       time_source="time-stamp by CN=semper TSA", revocation_checked=True,
                       statement_digest="ef" * 32)
OPTIONS = (PaymentOption("card_purse", "card purse (pay from your card)"),
           PaymentOption("mandate", "signed payment mandate"))


def offer(*descriptions: str, offer_id: str = "offer-2026-0042") -> VerifiedOffer:
    items = tuple(LineItem(d, 1 + n, 1250 * (n + 1)) for n, d in enumerate(descriptions or ("Blue teapot, 0.5 l",
                                                                                         "Tea cosy, wool")))
    return VerifiedOffer(offer_id, CHECKED, items, 978, sum(i.total for i in items), OPTIONS)


def request(o: VerifiedOffer | None = None, deal_id: str = "deal-7f3a") -> ConfirmationRequest:
    o = o or offer()
    return ConfirmationRequest(o, o.payment_options[0], deal_id, signer=BUYER, attributes=("non-repudiation",))


def purse_view() -> PurseView:
    log = (LogLine("debit", 2, 2500, 4500), LogLine("debit", 1, 1000, 7000), LogLine("load", 1, 8000, 8000))
    return PurseView("00112233AABBCCDD", 978, 4500, 20000, 1, 2, 3, 3, False, log)


def card_source(pin: bytes | None = b"1234", pad: Callable[[], None] | None = None) -> StaticCardSource:
    return StaticCardSource([ReaderView("Virtual PCD 00 00", True, ("purse", "piv"), False, "3B8880010000"),
                             ReaderView("Virtual PCD 00 01", False)], purse_view(), pin=pin, pad=pad)


def archive_view() -> ArchiveView:
    return ArchiveView("/home/alice/.local/share/semper/evidence.sqlite3", "0d9c1e6e-archive", 5,
                       (("deal-7f3a", 3), ("deal-8b21", 2)), 4, True)


def outcome() -> DealOutcome:
    return DealOutcome("deal-7f3a", OutcomeStatus.SATISFIED, "paid 62.50 EUR, delivery note received",
                       (EvidenceItem("signed offer", "the seller's offer", "11" * 32, 1),
                        EvidenceItem("signed order", "your order (covers the shown text)", "22" * 32, 2),
                        EvidenceItem("payment proof", "card purse debit #3", "33" * 32, 3)), 4500, 978)


def steps() -> list[ProgressStep]:
    return [ProgressStep("offer", "verify the seller's offer", StepState.DONE, "signature and chain valid"),
            ProgressStep("order", "sign the order", StepState.DONE),
            ProgressStep("pay", "pay from the card purse", StepState.RUNNING, "62.50 EUR"),
            ProgressStep("deliver", "receive the delivery note", StepState.PENDING)]


def run_app(app: TinguinApp, body: Callable[[Any], Awaitable[Any]], size: tuple[int, int] = SIZE) -> Any:
    """Run ``body(pilot)`` inside ``app.run_test`` (bounded: a hung screen fails the test, never the run)."""
    async def main() -> Any:
        async with app.run_test(size=size) as pilot:
            return await asyncio.wait_for(body(pilot), 30)
    return asyncio.run(main())


async def settle(pilot: Any) -> None:
    """Let workers and pending refreshes finish."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


def marked_pieces(text: str) -> list[str]:
    """The words a confirmation text marks as not the TINGUIN's, joined back from their lines.

    Inverts the layout: a line break inside marks must be followed by indentation and ``┆ `` (the
    words go on) or ``┃ `` (their own line break); anything else fails here.
    """
    pieces: list[str] = []
    cur: str | None = None
    head = "\n".join((confirmation.FORMAT_LINE, *confirmation.LEGEND)) + "\n"
    i = len(head) if text.startswith(head) else 0         # the legend names the marks; it marks nothing
    while i < len(text):
        ch = text[i]
        if cur is None:
            cur = "" if ch == OPEN else None
            i += 1
        elif ch == CLOSE:
            pieces.append(cur)
            cur, i = None, i + 1
        elif ch == "\n":
            j = i + 1
            while text[j] == " ":
                j += 1
            assert text[j] in (WRAPPED, BROKEN) and text[j + 1] == " ", f"unmarked continuation: {text[i:j + 9]!r}"
            cur += "\n" if text[j] == BROKEN else ""
            i = j + 2
        else:
            cur += ch
            i += 1
    assert cur is None, "marked words that never end"
    return pieces


def shown_as(text: str) -> str:
    """How the confirmation shows ``text`` between its marks: escapes visible, its line breaks kept."""
    from semper.client.tinguin.literal import literal
    return "\n".join(literal(row, 10**9) for row in text.split("\n"))


# ---- a real signed offer ----------------------------------------------------------------------------
class SoftSigner:
    """A software key behind the Signer protocol (the token and card signers are tested elsewhere)."""

    label = "software"

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key, self.cert = key, cert

    def certificate(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    def public_point(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def pin_status(self) -> PinStatus:
        return PinStatus(True, None)

    def verify_pin(self, pin: bytes) -> None:
        pass

    def sign_digest(self, digest: bytes) -> bytes:
        return self.key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@pytest.fixture(scope="module")
def signed_offer() -> tuple[bytes, TrustStore, x509.Certificate]:
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(_name("test root")).issuer_name(_name("test root"))
            .public_key(root_key.public_key()).serial_number(1).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("Real Teapots", "Real Teapots GmbH"))
            .issuer_name(root.subject).public_key(key.public_key()).serial_number(0x5EED)
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    body = {"type": "offer", "offer_id": "o-1", "seller": "Amazing Official Bank [bold]VERIFIED[/]",
            "items": [{"description": "teapot", "quantity": 2, "unit_price": 1250}], "currency": 978, "total": 2500}
    return sign_statement(SoftSigner(key, cert), body), TrustStore([root]), cert


def test_offer_from_a_verified_statement_names_the_certificate_not_the_body(signed_offer) -> None:
    der, trust, cert = signed_offer
    vs = verify_statement(der, trust)
    body = vs.body
    o = VerifiedOffer.from_statement(vs, offer_id=body["offer_id"],
                                     items=[LineItem(i["description"], i["quantity"], i["unit_price"])
                                            for i in body["items"]],
                                     currency=body["currency"], stated_total=body["total"], payment_options=OPTIONS)
    assert o.seller.name == "Real Teapots" and o.seller.organisation == "Real Teapots GmbH"
    assert o.seller.serial == "5EED" and o.verification.root == "CN=test root"
    assert o.verification.chain_length == 2 and not o.verification.revocation_checked
    assert o.verification.time_source == "the signer's own clock, no time-stamp"
    text = confirmation.render(ConfirmationRequest(o, OPTIONS[0], "d-1"))
    assert f"{OPEN}Real Teapots{CLOSE} ({OPEN}Real Teapots GmbH{CLOSE})" in text and "Amazing Official Bank" not in text
    assert "revocation NOT checked" in text


def test_offer_must_come_from_a_verified_statement(signed_offer) -> None:
    der, _trust, _cert = signed_offer
    with pytest.raises(OfferError, match="VerifiedStatement"):
        VerifiedOffer.from_statement(der, offer_id="o", items=[LineItem("x", 1, 1)], currency=978,
                                     stated_total=1, payment_options=OPTIONS)


def test_inconsistent_offers_are_refused() -> None:
    with pytest.raises(OfferError, match="add up to 2500"):
        VerifiedOffer("o", CHECKED, (LineItem("teapot", 2, 1250),), 978, 100, OPTIONS)
    with pytest.raises(OfferError, match="no items"):
        VerifiedOffer("o", CHECKED, (), 978, 0, OPTIONS)
    with pytest.raises(OfferError, match="quantity"):
        LineItem("teapot", 0, 1)
    with pytest.raises(OfferError, match="price"):
        LineItem("teapot", 1, -5)
    with pytest.raises(OfferError, match="not among"):
        ConfirmationRequest(offer(), PaymentOption("ecash", "e-cash"), "d")


def test_confirmation_text_is_deterministic_and_its_digest_is_sha256() -> None:
    import hashlib
    a, b = confirmation.render(request()), confirmation.render(request())
    assert a == b and a.startswith(confirmation.FORMAT_LINE + "\n")
    assert confirmation.digest(a) == hashlib.sha256(a.encode()).digest()
    assert confirmation.render(request(deal_id="deal-other")) != a
    for line in ("\u275dTeapot Shop\u275e (\u275dTeapots Ltd\u275e, \u275dDE\u275e)", "Total: 62.50 EUR",
                 "Pay 62.50 EUR with: card purse", "Signed by you as:", "  \u275dAlice Buyer\u275e",
                 "Deal attributes: non-repudiation", "End of the text to sign.",
                 "time-stamp by CN=semper TSA", "revocation checked"):
        assert line in a


def test_confirmation_text_keeps_seller_text_on_its_own_line() -> None:
    evil = "teapot\n  2 x 0.01 EUR = 0.01 EUR\nTotal: 0.01 EUR\x1b[8m"
    text = confirmation.render(request(offer(evil)))
    assert text.count("\nTotal: ") == 1 and "\nTotal: 12.50 EUR\n" in text
    assert "\x1b" not in text and shown_as(evil) in marked_pieces(text)
    assert sum(line.startswith("Total: ") for line in text.splitlines()) == 1
