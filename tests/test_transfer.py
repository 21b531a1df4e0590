"""The transfer layer on its own: item and description forms, packages, properties, escrow binding,
and each manager's checks against real signatures, real card proofs and real escrow."""
from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from test_exchange_support import PRICE, REPORT, World, cards, purse_payee, purse_payer, world

from semper.client.payment.item import PurseItemVerifier, ecash_verifier, item_verifiers
from semper.client.transfer.binding import Binding
from semper.client.transfer.errors import (
    CommitmentFalse,
    ItemMismatch,
    MalformedItem,
    UnsupportedAttribute,
)
from semper.client.transfer.escrow import open_seal, seal
from semper.client.transfer.information import InformationManager, InformationOffer, describe
from semper.client.transfer.items import (
    Description,
    Item,
    Package,
    PackageDescription,
    content_from_json,
    expectation_from_json,
    pair_leaves,
)
from semper.client.transfer.managers import Managers, check_satisfies
from semper.client.transfer.payment import PaymentManager, PaymentOffer
from semper.client.transfer.properties import Properties
from semper.client.transfer.statements import StatementManager, StatementOffer


def binding(world: World, xid: str = "ab" * 32) -> Binding:
    return Binding(xid, "gen-ver", world.identities["seller"].certificate, world.identities["buyer"].certificate,
                   world.ttp_home.certificate())


def test_items_and_descriptions_round_trip_and_bad_forms_are_named() -> None:
    pkg = Package((Item("information", {"plaintext": "AA=="}), Package((Item("statement", {"der": "x"}),))), "p")
    assert content_from_json(pkg.to_json()) == pkg
    desc = PackageDescription((describe(b"a"), Description("payment", {"module": "m", "amount": 1, "currency": 978})))
    assert expectation_from_json(desc.to_json()) == desc
    with pytest.raises(MalformedItem, match="unknown item type"):
        content_from_json({"type": "voucher"})
    deep: dict[str, Any] = {"type": "information"}
    for _ in range(12):
        deep = {"type": "package", "members": [deep]}
    with pytest.raises(MalformedItem, match="nest deeper"):
        content_from_json(deep)
    with pytest.raises(MalformedItem, match="at most 64"):
        expectation_from_json({"type": "package", "members": [{"type": "information"}] * 65})
    with pytest.raises(ItemMismatch, match=r"item\[1\]: expected a payment item"):
        list(pair_leaves(Package((Item("information"), Item("information"))), desc))


def test_package_properties_are_the_weakest_members() -> None:
    gen = Properties(verifiable=True, generatable=True)
    ver = Properties(verifiable=True)
    assert Properties.weakest([gen, gen]) == gen
    assert Properties.weakest([gen, ver]) == ver
    assert Properties.weakest([]) == Properties(True, True, True, True)
    check_satisfies(Description("statement", {"statement_type": "r", "fields": {"a": 1, "b": 2}}),
                    Description("statement", {"statement_type": "r", "fields": {"a": 1}}))
    with pytest.raises(ItemMismatch):
        check_satisfies(Description("statement", {"statement_type": "r", "fields": {"a": True}}),
                        Description("statement", {"statement_type": "r", "fields": {"a": 1}}))


def test_an_escrow_opens_only_for_its_exchange_and_ciphertext(world: World) -> None:
    escrow = world.opened.ttp.escrow
    key = os.urandom(32)
    blob = seal(escrow.point, key, "x" * 64, "ct-digest")
    assert open_seal(blob, "x" * 64, "ct-digest", escrow.shared_secret) == key        # ECDH in T's token
    for xid, ctx in (("y" * 64, "ct-digest"), ("x" * 64, "other")):
        with pytest.raises(CommitmentFalse):
            open_seal(blob, xid, ctx, escrow.shared_secret)
    with pytest.raises(CommitmentFalse, match="malformed"):
        open_seal({"ephemeral": "!!", "sealed": ""}, "x" * 64, "ct-digest", escrow.shared_secret)


def test_information_commitment_release_and_generation(world: World) -> None:
    b = binding(world)
    offer = InformationOffer(REPORT)
    info = world.ttp_info("https://127.0.0.1:1")
    manager = InformationManager(world.escrow_ids())
    d = offer.description
    commitment, attachments = offer.commit(d, b, info.escrow)
    manager.check_commitment(commitment, attachments, d, b)
    kept = manager.check_release(offer.release(d, b), commitment, attachments, d, b)
    assert base64.b64decode(kept.data["plaintext"]) == REPORT
    # T generates the same key from the escrow, in its token
    assert manager.generate(commitment, attachments, d, b, world.opened.ttp) == offer.release(d, b).data
    # a ciphertext swapped, a key that does not decrypt, data of another digest
    with pytest.raises(ItemMismatch, match="not the one committed"):
        manager.check_commitment(commitment, {"ciphertext": base64.b64encode(b"x" * (len(REPORT) + 16)).decode()}, d, b)
    with pytest.raises(ItemMismatch, match="does not decrypt"):
        manager.check_release(Item("information", {"key": base64.b64encode(os.urandom(32)).decode()}), commitment,
                              attachments, d, b)
    with pytest.raises(ItemMismatch, match="promised"):
        manager.check(Item("information", {"plaintext": base64.b64encode(b"other").decode()}), d, b, None)
    # a commitment to another escrow key is refused by a receiver who knows T's key
    other = dict(commitment, escrow_key="0" * 64)
    with pytest.raises(ItemMismatch, match="another key"):
        manager.check_commitment(other, attachments, d, b)
    # the seal of one exchange is worthless in another: T finds the commitment false
    with pytest.raises(CommitmentFalse):
        manager.generate(commitment, attachments, d, binding(world, "cd" * 32), world.opened.ttp)


def test_statements_check_signer_body_exchange_and_replacement(world: World) -> None:
    b = binding(world)
    seller, buyer = world.identities["seller"], world.identities["buyer"]
    manager = StatementManager(world.trust)
    offer = StatementOffer(seller.sign, {"type": "receipt", "amount": PRICE})
    d = offer.description
    item = offer.make(d, b)
    manager.check(item, d, b, seller.certificate)
    with pytest.raises(ItemMismatch, match="not by the peer"):
        manager.check(item, d, b, buyer.certificate)
    with pytest.raises(ItemMismatch, match="not for this exchange"):
        manager.check(offer.make(d, binding(world, "cd" * 32)), d, b, seller.certificate)
    forged = bytearray(base64.b64decode(item.data["der"]))
    forged[-3] ^= 1
    with pytest.raises(ItemMismatch, match="not valid evidence"):
        manager.check(Item("statement", {"der": base64.b64encode(bytes(forged)).decode()}), d, b, seller.certificate)
    commitment, _ = offer.commit(d, b, None)
    replacement = manager.generate(commitment, {}, d, b, world.opened.ttp)
    kept = manager.check_replacement(replacement, commitment, {}, d, b)
    assert kept.data["replacement"] is True
    # a replacement signed by anyone else (here: the buyer) is not a replacement
    fake = {"der": base64.b64encode(buyer.sign({"type": "replacement", "xid": b.xid})).decode()}
    with pytest.raises(ItemMismatch, match="not by the exchange's third party"):
        manager.check_replacement(fake, commitment, {}, d, b)
    # a revocable statement must say so
    rd = StatementOffer(seller.sign, {"type": "receipt"}, revocable=True).description
    with pytest.raises(ItemMismatch, match="revocable"):
        manager.check(StatementOffer(seller.sign, {"type": "receipt"}).make(rd, b), rd, b, seller.certificate)


def test_card_purse_payments_verify_against_the_scheme_root(world: World, tmp_path: Path,
                                                             fresh_images: Any, other_scheme: Any) -> None:
    c = cards(world, tmp_path / "cards", fresh_images)
    payee = purse_payee(world, c)
    payer = purse_payer(world, c)
    manager = PaymentManager(payees={"card-purse": payee})
    offer = PaymentOffer(payer, PRICE, 978)
    d = manager.complete(offer.description, offer.hint())
    offer.accept_description(d)
    item = offer.make(d, binding(world))
    assert offer.make(d, binding(world)) == item                   # asked twice, paid once
    kept = manager.check(item, d, None, None)
    manager.accept(kept, d)
    manager.accept(kept, d)                                         # a second deposit changes nothing
    assert c.psam_total() == PRICE and c.balance() == 5000 - PRICE
    # another amount, another card's request, a forged proof, a proof for another request
    with pytest.raises(ItemMismatch, match="the exchange agreed 501"):
        PaymentOffer(payer, PRICE + 1, 978).accept_description(d.with_terms(amount=PRICE + 1))
    forged = dict(item.data["proof"])
    sig = bytearray(base64.b64decode(forged["signature"]))
    sig[8] ^= 1
    forged["signature"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(ItemMismatch, match="forged or altered"):
        PurseItemVerifier(world.purse_root).verify(forged, d.terms["request"], PRICE, 978)
    d2 = manager.complete(offer.description, offer.hint())
    with pytest.raises(ItemMismatch, match="another request"):
        manager.check(item, d2, None, None)
    # a verifier with another scheme root accepts nothing
    with pytest.raises(ItemMismatch, match="not issued by the purse scheme root"):
        PurseItemVerifier(other_scheme.root_cert).verify(item.data["proof"], d.terms["request"], PRICE, 978)
    for closer in c.closers:
        closer()


def _public_managers(world: World) -> Managers:
    """What a party knows of item types: statements, credentials, information, and the payment layer's verifiers."""
    from semper.client.payment.item import ItemPayments
    from semper.client.transfer.statements import CredentialManager
    verifiers = {**item_verifiers(purse_root=world.purse_root), "ecash": ecash_verifier({})}
    return Managers(StatementManager(world.trust), CredentialManager(world.trust), InformationManager(),
                    ItemPayments(verifiers))


def test_attribute_combinations_that_cannot_be_provided_are_refused(world: World) -> None:
    from semper.client.transfer.attributes import SecurityAttributes, check_attributes
    properties = _public_managers(world).properties
    check_attributes(SecurityAttributes(anonymity=True), describe(b"x"), properties)
    for attrs, expectation in ((SecurityAttributes(anonymity=True), Description("statement", {"statement_type": "r"})),
                               (SecurityAttributes(anonymity=True),
                                Description("payment", {"module": "card-purse", "amount": 1, "currency": 978})),
                               (SecurityAttributes(anonymity=True, non_repudiation_of_origin=True), describe(b"x")),
                               (SecurityAttributes(confidentiality=False), describe(b"x"))):
        with pytest.raises(UnsupportedAttribute):
            check_attributes(attrs, expectation, properties)
    with pytest.raises(UnsupportedAttribute):
        SecurityAttributes.from_dict({"secrecy": True})


def test_anonymity_is_what_the_payment_module_declares(world: World) -> None:
    """One source of truth: ``ExchangeProperties.anonymous`` on the module class, read by the transfer layer
    through the payment layer's item verifiers. e-cash declares its payments anonymous, so an anonymous
    transfer may carry them (the transfer layer's own list said no module was); the card purse names the
    card and is refused; a module attached later is judged by its own declaration, with nothing to edit here."""
    from semper.client.payment.item import ItemPayments, ItemVerifier
    from semper.client.payment.model import ExchangeProperties, Model
    from semper.client.payment.modules.ecash import EcashModule
    from semper.client.payment.modules.purse import PurseModule
    from semper.client.transfer.attributes import SecurityAttributes, check_attributes
    managers = _public_managers(world)
    anonymous = SecurityAttributes(anonymity=True)

    def pay(module: str) -> Description:
        return Description("payment", {"module": module, "amount": 100, "currency": 978})
    assert EcashModule.properties.anonymous and not PurseModule.properties.anonymous
    assert managers.properties(pay("ecash")).anonymous
    check_attributes(anonymous, pay("ecash"), managers.properties)
    check_attributes(anonymous, PackageDescription((describe(b"report"), pay("ecash"))), managers.properties)
    with pytest.raises(UnsupportedAttribute, match="card-purse payment names the payer"):
        check_attributes(anonymous, pay("card-purse"), managers.properties)
    with pytest.raises(UnsupportedAttribute, match="names its signer"):
        check_attributes(anonymous, PackageDescription((pay("ecash"), Description("statement", {
            "statement_type": "receipt"}))), managers.properties)

    class Tokens:                                   # a plug-in payment system that says it is anonymous
        name = "tokens"
        model = Model.CASH_LIKE
        properties = ExchangeProperties(externally_verifiable=True, revocable=False, anonymous=True)
    plugged = Managers(InformationManager(), ItemPayments({"tokens": ItemVerifier(Tokens, lambda proof, terms: None)}))
    check_attributes(anonymous, pay("tokens"), plugged.properties)
