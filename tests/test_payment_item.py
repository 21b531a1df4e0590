"""Payment items through the payment manager: the transfer layer's interface on every module.

Each module pays through the same steps the exchange layer takes (payer's hint, payee's request
in the description, the payer's check of that request, the proof, the payee's check and deposit,
and a third party's external check from public data alone), with the bank over HTTPS and the
cards in process. Money is counted at the bank and on the cards.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_payment_support import EUR, PARTY_PIN, World, card_pin, world

from semper.client.payment.item import ItemPayee, ItemPayer, item_verifiers
from semper.client.payment.manager import PaymentManager
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.ecash import EcashModule
from semper.client.payment.modules.purse import PurseModule
from semper.client.payment.wallet import TokenWalletKey, Wallet
from semper.client.servers.bank_audit import audit
from semper.client.transfer.errors import ItemMismatch, TransferError
from semper.client.transfer.items import Description, Item
from semper.client.transfer.payment import PaymentManager as ItemManager
from semper.client.transfer.payment import PaymentOffer
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card
from semper.hsm.rsa import RsaTokenKeys


def _ctx(w: World, who: str, **kw: Any) -> PartyContext:
    signer, account = w.party(who)
    return PartyContext(bank=w.client(signer), signer=signer, account=account, currency=EUR, **kw)


def _pins(purpose: str, session: Any) -> None:
    """The test's PINs straight to the device: the card's to the purse, the token's to the token."""
    (card_pin(purpose, session) if isinstance(session, PurseSession) else session.verify_pin(PARTY_PIN))


def _verifiers(w: World) -> dict[str, Any]:
    mint = EcashModule(PartyContext(bank=w.client())).mint_keys()
    return item_verifiers(purse_root=w.scheme.root_cert, roots=[w.scheme.root_cert], mint_keys=mint)


def _transfer(offer: PaymentOffer, payee_side: ItemManager, public: ItemManager, amount: int) -> Item:
    """What the exchange layer does with one payment item, in order; returns what the payee kept."""
    d = Description("payment", {"module": offer.payer.name, "amount": amount, "currency": EUR})
    payee_side.check_description(d)
    completed = payee_side.complete(d, offer.hint())              # the payee's request, into the description
    offer.accept_description(completed)                           # the payer checks it before paying
    item = offer.make(completed, None)
    assert offer.make(completed, None) == item                    # asked again: the same proof, paid once
    public.check(item, completed, None, None)                     # a third party checks from public data alone
    kept = payee_side.check(item, completed, None, None)          # the payee's check (online modules deposit here)
    payee_side.accept(kept, completed)
    payee_side.accept(kept, completed)                            # idempotent
    return kept


def test_every_module_pays_as_an_item(world: World, tmp_path: Path) -> None:
    buyer_img, psam_img = world.cards(tmp_path / "cards")
    _, buyer_acc = world.party("buyer")
    _, seller_acc = world.party("seller")
    world.bank.cash_in(buyer_acc, 20_000)
    verifiers = _verifiers(world)
    public = ItemManager(verifiers)
    keys = RsaTokenKeys(world.signers["buyer"].module, "buyer", PARTY_PIN)
    wallet = Wallet(tmp_path / "wallet.json", TokenWalletKey(keys))
    with open_card(buyer_img, sync=False) as bc, open_card(psam_img, sync=False) as pc:
        purse, psam = PurseSession(bc), PsamSession(pc)
        payer = PaymentManager(_ctx(world, "buyer", purse=purse, wallet=wallet, enter_pin=_pins))
        payee = PaymentManager(_ctx(world, "seller", psam=psam, purse_root=world.scheme.root_cert))
        purse_module = payer.module("card-purse")
        assert isinstance(purse_module, PurseModule)
        purse_module.load(3_000)
        ecash = payer.module("ecash")
        assert isinstance(ecash, EcashModule)
        ecash.withdraw(700)
        bank_before = world.bank.balance(seller_acc)
        for module, amount in (("card-purse", 250), ("cheque", 300), ("setpay", 450), ("ecash", 700)):
            payee_item = ItemPayee(payee, module, verifiers[module], account=seller_acc, payee_name="seller")
            payee_side = ItemManager(verifiers, {module: payee_item})
            offer = PaymentOffer(ItemPayer(payer, module, verifiers[module], expect_payee=seller_acc), amount, EUR)
            kept = _transfer(offer, payee_side, public, amount)
            assert kept.data["module"] == module
        assert purse.info().balance == 3_000 - 250
        assert wallet.balance(EUR) == 0
        seller_purse = payee.module("card-purse")
        assert isinstance(seller_purse, PurseModule)
        assert seller_purse.clear()["total"] == 250
    assert world.bank.balance(seller_acc) == bank_before + 250 + 300 + 450 + 700
    assert audit(world.bank.db, world.bank.scheme_root).violations == []


def test_wrong_requests_and_proofs_are_refused(world: World, tmp_path: Path) -> None:
    buyer_img, psam_img = world.cards(tmp_path / "cards")
    _, seller_acc = world.party("seller")
    _, other_acc = world.party("seller2")
    verifiers = _verifiers(world)
    public = ItemManager(verifiers)
    with open_card(buyer_img, sync=False) as bc, open_card(psam_img, sync=False) as pc:
        purse, psam = PurseSession(bc), PsamSession(pc)
        world.bank.cash_in(world.party("buyer")[1], 2_000)
        payer = PaymentManager(_ctx(world, "buyer", purse=purse, enter_pin=_pins))
        payee = PaymentManager(_ctx(world, "seller", psam=psam, purse_root=world.scheme.root_cert))
        module = payer.module("card-purse")
        assert isinstance(module, PurseModule)
        module.load(1_000)
        payee_item = ItemPayee(payee, "card-purse", verifiers["card-purse"], account=seller_acc)
        payee_side = ItemManager(verifiers, {"card-purse": payee_item})
        # a payer that agreed to pay another payee refuses the request before anything is paid
        offer = PaymentOffer(ItemPayer(payer, "card-purse", verifiers["card-purse"], expect_payee=other_acc), 100, EUR)
        d = Description("payment", {"module": "card-purse", "amount": 100, "currency": EUR})
        completed = payee_side.complete(d, offer.hint())
        with pytest.raises(ItemMismatch, match="payee"):
            offer.accept_description(completed)
        # the PSAM's request for more than agreed is refused by the payer, and the card pays nothing
        honest = PaymentOffer(ItemPayer(payer, "card-purse", verifiers["card-purse"]), 100, EUR)
        greedy = payee_side.complete(Description("payment", {"module": "card-purse", "amount": 900, "currency": EUR}),
                                     honest.hint())
        lying = completed.with_terms(request=greedy.terms["request"])
        with pytest.raises(TransferError):
            honest.accept_description(lying)
        assert purse.info().balance == 1_000
        # a genuine proof does not pass for another payment request
        item = honest.make(completed, None)
        # (asked of a payee of its own, as after a restart: at this payee's PSAM desk the card holds its
        # CARD_OPEN_CAP debits open already, the one it paid, whose proof was not sent, and the greedy one)
        fresh = PaymentManager(_ctx(world, "seller", psam=psam, purse_root=world.scheme.root_cert))
        other = ItemManager(verifiers, {"card-purse": ItemPayee(fresh, "card-purse", verifiers["card-purse"],
                                                                 account=seller_acc)}).complete(d, honest.hint())
        with pytest.raises(ItemMismatch):
            public.check(item, other, None, None)
        # a cheque for another amount does not verify at the third party
        cheque_payer = ItemPayer(payer, "cheque", verifiers["cheque"])
        cheque_payee = ItemPayee(payee, "cheque", verifiers["cheque"], account=seller_acc)
        cd = ItemManager(verifiers, {"cheque": cheque_payee}).complete(
            Description("payment", {"module": "cheque", "amount": 40, "currency": EUR}), {})
        proof = PaymentOffer(cheque_payer, 40, EUR).make(cd, None)
        bigger = ItemManager(verifiers, {"cheque": cheque_payee}).complete(
            Description("payment", {"module": "cheque", "amount": 41, "currency": EUR}), {})
        with pytest.raises(ItemMismatch):
            public.check(proof, bigger, None, None)


def test_a_module_is_handled_by_its_properties_not_by_its_name(world: World, tmp_path: Path) -> None:
    """The item adapter asks a module's declared properties (a PSAM handshake, revocable, generatable), not
    its name: a card purse installed under another name pays as an item like the built-in one. (The adapter
    compared names before: this module's payee request came without the PSAM's debit request and the
    payment failed.)"""

    class AcmePurse(PurseModule):
        name = "acme-purse"

    buyer_img, psam_img = world.cards(tmp_path / "cards")
    verifiers = _verifiers(world)
    verifier = verifiers["card-purse"]
    public = ItemManager({**verifiers, "acme-purse": verifier})
    _, seller_acc = world.party("seller")
    with open_card(buyer_img, sync=False) as bc, open_card(psam_img, sync=False) as pc:
        purse, psam = PurseSession(bc), PsamSession(pc)
        payer = PaymentManager(_ctx(world, "buyer", purse=purse, enter_pin=_pins), modules={"acme-purse": AcmePurse})
        payee = PaymentManager(_ctx(world, "seller", psam=psam, purse_root=world.scheme.root_cert),
                               modules={"acme-purse": AcmePurse})
        module = payer.module("acme-purse")
        assert isinstance(module, AcmePurse)
        world.bank.cash_in(world.party("buyer")[1], 1_000)
        module.load(500)
        payee_item = ItemPayee(payee, "acme-purse", verifier, account=seller_acc, payee_name="seller")
        payee_side = ItemManager({**verifiers, "acme-purse": verifier}, {"acme-purse": payee_item})
        offer = PaymentOffer(ItemPayer(payer, "acme-purse", verifier, expect_payee=seller_acc), 120, EUR)
        kept = _transfer(offer, payee_side, public, 120)
        assert kept.data["module"] == "acme-purse"
        assert purse.info().balance == 500 - 120
        assert psam.info().batch_total == 120
