"""Fault-free exchanges over HTTPS, negotiation, packages, attributes, and recovery after a crash.

The third party runs throughout and counts every request it gets: in every fault-free run of every
protocol it must see none.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from test_exchange_support import (
    EUR,
    PRICE,
    REPORT,
    Cards,
    World,
    buyer_managers,
    cards,
    make_party,
    plain_sale,
    purchase,
    purse_payer,
    run,
    seller_managers,
    start_ttp,
    swap,
    world,
)

from semper.client.exchange.errors import NoFairProtocol
from semper.client.exchange.party import ResponsePlan
from semper.client.support.cms import parse_statement
from semper.client.transfer.attributes import SecurityAttributes
from semper.client.transfer.errors import UnsupportedAttribute
from semper.client.transfer.information import InformationOffer, describe
from semper.client.transfer.items import Description, Item, Package
from semper.client.transfer.managers import PackageOffer
from semper.client.transfer.statements import StatementOffer


class Pair:
    """A seller and a buyer on HTTPS, with the cards and a counting third party."""

    def __init__(self, world: World, folder: Path, fresh_images: Any, step_timeout: float = 5.0) -> None:
        self.world = world
        self.c = cards(world, folder / "cards", fresh_images)
        self.t = start_ttp(world, folder / "ttp.db")
        self.seller = make_party(world, "seller", folder, seller_managers(world, self.c), self.t.url,
                                 step_timeout=step_timeout)
        self.buyer = make_party(world, "buyer", folder, buyer_managers(world), self.t.url, step_timeout=step_timeout)

    async def __aenter__(self) -> Pair:
        await self.seller.start()
        await self.buyer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in (self.seller, self.buyer):
            await p.stop()
            p.close()
        self.t.stop()

    async def exchange(self, deal: Any, **kw: Any) -> tuple[Any, Any]:
        self.buyer.plans.append(deal.plan)
        o = await self.seller.originate(self.buyer.url, deal.offer, deal.want, fair=deal.fair, **kw)
        r = await self.buyer.wait_outcome(o.session, 10) if self.buyer.knows(o.session) else None
        return o, r


def test_fault_free_runs_of_every_protocol_never_reach_the_third_party(world: World, tmp_path: Path,
                                                                        fresh_images: Any) -> None:
    async def go() -> None:
        async with Pair(world, tmp_path, fresh_images) as p:
            start_balance, start_total = p.c.balance(), p.c.psam_total()
            for make, messages in ((lambda: purchase(world, p.c), 5), (lambda: swap(world), 5),
                                   (lambda: plain_sale(world, p.c), 4)):
                deal = make()
                o, r = await p.exchange(deal)
                assert (o.status, r.status) == ("completed", "completed"), (o.as_dict(), r.as_dict())
                assert o.protocol == r.protocol == deal.protocol and o.xid == r.xid
                assert o.messages_sent + r.messages_sent == messages
                assert o.ttp_requests == r.ttp_requests == 0 and o.decision is None and r.decision is None
            assert p.t.requests() == 0                           # counted at the third party itself
            assert p.c.balance() == start_balance - 2 * PRICE     # two card payments, each once
            assert p.c.psam_total() == start_total + 2 * PRICE    # and each deposited in the PSAM
    run(go())


def test_the_buyer_gets_exactly_the_promised_package(world: World, tmp_path: Path, fresh_images: Any) -> None:
    async def go() -> None:
        async with Pair(world, tmp_path, fresh_images) as p:
            o, r = await p.exchange(purchase(world, p.c))
            assert isinstance(r.received, Package) and len(r.received.members) == 2
            info, receipt = r.received.members
            assert base64.b64decode(info.data["plaintext"]) == REPORT
            body = parse_statement(base64.b64decode(receipt.data["der"])).body
            assert body["type"] == "receipt" and body["amount"] == PRICE and body["exchange"]["xid"] == r.xid
            assert isinstance(o.received, Item) and o.received.type == "payment"
            kinds = [k for k, _ in p.buyer.evidence(r.xid)]
            assert kinds[:3] == ["statement:xchg-proposal", "attachments", "state"]
            assert "statement:xchg-accept" in kinds and "item:received" in kinds
    run(go())


def test_negotiation_refuses_what_no_protocol_makes_fair(world: World, tmp_path: Path, fresh_images: Any) -> None:
    """Nothing is sent when the items allow no fair protocol, or when the responder has no matching plan."""
    async def go() -> None:
        async with Pair(world, tmp_path, fresh_images) as p:
            seller = world.identities["seller"]
            from semper.client.transfer.statements import CredentialOffer
            # a non-revocable credential for a payment: neither generatable-for-verifiable nor revocable
            offer = CredentialOffer(seller.sign, {"member": "gold"})
            want = Description("payment", {"module": "card-purse", "amount": PRICE, "currency": EUR})
            o = await p.seller.originate(p.buyer.url, offer, want)
            assert o.status == "failed" and "no fair protocol" in o.reason and o.messages_sent == 0
            # the payer originating with the generatable item on the other side: told to swap roles
            from semper.client.transfer.payment import PaymentOffer
            pay = PaymentOffer(purse_payer(world, p.c), PRICE, EUR)
            o = await p.buyer.originate(p.seller.url, pay, describe(REPORT))
            assert o.status == "failed" and "let that party originate" in o.reason and o.messages_sent == 0
            # a responder without a matching plan refuses in negotiation; nothing is given
            p.buyer.plans.append(ResponsePlan(describe(b"something else"), purchase(world, p.c).plan.offer))
            deal = purchase(world, p.c)
            o = await p.seller.originate(p.buyer.url, deal.offer, deal.want)
            assert o.status == "no-exchange" and "nothing to exchange" in o.reason
            assert p.t.requests() == 0 and p.c.psam_total() == 0
    run(go())


def test_security_attributes_non_repudiation_of_origin_and_receipt(world: World, tmp_path: Path,
                                                                   fresh_images: Any) -> None:
    async def go() -> None:
        async with Pair(world, tmp_path, fresh_images) as p:
            attrs = SecurityAttributes(non_repudiation_of_origin=True, non_repudiation_of_receipt=True)
            o, r = await p.exchange(plain_sale(world, p.c), attributes=attrs)
            assert (o.status, r.status) == ("completed", "completed")
            seller_kinds = [k for k, _ in p.seller.evidence(o.xid)]
            buyer_kinds = [k for k, _ in p.buyer.evidence(r.xid)]
            assert "statement:receipt" in seller_kinds        # the buyer's signed receipt, kept by the seller
            assert "statement:origin" in buyer_kinds          # the seller's signed origin, kept by the buyer
            # anonymity cannot go with signatures or with a payment that names the card
            with pytest.raises(UnsupportedAttribute):
                from semper.client.transfer.attributes import check_attributes
                check_attributes(SecurityAttributes(anonymity=True), purchase(world, p.c).plan.expect,
                                 p.seller.managers.properties)
            o = await p.seller.originate(p.buyer.url, InformationOffer(REPORT), describe(REPORT), fair=False,
                                         attributes=SecurityAttributes(anonymity=True,
                                                                       non_repudiation_of_origin=True))
            assert o.status == "failed" and "exclude each other" in o.reason
    run(go())


def test_a_crashed_buyer_finishes_after_restart_through_the_third_party(world: World, tmp_path: Path,
                                                                        fresh_images: Any) -> None:
    """The buyer pays and crashes; the seller never sends its item. Restarted with its archive only,
    the buyer resolves with the third party and gets the report."""
    async def go() -> None:
        async with Pair(world, tmp_path, fresh_images, step_timeout=0.4) as p:
            p.seller.outbox.stop_before = "item"
            p.buyer.outbox.stop_before = "ttp"                 # crashes instead of going to T
            _o, r = await p.exchange(purchase(world, p.c))
            assert r.status == "stopped" and p.c.balance() == 5000 - PRICE
            await p.buyer.stop()
            p.buyer.close()
            reborn = make_party(world, "buyer", tmp_path, buyer_managers(world), p.t.url)
            await reborn.start()
            try:
                outs = await reborn.recover()
                assert [x.status for x in outs] == ["resolved"]
                info = outs[0].received.members[0]
                assert base64.b64decode(info.data["plaintext"]) == REPORT
                assert await reborn.recover() == []              # nothing left open
            finally:
                await reborn.stop()
                reborn.close()
    run(go())


def test_a_late_resolution_reaches_the_originator_through_status(world: World, tmp_path: Path,
                                                                 fresh_images: Any) -> None:
    """The seller gave up waiting (pending: it released nothing); the buyer paid later via T. The
    seller's next recovery finds the decision and the payment T kept for it, and deposits it."""
    async def go() -> None:
        async with Pair(world, tmp_path, fresh_images, step_timeout=0.4) as p:
            p.buyer.outbox.delays["accept"] = 0.8              # slower than the seller's patience
            o, r = await p.exchange(purchase(world, p.c))
            assert o.status == "pending" and not o.gave and o.decision is not None
            # the buyer's late payment arrived after the seller stopped waiting: the buyer resolves
            assert r.status == "resolved" and r.received is not None
            assert p.c.psam_total() == 0
            outs = await p.seller.recover()
            assert [x.status for x in outs] == ["resolved"]
            assert p.c.psam_total() == PRICE                  # the payment T kept, deposited
    run(go())


def test_a_statement_alone_is_generatable_by_replacement(world: World, tmp_path: Path, fresh_images: Any) -> None:
    """gen-ver with a receipt for a payment; the seller stops: the buyer holds T's replacement receipt."""
    async def go() -> None:
        async with Pair(world, tmp_path, fresh_images, step_timeout=0.4) as p:
            seller = world.identities["seller"]
            body = {"type": "receipt", "goods": "advice", "amount": PRICE, "currency": EUR}
            deal = purchase(world, p.c)
            deal.offer = StatementOffer(seller.sign, body)
            deal.plan.expect = Description("statement", {"statement_type": "receipt", "fields": {"amount": PRICE}})
            p.seller.outbox.stop_before = "item"
            _o, r = await p.exchange(deal)
            assert r.status == "resolved"
            replacement = parse_statement(base64.b64decode(r.received.data["der"]))
            assert replacement.body["type"] == "replacement" and replacement.body["statement"]["goods"] == "advice"
            assert replacement.signer_cert == world.opened.ttp.certificate
    run(go())


def test_package_offers_keep_their_shape() -> None:
    offer = PackageOffer((InformationOffer(b"a"), PackageOffer((InformationOffer(b"b"), InformationOffer(b"c")))))
    from semper.client.transfer.managers import offer_description
    d = offer_description(offer)
    assert [m.to_json()["type"] for m in d.members] == ["information", "package"]
    with pytest.raises(NoFairProtocol):
        from semper.client.exchange.negotiation import choose_protocol
        from semper.client.transfer.properties import Properties
        choose_protocol(Properties(verifiable=True), Properties(verifiable=True), True)


def test_semper_bench_exchange_reports_json(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from test_exchange_support import REPO
    r = subprocess.run([sys.executable, "-m", "semper.client.cli", "bench", "exchange", "--runs", "2",
                        "--resolved-runs", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "SEMPER_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for protocol, messages in (("gen-ver", 5), ("rev-rev", 5), ("plain", 4)):
        ff = out["protocols"][protocol]["fault_free"]
        assert ff["messages"] == messages and ff["ttp_requests"] == 0 and ff["latency"]["median_ms"] > 0
    for protocol in ("gen-ver", "rev-rev"):
        assert out["protocols"][protocol]["resolved"]["ttp_requests"] == 1
    assert out["protocols"]["plain"]["resolved"] is None


def test_the_buyer_signs_on_its_card(world: World, tmp_path: Path, fresh_images: Any) -> None:
    """The buyer's acceptance and its request to T are signed by the card's PIV key 9C (PIN before
    every signature), certified by the semper CA; the exchange layer sees only a Signer."""
    from semper.client.exchange.identity import Identity
    from semper.client.exchange.party import Party
    from semper.client.support import pki
    from semper.hardware.piv import PivSession, PivSigner, Slot
    from semper.hardware.simulator import open_card
    card_image, _psam = fresh_images(tmp_path / "piv")
    conn = open_card(card_image, sync=False)
    try:
        piv = PivSession(conn)
        signer = PivSigner(piv, Slot.SIGNATURE, label="the buyer's card")
        issued = world.ca.issue_direct(pki.Subject("Carla Cardholder", "person", "carla@example.org"),
                                       signer.public_point())
        piv.verify_pin(b"1234")
        piv.put_certificate(Slot.SIGNATURE, issued.certificate)
        identity = Identity(signer, pin=b"1234")

        async def go() -> None:
            async with Pair(world, tmp_path, fresh_images, step_timeout=0.4) as p:
                card_buyer = Party("card buyer", identity, world.trust, buyer_managers(world),
                                   tmp_path / "card-buyer.archive", tls=world.tls, root_pem=world.root_pem,
                                   ttp=world.ttp_info(p.t.url), step_timeout=0.4)
                await card_buyer.start()
                try:
                    deal = purchase(world, p.c)
                    card_buyer.plans.append(deal.plan)
                    o = await p.seller.originate(card_buyer.url, deal.offer, deal.want)
                    r = await card_buyer.wait_outcome(o.session, 10)
                    assert (o.status, r.status) == ("completed", "completed"), (o.as_dict(), r.as_dict())
                    accept = next(c for k, c in card_buyer.evidence(r.xid) if k == "statement:xchg-accept")
                    assert "CN=Carla Cardholder" in parse_statement(accept).signer_cert.subject.rfc4514_string()
                    # and once more with the seller failing: the card signs the request to T
                    deal = purchase(world, p.c)
                    card_buyer.plans.append(deal.plan)
                    p.seller.outbox.stop_before = "item"
                    o = await p.seller.originate(card_buyer.url, deal.offer, deal.want)
                    r = await card_buyer.wait_outcome(o.session, 10)
                    assert r.status == "resolved" and identity.signatures == 3
                finally:
                    await card_buyer.stop()
                    card_buyer.close()
        run(go())
    finally:
        conn.close()
