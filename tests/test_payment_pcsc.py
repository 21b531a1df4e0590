"""The purse, the cheque and the account payment with the card through pcscd (vpcd), the bank over HTTPS.

Kept to one card session: the buyer's card (purse + PIV) and the seller's PSAM behind pcscd; the
purse loads (PIN on the card, request signed by the card's PIV key 9C with the PIN right before),
pays offline through the PSAM, the seller clears; cheques and account payments are signed on the
same card with key 9C. The applets share one connection: each module selects its applet first.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from test_payment_support import CARD_PIN, EUR, World, card_pin, world

from semper.client.payment.manager import LocalPayee, PaymentManager, pay
from semper.client.payment.model import Status, Terms
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.purse import PurseModule
from semper.client.servers.bank_audit import audit
from semper.client.support.personalisation import CardProfile, personalise_purse_card
from semper.hardware.pcscd import VirtualCards
from semper.hardware.piv import PivSession, PivSigner
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card
from semper.hardware.transport import PcscConnection

pytestmark = pytest.mark.pcsc


def test_purse_cheque_and_account_payment_through_pcscd(world: World, tmp_path: Path) -> None:
    _, psam_img = world.cards(tmp_path / "cards")
    card_img = tmp_path / "cards" / "holder.card"
    personalise_purse_card(card_img, world.scheme, CardProfile(CARD_PIN, b"12345678", max_balance=100_000),
                           sync=False, issuer_point=world.bank.keys.signer.public_point())
    with open_card(card_img, sync=False) as c:
        from cryptography import x509
        sig_cert = x509.load_der_x509_certificate(PivSession(c).certificate(0x9C))
        purse_cert = PurseSession(c).certificate()
    account = world.bank.open_account("card holder", EUR, sig_cert)
    world.bank.link_card(purse_cert, account)
    world.bank.cash_in(account, 20_000)
    seller_signer, seller_acc = world.party("seller")
    with VirtualCards([card_img, psam_img], sync=False) as vc, \
            PcscConnection(vc.readers[0]) as card_conn, PcscConnection(vc.readers[1]) as psam_conn:
        purse, psam, piv = PurseSession(card_conn), PsamSession(psam_conn), PivSession(card_conn)
        signer = PivSigner(piv)
        bank = world.client(signer, enter_pin=card_pin, before_sign=piv.select)
        ctx = PartyContext(bank=bank, signer=signer, account=account, currency=EUR, purse=purse,
                           enter_pin=card_pin, select_signer=piv.select)
        payer = PaymentManager(ctx, only=["card-purse", "cheque", "setpay"], preferences=["card-purse"])
        shop = PaymentManager(PartyContext(bank=world.client(seller_signer), signer=seller_signer, account=seller_acc,
                                           currency=EUR, psam=psam, purse_root=world.scheme.root_cert),
                              only=["card-purse", "cheque", "setpay"])
        module = payer.module("card-purse")
        assert isinstance(module, PurseModule)
        assert module.load(5_000)["balance"] == 5_000
        before = world.bank.balance(seller_acc)
        for amount in (120, 80):
            terms = Terms.new(amount, EUR, seller_acc, b"pcsc order %d" % amount)
            shop.expect(terms)
            assert pay(payer, terms, shop.offer(), LocalPayee(shop)).module == "card-purse"
        seller_module = shop.module("card-purse")
        assert isinstance(seller_module, PurseModule)
        assert seller_module.clear()["total"] == 200
        assert world.bank.balance(seller_acc) == before + 200
        purse.select()
        assert world.bank.shadow(purse.info().card_id) == purse.info().balance == 4_800
        for module_name, amount in (("cheque", 300), ("setpay", 450)):
            terms = Terms.new(amount, EUR, seller_acc, f"pcsc {module_name}".encode())
            shop.expect(terms)
            rec = pay(payer, terms, [a for a in shop.offer() if a.module == module_name], LocalPayee(shop))
            assert rec.status in (Status.PAID, Status.CAPTURED), rec
        assert world.bank.balance(seller_acc) == before + 200 + 300 + 450
        assert world.bank.balance(account) == 20_000 - 5_000 - 300 - 450
    report = audit(world.bank.db, world.bank.scheme_root)
    assert report.violations == [], report.violations
