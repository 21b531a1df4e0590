"""Issue 12, purse value holes (items 1, 2, 3 and 10): each attack through the public interfaces, money counted.

Every test talks to the simulated cards with APDUs (``PurseSession``, ``PsamSession``), to the bank over
HTTPS with signed requests (``BankClient``, the payment modules), and in item 10 to the third party over
HTTPS (the exchange parties). Each makes its own cards and PSAMs (fresh card numbers and PSAM ids) in one
bank for the module, so the figures compared are deltas, and ``semper audit``'s checks run after each.

* item 1: a load request the card replaced must not reverse a load the card applied, and one proof of
  value that was never loaded must not cost the seller the good proofs in its batch;
* item 2: a batch the acquirer refused must not stop the seller's clearing for good;
* item 3: a key certified under another card's number is not that card: its proofs and loads are refused;
* item 10: a card-signed proof the third party kept for the seller stays clearable after the PSAM
  evicted the request it answers.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_exchange_support import LABELS as XLABELS
from test_exchange_support import PIN as XPIN
from test_exchange_support import PRICE, REPORT, SO_PIN, _escrows, make_party, run, start_ttp
from test_exchange_support import World as XWorld
from test_exchange_support import make_world as make_xworld
from test_payment_support import CARD_PIN, EUR, World, card_pin, make_world

from semper.chaos.party_faults import Faults
from semper.client.exchange.party import ResponsePlan
from semper.client.payment import card_purse
from semper.client.payment.errors import PaymentRefused
from semper.client.payment.item import ItemPayee, ItemPayer, ItemPayments, item_verifiers
from semper.client.payment.manager import PaymentManager
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.purse import PurseModule
from semper.client.payment.wire import b64, unb64
from semper.client.servers.bank_audit import audit
from semper.client.support.personalisation import CardProfile, personalise_psam, personalise_purse_card
from semper.client.transfer.information import InformationManager, InformationOffer, describe
from semper.client.transfer.items import Description, PackageDescription
from semper.client.transfer.managers import Managers, PackageOffer
from semper.client.transfer.statements import CredentialManager, StatementManager, StatementOffer
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.purse_records import Signed
from semper.hardware.simulator import open_card


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory, scheme: Any) -> Iterator[tuple[World, XWorld]]:
    """The bank's world and the exchange world (CA, identities, third party) with their tokens in one
    SoftHSM2 folder: the PKCS#11 module serves one token folder at a time."""
    from semper.hsm.softhsm import SoftHsmStore, provision
    store = SoftHsmStore.in_folder(tmp_path_factory.mktemp("holes-tokens"))
    for label in XLABELS:
        provision(store, label, XPIN, SO_PIN)
    w = make_world(tmp_path_factory.mktemp("holes-bank"), scheme, hsm=store)
    x = make_xworld(tmp_path_factory.mktemp("holes-exchange"), scheme, store=store)
    for who in ("buyer", "buyer2"):
        w.bank.cash_in(w.accounts[who], 1_000_000)
    yield w, x
    x.opened.close()
    w.runner.stop()


@pytest.fixture
def bank(worlds: tuple[World, XWorld]) -> World:
    return worlds[0]


@pytest.fixture
def xworld(worlds: tuple[World, XWorld]) -> XWorld:
    return worlds[1]


# ---- helpers ------------------------------------------------------------------------------------------
def new_card(b: World, folder: Path, *, account: str | None, number: bytes | None = None,
             bank_issuer: bool = True) -> tuple[Path, str]:
    """A purse card personalised now; linked to ``account`` at the bank unless None. ``bank_issuer=False``:
    the card takes load commands of the scheme's own issuer key (value the bank never sees)."""
    image = folder / f"card-{secrets.token_hex(4)}.card"
    issued = personalise_purse_card(image, b.scheme, CardProfile(CARD_PIN, b"12345678", card_number=number,
                                                                  max_balance=200_000), sync=False,
                                    issuer_point=b.bank.keys.signer.public_point() if bank_issuer else None)
    if account is not None:
        with open_card(image, sync=False) as c:
            b.bank.link_card(PurseSession(c).certificate(), account)
    return image, issued.card_id


def new_psam(b: World, folder: Path, account: str) -> Path:
    image = folder / f"psam-{secrets.token_hex(4)}.card"
    personalise_psam(image, b.scheme, sync=False)
    with open_card(image, sync=False) as c:
        b.bank.link_psam(PsamSession(c).certificate(), account)
    return image


def purse_module(b: World, who: str, **kw: Any) -> PurseModule:
    signer, account = b.party(who)
    return PurseModule(PartyContext(bank=b.client(signer), signer=signer, account=account, currency=EUR,
                                    enter_pin=card_pin, purse_root=b.scheme.root_cert, **kw))


def load_params(account: str, signed: Signed, cert: bytes) -> dict[str, Any]:
    return {"account": account, "request": b64(signed.record), "signature": b64(signed.signature),
            "card_certificate": b64(cert)}


def clean(b: World) -> None:
    assert audit(b.bank.db, b.bank.scheme_root).violations == []


# ---- item 1 -----------------------------------------------------------------------------------------
def test_item1_a_stale_load_request_cannot_reverse_a_load_the_card_applied(bank: World, tmp_path: Path) -> None:
    """The holder keeps a small load request back, has a large one for the same load counter applied,
    withholds the card's confirmation and presents the small one: the issuer must not give the large
    amount back to the account while the card keeps it."""
    b = bank
    signer, account = b.party("buyer")
    image, card = new_card(b, tmp_path, account=account)
    client = b.client(signer)
    before = b.bank.balance(account)
    with open_card(image, sync=False) as c:
        purse = PurseSession(c)
        purse.verify_pin(CARD_PIN)
        cert = purse.certificate()
        _small, small = purse.initialize_load(100, EUR)                # kept back
        _big, big = purse.initialize_load(6_000, EUR)                   # replaces it on the card
        answer = client.call("issuer/load", load_params(account, big, cert))["result"]
        purse.load(Signed(unb64(answer["command"], "command", 256), unb64(answer["signature"], "signature", 80)))
        refusal = None                                                  # the confirmation is withheld
        try:
            client.call("issuer/load", load_params(account, small, cert))
        except PaymentRefused as e:
            refusal = e.code
        on_card = purse.info().balance
    paid = before - b.bank.balance(account)
    assert paid == on_card == 6_000, f"the account paid {paid} for a card that holds {on_card}"
    assert refusal == "stale_request"
    assert b.bank.shadow(card) == 6_000
    # the card's honest payments then clear in full
    seller_signer, seller_acc = b.party("seller")
    psam_image = new_psam(b, tmp_path, seller_acc)
    seller_before = b.bank.balance(seller_acc)
    with open_card(image, sync=False) as c, open_card(psam_image, sync=False) as p:
        purse, psam = PurseSession(c), PsamSession(p)
        card_purse.purchase(purse, psam, 2_500, b.scheme.root_cert)
        card_purse.purchase(purse, psam, 1_500, b.scheme.root_cert)
        cleared = purse_module(b, "seller", psam=psam).clear()
    assert cleared is not None and cleared["total"] == 4_000
    assert b.bank.balance(seller_acc) - seller_before == 4_000
    assert b.bank.shadow(card) == 2_000
    clean(b)


def _good_and_rogue(b: World, folder: Path) -> tuple[Path, str, Path, str, Path]:
    """A card loaded through the bank (3000), a card linked at the bank but loaded with value the bank
    never issued (2000; a cloned or foreign-issuer card), and the seller's PSAM."""
    _, buyer_acc = b.party("buyer")
    _, buyer2_acc = b.party("buyer2")
    _, seller_acc = b.party("seller")
    good, good_id = new_card(b, folder, account=buyer_acc)
    rogue, rogue_id = new_card(b, folder, account=buyer2_acc, bank_issuer=False)
    with open_card(good, sync=False) as c:
        purse_module(b, "buyer", purse=PurseSession(c)).load(3_000)
    with open_card(rogue, sync=False) as c:
        card_purse.load(PurseSession(c), b.scheme, 2_000, CARD_PIN)
    return good, good_id, rogue, rogue_id, new_psam(b, folder, seller_acc)


def test_item1_one_bad_proof_does_not_block_the_good_ones_in_its_batch(bank: World, tmp_path: Path) -> None:
    b = bank
    _, seller_acc = b.party("seller")
    good, good_id, rogue, rogue_id, psam_image = _good_and_rogue(b, tmp_path)
    seller_before = b.bank.balance(seller_acc)
    with open_card(good, sync=False) as g, open_card(rogue, sync=False) as r, open_card(psam_image, sync=False) as p:
        gp, rp, psam = PurseSession(g), PurseSession(r), PsamSession(p)
        card_purse.purchase(gp, psam, 1_000, b.scheme.root_cert)
        info = rp.info()                                                # value the bank never loaded
        _drq, rogue_request = psam.begin_debit(info.card_number, info.debit_counter + 1, 700, EUR)
        _dpf, rogue_proof = rp.debit(psam.certificate(), rogue_request)
        psam.complete_debit(rp.certificate(), rogue_proof)
        card_purse.purchase(gp, psam, 500, b.scheme.root_cert)
        seller = purse_module(b, "seller", psam=psam)
        cleared = seller.clear()
        good_left = gp.info().balance
        with pytest.raises(PaymentRefused) as held:                     # a held proof is not payable later, alone
            seller.clear_proof(psam.certificate(), rogue_request, rp.certificate(), rogue_proof)
    assert held.value.code == "proof_held"
    assert cleared is not None
    assert cleared["total"] == 1_500, cleared
    assert [(h["card"], h["amount"], h["code"]) for h in cleared["held"]] == [(rogue_id, 700, "exceeds_shadow")]
    assert b.bank.balance(seller_acc) - seller_before == 1_500
    assert b.bank.shadow(good_id) == good_left == 1_500
    assert b.bank.shadow(rogue_id) == 0
    clean(b)


# ---- item 2 -----------------------------------------------------------------------------------------
def test_item2_a_refused_batch_does_not_stop_clearing(bank: World, tmp_path: Path) -> None:
    b = bank
    _, seller_acc = b.party("seller")
    good, good_id, rogue, _rogue_id, psam_image = _good_and_rogue(b, tmp_path)
    seller_before = b.bank.balance(seller_acc)
    with open_card(good, sync=False) as g, open_card(rogue, sync=False) as r, open_card(psam_image, sync=False) as p:
        gp, rp, psam = PurseSession(g), PurseSession(r), PsamSession(p)
        seller = purse_module(b, "seller", psam=psam)
        card_purse.purchase(gp, psam, 1_000, b.scheme.root_cert)
        card_purse.purchase(rp, psam, 700, b.scheme.root_cert)
        try:
            seller.clear()                         # settled (the good proof paid) or refused: either way ...
        except PaymentRefused:
            pass
        # ... the next day's honest payment must reach the seller
        card_purse.purchase(gp, psam, 400, b.scheme.root_cert)
        second = seller.clear()
        info = psam.info()
    assert second is not None and second["batch"] == 2 and second["total"] == 400, second
    assert info.batch_number == 3 and info.batch_count == 0
    assert b.bank.balance(seller_acc) - seller_before == 1_400
    assert b.bank.shadow(good_id) == 3_000 - 1_400
    clean(b)


# ---- item 3 -----------------------------------------------------------------------------------------
def test_item3_a_key_certified_under_a_linked_card_number_is_not_that_card(bank: World, tmp_path: Path) -> None:
    """Whoever can have a key certified under another card's number makes an impostor card with it, pays
    an accomplice's PSAM and has the proofs cleared out of the real card's shadow balance."""
    b = bank
    buyer_signer, buyer_acc = b.party("buyer")
    _, seller_acc = b.party("seller")
    _, accomplice_acc = b.party("seller2")
    victim, victim_id = new_card(b, tmp_path, account=buyer_acc)
    with open_card(victim, sync=False) as c:
        purse_module(b, "buyer", purse=PurseSession(c)).load(4_000)
    impostor, impostor_id = new_card(b, tmp_path, account=None, number=bytes.fromhex(victim_id), bank_issuer=False)
    assert impostor_id == victim_id
    accomplice_psam = new_psam(b, tmp_path, accomplice_acc)
    honest_psam = new_psam(b, tmp_path, seller_acc)
    accomplice_before, seller_before = b.bank.balance(accomplice_acc), b.bank.balance(seller_acc)
    with open_card(impostor, sync=False) as i, open_card(accomplice_psam, sync=False) as p:
        ip, psam = PurseSession(i), PsamSession(p)
        card_purse.load(ip, b.scheme, 3_000, CARD_PIN)                  # value of its own making
        card_purse.purchase(ip, psam, 3_000, b.scheme.root_cert)
        cleared = purse_module(b, "seller2", psam=psam).clear()
        ip.verify_pin(CARD_PIN)                                         # and a load paid from the victim's account
        _req, signed = ip.initialize_load(500, EUR)
        load_refusal = None
        try:
            b.client(buyer_signer).call("issuer/load", load_params(buyer_acc, signed, ip.certificate()))
        except PaymentRefused as e:
            load_refusal = e.code
    stolen = b.bank.balance(accomplice_acc) - accomplice_before
    assert stolen == 0, f"the impostor's proofs took {stolen} out of card {victim_id}'s shadow balance"
    assert cleared is not None and [h["code"] for h in cleared["held"]] == ["certificate_not_linked"]
    assert load_refusal == "certificate_not_linked"
    assert b.bank.shadow(victim_id) == 4_000
    # the real card still spends all it holds
    with open_card(victim, sync=False) as c, open_card(honest_psam, sync=False) as p:
        card_purse.purchase(PurseSession(c), PsamSession(p), 4_000, b.scheme.root_cert)
        cleared = purse_module(b, "seller", psam=PsamSession(p)).clear()
    assert cleared is not None and cleared["total"] == 4_000 and not cleared["held"]
    assert b.bank.balance(seller_acc) - seller_before == 4_000
    assert b.bank.shadow(victim_id) == 0
    clean(b)


# ---- item 10 ----------------------------------------------------------------------------------------
def test_item10_the_third_partys_proof_stays_clearable_after_the_psam_evicted_its_request(
        xworld: XWorld, bank: World, tmp_path: Path) -> None:
    """gen-ver purchase of information for a card payment: the buyer's card pays, the buyer sends nothing,
    waits until sixteen newer debits at the seller's PSAM have evicted the request its card answered, and
    then resolves with the third party. The seller gets the card-signed proof from the third party; it
    must still be paid for it."""
    b, world = bank, xworld
    _, buyer_acc = b.party("buyer")
    _, seller_acc = b.party("seller")
    card, card_id = new_card(b, tmp_path, account=buyer_acc)
    psam_image = new_psam(b, tmp_path, seller_acc)
    t = start_ttp(world, tmp_path / "ttp.db")
    verifiers = item_verifiers(purse_root=b.scheme.root_cert)
    seller_before = b.bank.balance(seller_acc)
    with open_card(card, sync=False) as c, open_card(psam_image, sync=False) as p:
        purse, psam = PurseSession(c), PsamSession(p)
        buyer_pm = PaymentManager(PartyContext(bank=b.client(b.signers["buyer"]), account=buyer_acc, currency=EUR,
                                               purse=purse, enter_pin=card_pin), only=["card-purse"])
        seller_pm = PaymentManager(PartyContext(bank=b.client(b.signers["seller"]), account=seller_acc,
                                                currency=EUR, psam=psam, purse_root=b.scheme.root_cert),
                                   only=["card-purse"])
        buyer_module = buyer_pm.module("card-purse")
        assert isinstance(buyer_module, PurseModule)
        buyer_module.load(2_000)
        payee = ItemPayee(seller_pm, "card-purse", verifiers["card-purse"], account=seller_acc, payee_name="seller")

        def managers(payees: dict[str, Any]) -> Managers:
            return Managers(StatementManager(world.trust), CredentialManager(world.trust),
                            InformationManager(_escrows(world)), ItemPayments(verifiers, payees))
        seller_id = world.identities["seller"]
        receipt = {"type": "receipt", "goods": "consultancy report", "amount": PRICE, "currency": EUR}
        offer = PackageOffer((InformationOffer(REPORT, "report.bin"), StatementOffer(seller_id.sign, receipt)),
                             "report with receipt")
        want = Description("payment", {"module": "card-purse", "amount": PRICE, "currency": EUR})
        expect = PackageDescription((describe(REPORT, "report.bin"), Description(
            "statement", {"statement_type": "receipt", "fields": {"amount": PRICE, "currency": EUR}})))
        plan = ResponsePlan(expect, _payment_offer(ItemPayer(buyer_pm, "card-purse", verifiers["card-purse"])))
        outcomes: dict[str, Any] = {}

        async def go() -> None:
            seller = make_party(world, "seller", tmp_path, managers({"card-purse": payee}), t.url, step_timeout=0.4)
            buyer = make_party(world, "buyer", tmp_path, managers({}), t.url, step_timeout=0.4)
            await seller.start()
            await buyer.start()
            try:
                buyer.plans.append(plan)
                buyer.outbox.stop_before = "accept"            # the card pays; the buyer sends nothing (yet)
                o = await seller.originate(buyer.url, offer, want, fair=True)
                outcomes["seller"] = o
                outcomes["buyer"] = await buyer.wait_outcome(o.session, 10)
                for _ in range(16):                            # sixteen newer debits open at the PSAM
                    psam.begin_debit(os.urandom(8), 1, 100, EUR)
                buyer.outbox = Faults()
                outcomes["buyer_later"] = await buyer.recover()
                outcomes["seller_later"] = await seller.recover()
            finally:
                await seller.stop()
                await buyer.stop()
                seller.close()
                buyer.close()
        try:
            run(go())
        finally:
            t.stop()
        assert outcomes["seller"].status == "pending", outcomes["seller"].as_dict()
        assert [o.status for o in outcomes["buyer_later"]] == ["resolved"]
        later = outcomes["seller_later"]
        assert [o.status for o in later] == ["resolved"], [o.as_dict() for o in later]
        seller_module = seller_pm.module("card-purse")
        assert isinstance(seller_module, PurseModule)
        seller_module.clear()
        card_left = purse.info().balance
    gained = b.bank.balance(seller_acc) - seller_before
    assert card_left == 2_000 - PRICE
    assert gained == PRICE, f"the buyer's card paid {PRICE}; the seller was paid {gained}"
    assert b.bank.shadow(card_id) == card_left
    clean(b)


def _payment_offer(payer: ItemPayer) -> Any:
    from semper.client.transfer.payment import PaymentOffer
    return PaymentOffer(payer, PRICE, EUR)


# ---- the same rules, the honest paths ----------------------------------------------------------------
def test_a_replaced_load_request_is_reversed_on_the_cards_word_only(bank: World, tmp_path: Path) -> None:
    """A load whose answer never reached the card: the card's next request for the same counter (a higher
    sequence number) proves it never applied, so it is reversed and the account paid only what the card
    holds. The audit checks that every reversal names such a request."""
    b = bank
    signer, account = b.party("buyer")
    image, card = new_card(b, tmp_path, account=account)
    client = b.client(signer)
    before = b.bank.balance(account)
    with open_card(image, sync=False) as c:
        purse = PurseSession(c)
        purse.verify_pin(CARD_PIN)
        cert = purse.certificate()
        _lost, lost = purse.initialize_load(700, EUR)
        client.call("issuer/load", load_params(account, lost, cert))     # approved; the answer is lost
        assert b.bank.balance(account) == before - 700
        purse_module(b, "buyer", purse=purse).load(300)                  # a new request for the same counter
        info = purse.info()
    assert (info.balance, info.load_counter, info.load_sequence) == (300, 1, 2)
    assert before - b.bank.balance(account) == 300 and b.bank.shadow(card) == 300
    clean(b)
    with b.bank.db.transaction() as tx:                                  # a reversal whose proof is gone
        tx.execute("UPDATE load_requests SET replaced_by = NULL WHERE card = ?", (card,))
    causes = [v.cause for v in audit(b.bank.db, b.bank.scheme_root).violations]
    with b.bank.db.transaction() as tx:
        tx.execute("UPDATE load_requests SET replaced_by = (SELECT nonce FROM load_requests WHERE card = ? AND "
                   "sequence = 2) WHERE card = ? AND sequence = 1", (card, card))
    assert causes == ["reversal_unproven"]
    clean(b)


def test_a_debit_is_paid_once_whether_cleared_alone_or_in_a_batch(bank: World, tmp_path: Path) -> None:
    b = bank
    _, buyer_acc = b.party("buyer")
    _, seller_acc = b.party("seller")
    card, card_id = new_card(b, tmp_path, account=buyer_acc)
    psam_image = new_psam(b, tmp_path, seller_acc)
    seller_before = b.bank.balance(seller_acc)
    with open_card(card, sync=False) as c, open_card(psam_image, sync=False) as p:
        purse, psam = PurseSession(c), PsamSession(p)
        purse_module(b, "buyer", purse=purse).load(1_000)
        seller = purse_module(b, "seller", psam=psam)
        info = purse.info()
        _drq, request = psam.begin_debit(info.card_number, info.debit_counter + 1, 300, EUR)
        _dpf, proof = purse.debit(psam.certificate(), request)
        alone = seller.clear_proof(psam.certificate(), request, purse.certificate(), proof)
        assert alone is not None and alone["total"] == 300
        again = {"psam_certificate": b64(psam.certificate()), "request": b64(request.record),
                 "request_signature": b64(request.signature), "card_certificate": b64(purse.certificate()),
                 "proof": b64(proof.record), "proof_signature": b64(proof.signature)}
        with pytest.raises(PaymentRefused) as seen:                 # presented again (a new request, not a retry)
            b.client(b.signers["seller"]).call("acquirer/clear_proof", again)
        assert seen.value.code == "proof_seen"
        psam.complete_debit(purse.certificate(), proof)             # the same debit reaches the batch too
        card_purse.purchase(purse, psam, 200, b.scheme.root_cert)
        cleared = seller.clear()
        left = purse.info().balance
    assert cleared is not None and cleared["total"] == 200
    assert [(h["counter"], h["code"]) for h in cleared["held"]] == [(1, "proof_seen")]
    assert b.bank.balance(seller_acc) - seller_before == 500
    assert b.bank.shadow(card_id) == left == 500
    clean(b)


def test_a_late_proof_for_an_evicted_request_is_cleared_alone(bank: World, tmp_path: Path) -> None:
    """A purchase outside an exchange: the buyer's proof arrives after sixteen newer debits evicted its
    request at the PSAM (a buyer slower than the payee's patience). The card has paid; the payee clears
    the proof alone instead of refusing it."""
    from semper.client.payment.model import Terms
    from semper.client.payment.modules.purse import PayerFlow
    b = bank
    _, buyer_acc = b.party("buyer")
    _, seller_acc = b.party("seller")
    card, card_id = new_card(b, tmp_path, account=buyer_acc)
    psam_image = new_psam(b, tmp_path, seller_acc)
    seller_before = b.bank.balance(seller_acc)
    with open_card(card, sync=False) as c, open_card(psam_image, sync=False) as p:
        purse, psam = PurseSession(c), PsamSession(p)
        buyer = purse_module(b, "buyer", purse=purse)
        buyer.load(1_000)
        seller = purse_module(b, "seller", psam=psam)
        terms = Terms.new(250, EUR, seller_acc, b"late order")
        payer, flow = PayerFlow(buyer, terms), seller.payee_flow(terms)
        challenge = flow.step(payer.step(None).message).message
        for _ in range(16):
            psam.begin_debit(os.urandom(8), 1, 100, EUR)
        receipt = flow.step(payer.step(challenge).message)
        left = purse.info().balance
    assert receipt.done and receipt.status is not None and receipt.status.value == "paid"
    assert receipt.message is not None and receipt.message["batch"] == 0
    assert left == 750 and b.bank.balance(seller_acc) - seller_before == 250
    assert b.bank.shadow(card_id) == 750
    clean(b)
