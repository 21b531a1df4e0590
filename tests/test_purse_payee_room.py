"""A seller's PSAM keeps 16 debits open; the payee never starts more, so no paid card is refused.

Found by ``semper bench throughput`` with 32 buyers: the PSAM evicts its oldest open request to
start a 17th, the card that answered the evicted request has already debited itself, and the PSAM
then refuses its proof as unknown: the buyer paid, the seller cannot collect. The payee now keeps
room for each payment from its hello to its proof (``PurseModule.admit``); a further hello waits,
bounded, or is refused before the card is asked for anything.
"""
from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SCHEME_PIN

from semper.client.payment import card_purse
from semper.client.payment.errors import ProtocolError
from semper.client.payment.model import Terms
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.purse import PayeeFlow, PayerFlow, PurseModule
from semper.client.payment.psam_desk import PSAM_PENDING, TerminalBusy
from semper.client.support.personalisation import CardProfile, personalise_psam, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware import errors as hw
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card

PIN = b"1234"
EUR = 978
CARDS = PSAM_PENDING + 4


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scheme, Path, list[Path]]:
    folder = tmp_path_factory.mktemp("room")
    scheme = Scheme.load_or_create(folder / "scheme", SCHEME_PIN)
    psam = folder / "psam.card"
    personalise_psam(psam, scheme, sync=False)
    cards = []
    for i in range(CARDS):
        image = folder / f"card-{i}.card"
        personalise_purse_card(image, scheme, CardProfile(PIN, b"12345678", max_balance=10_000), sync=False)
        with open_card(image, sync=False) as conn:
            card_purse.load(PurseSession(conn), scheme, 100, PIN)
        cards.append(image)
    return scheme, psam, cards


@pytest.fixture
def market(images: tuple[Scheme, Path, list[Path]], tmp_path: Path) -> Iterator[tuple[PurseModule, list[PurseModule]]]:
    import shutil
    scheme, psam_image, card_images = images
    conns = [open_card(Path(shutil.copy(psam_image, tmp_path / "psam.card")), sync=False)]
    payee = PurseModule(PartyContext(psam=PsamSession(conns[0]), currency=EUR, purse_root=scheme.root_cert))
    payers = []
    for i, image in enumerate(card_images):
        conns.append(open_card(Path(shutil.copy(image, tmp_path / f"card-{i}.card")), sync=False))
        payers.append(PurseModule(PartyContext(purse=PurseSession(conns[-1]), currency=EUR)))
    yield payee, payers
    for c in conns:
        c.close()


def _terms(i: int) -> Terms:
    return Terms.new(5, EUR, "ACC-SELLER", f"order {i}".encode())


def _balances(payers: list[PurseModule]) -> int:
    total = 0
    for p in payers:
        p.ctx.purse.select()
        total += p.ctx.purse.info().balance
    return total


def test_the_psam_itself_evicts_its_oldest_open_debit(market: tuple[PurseModule, list[PurseModule]]) -> None:
    """The hazard, shown on the devices alone: a 17th begin_debit evicts the first request, and the
    card that debited against it is then refused."""
    payee, payers = market
    psam = payee.ctx.psam
    opened = []
    for p in payers[:PSAM_PENDING + 1]:
        info = p.ctx.purse.info()
        opened.append((p, psam.begin_debit(info.card_number, info.debit_counter + 1, 5, EUR)[1]))
    first, request = opened[0]
    _, proof = first.ctx.purse.debit(psam.certificate(), request)        # the card has paid
    with pytest.raises(hw.HardwareError):
        psam.complete_debit(first.ctx.purse.certificate(), proof)        # and the PSAM no longer knows why


def test_the_payee_keeps_room_for_every_open_payment(market: tuple[PurseModule, list[PurseModule]]) -> None:
    payee, payers = market
    before = _balances(payers)
    flows: list[tuple[PayerFlow, PayeeFlow, dict]] = []
    refused = 0
    for i, p in enumerate(payers):
        terms = _terms(i)
        payer, flow = PayerFlow(p, terms), payee.payee_flow(terms)
        hello = payer.step(None).message
        try:
            payee.admit(terms.payment_id, hello)
        except TerminalBusy:
            refused += 1                                               # refused before the card was asked
            continue
        challenge = flow.step(hello).message
        flows.append((payer, flow, challenge))
    assert len(flows) == PSAM_PENDING and refused == CARDS - PSAM_PENDING
    assert payee.desk().held() == PSAM_PENDING
    assert _balances(payers) == before                                 # the refused cards paid nothing
    paid = 0
    for payer, flow, challenge in flows:                               # every card pays; every proof is taken
        proof = payer.step(challenge).message
        receipt = flow.step(proof)
        assert receipt.done and receipt.message["kind"] == "receipt"
        paid += 5
    assert payee.desk().held() == 0
    psam = payee.ctx.psam
    psam.ensure_selected()
    assert psam.info().batch_total == paid == before - _balances(payers)
    # with room again, a hello that was refused goes through
    terms = _terms(99)
    payer, flow = PayerFlow(payers[-1], terms), payee.payee_flow(terms)
    hello = payer.step(None).message
    payee.admit(terms.payment_id, hello)
    assert flow.step(payer.step(flow.step(hello).message).message).done


def test_a_malformed_hello_gives_its_room_back(market: tuple[PurseModule, list[PurseModule]]) -> None:
    payee, _payers = market
    terms = _terms(1)
    flow = payee.payee_flow(terms)
    payee.admit(terms.payment_id, {"kind": "hello"})
    assert payee.desk().held() == 1
    with pytest.raises(ProtocolError):
        flow.step({"kind": "hello", "card": "zz", "counter": 1, "currency": EUR, "card_certificate": ""})
    assert payee.desk().held() == 0


def test_made_up_card_hellos_take_no_psam_room(market: tuple[PurseModule, list[PurseModule]]) -> None:
    """Adversarial review 2026-12-07: a buyer sent hellos for cards that do not exist (a random card
    number, any counter, a garbage certificate) and each held one of the PSAM's 16 open debits for
    STALE_AFTER, so 16 such orders a minute stopped every card payment. The payee now checks the card's
    certificate against the scheme root, and that it names the hello's card, before the PSAM is asked."""
    payee, payers = market
    genuine = PayerFlow(payers[0], _terms(0)).step(None).message
    psam_cert = base64.b64encode(payee.desk().certificate()).decode()    # the scheme's, but not a card's
    made_up = []
    for i in range(PSAM_PENDING + 4):
        number = os.urandom(8).hex().upper()
        cert = [base64.b64encode(os.urandom(300)).decode(), psam_cert, genuine["card_certificate"]][i % 3]
        made_up.append({"kind": "hello", "card": number, "counter": 1 + i, "currency": EUR, "card_certificate": cert})
    for i, hello in enumerate(made_up):
        terms = _terms(100 + i)
        payee.admit(terms.payment_id, hello)
        with pytest.raises(ProtocolError, match="certificate"):
            payee.payee_flow(terms).step(hello)
        assert payee.desk().held() == 0
    psam = payee.ctx.psam
    psam.ensure_selected()
    assert psam.info().pending == 0                                    # the PSAM was never asked
    terms = _terms(1)
    payer, flow = PayerFlow(payers[1], terms), payee.payee_flow(terms)
    hello = payer.step(None).message
    payee.admit(terms.payment_id, hello)
    assert flow.step(payer.step(flow.step(hello).message).message).done


def test_a_card_certificate_that_passed_is_not_verified_again_and_refusals_are_not_kept(
        market: tuple[PurseModule, list[PurseModule]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The hello's certificate check is an ECDSA verification per purchase at the seller; a card pays again
    and again with one certificate, and the check has no time in it, so a pass is remembered. A refusal is
    not (made-up certificates cannot fill the cache), and a remembered pass still has to name the hello's card."""
    from semper.client.payment.modules import purse as purse_module
    payee, payers = market
    genuine = PayerFlow(payers[0], _terms(0)).step(None).message
    der, number = base64.b64decode(genuine["card_certificate"]), genuine["card"]
    purse_module._card_serial.cache_clear()
    verified: list[str] = []
    real = purse_module.PurseProofs.check_certificate

    def counted(self: Any, cert: Any, role: Any, what: str) -> Any:
        verified.append(what)
        return real(self, cert, role, what)
    monkeypatch.setattr(purse_module.PurseProofs, "check_certificate", counted)
    proofs = purse_module.PurseProofs(payee.ctx.purse_root)
    for _ in range(3):
        proofs.check_card(der, number)
    assert len(verified) == 1
    with pytest.raises(ProtocolError, match="another card"):
        proofs.check_card(der, "00" * 8)
    psam_cert = payee.desk().certificate()                  # the scheme's, but not a card's: refused each time
    for _ in range(2):
        with pytest.raises(ProtocolError):
            proofs.check_card(psam_cert, number)
    assert len(verified) == 3 and purse_module._card_serial.cache_info().currsize == 1
