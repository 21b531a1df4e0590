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

from semper.client.payment import card_purse, psam_desk
from semper.client.payment.errors import PaymentError, ProtocolError
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


def _refused_before_the_psam(payee: PurseModule, hellos: list[dict[str, Any]], first: int, error: type[Exception],
                             match: str) -> None:
    """Each hello is refused (``error`` saying ``match``) with no room kept, and the PSAM is never asked."""
    for i, hello in enumerate(hellos):
        terms = _terms(first + i)
        payee.admit(terms.payment_id, hello)
        with pytest.raises(error, match=match):
            payee.payee_flow(terms).step(hello)
        assert payee.desk().held() == 0
    psam = payee.ctx.psam
    psam.ensure_selected()
    assert psam.info().pending == 0                                    # the PSAM was never asked


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
    _refused_before_the_psam(payee, made_up, 100, ProtocolError, "certificate")
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


def _made_up_hello(i: int) -> dict[str, Any]:
    return {"kind": "hello", "card": os.urandom(8).hex().upper(), "counter": 1 + i, "currency": EUR,
            "card_certificate": base64.b64encode(os.urandom(300)).decode()}


def test_a_payee_without_the_scheme_root_refuses_every_hello_and_holds_no_room(
        market: tuple[PurseModule, list[PurseModule]]) -> None:
    """Left open by the adversarial review of 2026-12-07: the hello's certificate check ran only when the
    payee's context held the purse scheme root, so a payee built without one (test fixtures, ``semper card
    pay``) let a made-up card's hello hold one of the PSAM's 16 open debits for STALE_AFTER. A payee without
    the root now refuses every hello, made up or genuine, saying what the shop lacks, before its PSAM is
    asked and with no room kept."""
    payee, payers = market
    rootless = PurseModule(PartyContext(psam=payee.ctx.psam, currency=EUR))          # no purse_root
    genuine = PayerFlow(payers[0], _terms(0)).step(None).message
    _refused_before_the_psam(rootless, [_made_up_hello(0), _made_up_hello(1), genuine], 200, PaymentError,
                             "purse scheme's root")


def test_one_cards_certificate_takes_at_most_its_cap_of_psam_room(market: tuple[PurseModule, list[PurseModule]]
                                                                    ) -> None:
    """Left open by the adversarial review of 2026-12-07: card certificates are public (every hello carries
    one), so whoever holds one genuine card's certificate could send orders whose hellos name that card,
    each holding one of the PSAM's 16 open debits for STALE_AFTER: 16 such orders a minute stopped every card
    payment at the PSAM. The desk now keeps at most CARD_OPEN_CAP debits open per card and refuses a further
    hello naming it before the PSAM is asked; it never evicts one of the card's open requests, since that
    card may have paid already. The card's open payments still complete, its payment's own hello sent again
    is not counted twice, and every other card still pays."""
    payee, payers = market
    victim = payers[0]
    opened: list[tuple[PayerFlow, PayeeFlow, dict[str, Any], dict[str, Any], Terms]] = []
    refused = []
    for i in range(PSAM_PENDING + 4):
        terms = _terms(300 + i)
        payer, flow = PayerFlow(victim, terms), payee.payee_flow(terms)
        hello = payer.step(None).message                 # the genuine card's hello, as anyone who saw one sends it
        try:
            payee.admit(terms.payment_id, hello)
            challenge = flow.step(hello).message
        except PaymentError as e:
            refused.append(str(e))
            continue
        opened.append((payer, flow, hello, challenge, terms))
    assert len(opened) == psam_desk.CARD_OPEN_CAP and len(refused) == PSAM_PENDING + 4 - psam_desk.CARD_OPEN_CAP
    assert all("already has a payment open" in why for why in refused), refused
    assert payee.desk().held() == psam_desk.CARD_OPEN_CAP
    psam = payee.ctx.psam
    psam.ensure_selected()
    assert psam.info().pending == psam_desk.CARD_OPEN_CAP              # the refused hellos asked the PSAM nothing
    # the same payment's hello again (sent again, or its payee restarted before it kept its answer): the same
    # challenge, not a third request of the card's
    _, _, hello, challenge, terms = opened[0]
    payee.admit(terms.payment_id, hello)
    assert payee.payee_flow(terms).step(hello).message == challenge
    assert payee.desk().held() == psam_desk.CARD_OPEN_CAP
    # another genuine card still pays
    terms = _terms(1)
    payer, flow = PayerFlow(payers[1], terms), payee.payee_flow(terms)
    hello = payer.step(None).message
    payee.admit(terms.payment_id, hello)
    assert flow.step(payer.step(flow.step(hello).message).message).done
    # the card at its cap pays one of its open payments: its proof is taken (it has paid)
    payer, flow, _, challenge, _ = opened[1]
    receipt = flow.step(payer.step(challenge).message)
    assert receipt.done and receipt.message["kind"] == "receipt"
    assert payee.desk().held() == psam_desk.CARD_OPEN_CAP - 1
    # and with one of its payments finished, the card may open one again
    terms = _terms(400)
    payer, flow = PayerFlow(victim, terms), payee.payee_flow(terms)
    hello = payer.step(None).message
    payee.admit(terms.payment_id, hello)
    assert flow.step(payer.step(flow.step(hello).message).message).done


def test_a_payments_second_request_counts_against_its_card(images: tuple[Scheme, Path, list[Path]],
                                                            tmp_path: Path) -> None:
    """A payment that begins its debit again with other terms (a new hello for the same payment id, e.g. two
    workers racing on one order) leaves its first request open on the PSAM: that request still counts for
    its card, so such hellos cannot open more than CARD_OPEN_CAP debits for one card either."""
    import shutil
    _, psam_image, _ = images
    with open_card(Path(shutil.copy(psam_image, tmp_path / "psam.card")), sync=False) as conn:
        desk = psam_desk.PsamDesk(PsamSession(conn))
        card, other = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718")
        first = desk.begin_debit("p1", card, 5, 5, EUR)
        assert desk.begin_debit("p1", card, 5, 5, EUR) == first          # the same request again: not counted again
        assert desk.held() == 1
        desk.begin_debit("p1", card, 6, 5, EUR)                            # other terms: the first stays open
        assert desk.held() == 2
        with pytest.raises(psam_desk.CardBusy, match="already has a payment open"):
            desk.begin_debit("p2", card, 7, 5, EUR)
        assert desk.held() == 2                                            # refused: its room given back
        with pytest.raises(psam_desk.CardBusy):                            # p1 again with other terms: its second
            desk.begin_debit("p1", card, 8, 5, EUR)                        # request counts, and stays counted
        assert desk.held() == 2 and desk.open_for(card) == 2
        desk.begin_debit("p3", other, 1, 5, EUR)                           # another card has room
        assert desk.held() == 3
        PsamSession(conn).ensure_selected()
        assert PsamSession(conn).info().pending == 3


def test_the_card_cap_holds_through_the_psam_device(images: tuple[Scheme, Path, list[Path]], tmp_path: Path) -> None:
    """With ``semper serve shop --workers N`` the desk lives in the PSAM's device process and the workers ask
    it over a socket: the card number reaches the desk there too, and its refusal comes back as CardBusy."""
    import shutil
    import threading

    from semper.client.servers.psam_device import PsamDeviceClient, serve
    _, psam_image, _ = images
    sock = tmp_path / "psam.sock"
    stop = threading.Event()
    ready = threading.Event()
    with open_card(Path(shutil.copy(psam_image, tmp_path / "psam.card")), sync=False) as conn:
        server = threading.Thread(target=serve, args=(psam_desk.PsamDesk(PsamSession(conn)), sock, ready.set, stop),
                                  daemon=True)
        server.start()
        try:
            assert ready.wait(10)
            workers = [PsamDeviceClient(sock, connect_wait=5), PsamDeviceClient(sock, connect_wait=5)]
            card = bytes.fromhex("0102030405060708")
            for i in range(psam_desk.CARD_OPEN_CAP):
                workers[i % 2].begin_debit(f"p{i}", card, 1 + i, 5, EUR)
            with pytest.raises(psam_desk.CardBusy, match="already has a payment open"):
                workers[1].begin_debit("late", card, 9, 5, EUR)
            assert workers[0].held() == psam_desk.CARD_OPEN_CAP             # the late one kept no room
            workers[0].begin_debit("other", bytes.fromhex("1112131415161718"), 1, 5, EUR)
            assert workers[1].held() == psam_desk.CARD_OPEN_CAP + 1
        finally:
            stop.set()
            server.join(10)


def test_a_cards_open_debits_stop_counting_once_stale(images: tuple[Scheme, Path, list[Path]], tmp_path: Path
                                                       ) -> None:
    """The refusal says "try again in a minute": a card's open debits, its payments' and those no payment
    holds any more, stop counting against it after STALE_AFTER, as they stop holding the PSAM's room."""
    import shutil
    _, psam_image, _ = images
    now = [1000.0]
    with open_card(Path(shutil.copy(psam_image, tmp_path / "psam.card")), sync=False) as conn:
        desk = psam_desk.PsamDesk(PsamSession(conn), clock=lambda: now[0])
        card = bytes.fromhex("0102030405060708")
        desk.begin_debit("p1", card, 1, 5, EUR)
        desk.begin_debit("p1", card, 2, 5, EUR)                            # p1's first request: no payment's now
        with pytest.raises(psam_desk.CardBusy):
            desk.begin_debit("p2", card, 3, 5, EUR)
        now[0] += psam_desk.STALE_AFTER / 2
        with pytest.raises(psam_desk.CardBusy):
            desk.begin_debit("p2", card, 3, 5, EUR)
        now[0] += psam_desk.STALE_AFTER / 2 + 1
        assert desk.open_for(card) == 0 and desk.held() == 0
        desk.begin_debit("p2", card, 3, 5, EUR)
        assert desk.open_for(card) == 1 and desk.held() == 1


def test_a_forged_proof_for_an_evicted_request_never_reaches_the_acquirer(
        market: tuple[PurseModule, list[PurseModule]]) -> None:
    """A proof for a request the PSAM no longer holds is cleared alone at the acquirer (a card slower than
    the room's 60 s has paid). Anyone can make one without the card: the challenge's request re-tagged as a
    proof, with any signature. The payee now checks the proof is signed by the hello's card before it reads
    the PSAM's batches or asks the acquirer (an HTTPS call of up to 15 s, three times, on the shop's event
    loop since its card steps run there): the forgery is refused and the acquirer is never called (it was
    before; found by the adversarial review of 2026-12-07)."""
    import base64 as b64m

    payee, payers = market
    asked: list[str] = []

    class Acquirer:
        def call(self, op: str, params: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
            asked.append(op)
            raise AssertionError("the acquirer was asked about a forged proof")
    payee.ctx.bank = Acquirer()
    terms = _terms(7)
    payer, flow = PayerFlow(payers[0], terms), payee.payee_flow(terms)
    hello = payer.step(None).message
    payee.admit(terms.payment_id, hello)
    challenge = flow.step(hello).message
    request = b64m.b64decode(challenge["request"])
    psam = payee.desk().session
    for _ in range(PSAM_PENDING):                       # the PSAM rolls over: other payments' debits
        psam.begin_debit(os.urandom(8), 1, 1, EUR)
    forged = {"kind": "proof", "proof": b64m.b64encode(b"DPF1" + request[4:]).decode(),
              "signature": b64m.b64encode(os.urandom(64)).decode()}
    with pytest.raises(PaymentError, match="did not accept the card's proof"):
        flow.step(forged)
    assert asked == []


def test_a_finished_payees_flow_keeps_no_copy_of_the_card_and_its_record_does(
        market: tuple[PurseModule, list[PurseModule]]) -> None:
    """The payee's session is written with each step; once the payment is done its flow is never resumed (the
    payment manager refuses its messages first), and the record keeps the card's certificate and proof. The
    session's copy of them (0.9 KB a purchase) is left out; before it the flow still carries them."""
    payee, payers = market
    terms = _terms(7)
    payer, flow = PayerFlow(payers[0], terms), payee.payee_flow(terms)
    hello = payer.step(None).message
    payee.admit(terms.payment_id, hello)
    challenge = flow.step(hello).message
    open_state = flow.snapshot()
    assert open_state["state"] == "challenge" and open_state["card_certificate"] and open_state["request"]
    resumed = payee.resume_payee_flow(terms, open_state)        # another process takes the proof
    receipt = resumed.step(payer.step(challenge).message)
    assert receipt.done and receipt.evidence["card_certificate"] == open_state["card_certificate"]
    assert resumed.snapshot() == {"state": "done", "psam": open_state["psam"]}
    with pytest.raises(ProtocolError, match="finished"):
        payee.resume_payee_flow(terms, resumed.snapshot()).step({"kind": "proof"})
