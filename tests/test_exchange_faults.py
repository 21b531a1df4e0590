"""Every message of every protocol, with a party that stops right there or sends a wrong or forged one.

Real parties on HTTPS (token signers, the simulated buyer card and seller PSAM in process), a real
third party; the dishonest party runs the same code with one fault injected. For each case the
honest party must end with what it expected, the third party's replacement, or the third party's
signed decision — never having given its item for nothing without evidence — and the judge,
fed the honest party's exported bundle, must rule accordingly.
"""
from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_exchange_support import (
    PRICE,
    World,
    buyer_managers,
    cards,
    make_party,
    plain_sale,
    purchase,
    run,
    seller_managers,
    start_ttp,
    swap,
    world,
)

from semper.client.exchange.judge import judge
from semper.client.exchange.messages import Proposal, exchange_id
from semper.client.exchange.party import Party
from semper.client.payment.item import item_verifiers
from semper.client.transfer.escrow import seal
from semper.client.transfer.information import InformationOffer

STEP = 0.4          # the honest party's patience per step (fairness does not depend on it)
SENDER = {"negotiate": "originator", "negotiated": "responder", "propose": "originator", "accept": "responder",
          "item": "originator"}
MESSAGES = {"gen-ver": ("negotiate", "negotiated", "propose", "accept", "item"),
            "rev-rev": ("negotiate", "negotiated", "propose", "accept", "item"),
            "plain": ("negotiate", "negotiated", "propose", "accept")}
CASES = [(p, k, f) for p, kinds in MESSAGES.items() for k in kinds for f in ("stop", "wrong", "forged")]


# ---- ways to spoil a message ----------------------------------------------------------------------------
def flip_b64(value: str, at: int = -20) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[at] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def perturb(desc: dict[str, Any]) -> dict[str, Any]:
    """The same description with its first item's main term changed (a different item)."""
    if desc.get("type") == "package":
        return {**desc, "members": [perturb(desc["members"][0])] + desc["members"][1:]}
    out = dict(desc)
    if "sha256" in out:
        out["sha256"] = ("0" if out["sha256"][0] != "0" else "1") + out["sha256"][1:]
    elif "statement_type" in out:
        out["fields"] = {**out.get("fields", {}), "contract": "C-other"}
    elif "attributes" in out:
        out["attributes"] = {**out["attributes"], "voucher": "V-other"}
    elif "amount" in out:
        out["amount"] = out["amount"] + 1
    return out


def resign_proposal(world: World) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A validly signed proposal for other terms: the responder's nonce replaced (a stale or foreign run)."""
    def tamper(body: dict[str, Any]) -> dict[str, Any]:
        prop = Proposal.verify(base64.b64decode(body["proposal"]), world.trust)
        new = dict(prop.body)
        new["nonces"] = [new["nonces"][0], os.urandom(16).hex()]
        b = prop.binding
        new["xid"] = exchange_id(b.protocol, b.originator, b.responder, b.ttp, prop.desc_o, prop.desc_r, *new["nonces"])
        body["proposal"] = base64.b64encode(world.identities["seller"].sign(new)).decode()
        return body
    return tamper


def other_payment(world: World, c: Any) -> dict[str, Any]:
    """A genuine card-signed debit proof — for another request (an earlier purchase at the same PSAM)."""
    from semper.client.payment.card_purse import purchase as direct_purchase
    r = direct_purchase(c.purse, c.psam, PRICE, world.purse_root)
    return {"type": "payment", "module": "card-purse", "proof": {
        "certificate": base64.b64encode(c.purse.certificate()).decode(),
        "record": base64.b64encode(r.signed.record).decode(),
        "signature": base64.b64encode(r.signed.signature).decode()}}


def spoil_item(world: World, protocol: str, kind: str, fault: str, c: Any) -> Callable[[dict[str, Any]], dict[str,
                                                                                                              Any]]:
    """Tamper with the item a message carries: ``wrong`` = valid but not the agreed one, ``forged`` = altered."""
    seller, buyer = world.identities["seller"], world.identities["buyer"]
    if kind == "accept":
        if protocol in ("gen-ver", "plain"):
            if fault == "wrong":
                wrong = other_payment(world, c)
                return lambda body: {**body, "item": wrong}

            def forge(body: dict[str, Any]) -> dict[str, Any]:
                body["item"]["proof"]["signature"] = flip_b64(body["item"]["proof"]["signature"], 10)
                return body
            return forge

        def revrev_accept(body: dict[str, Any]) -> dict[str, Any]:
            if fault == "forged":
                body["item"]["der"] = flip_b64(body["item"]["der"], -5)
                return body
            xid = json.loads(_statement_body(body["item"]["der"]))["exchange"]["xid"]
            other = {"type": "contract-signature", "contract": "C-other", "exchange": {"xid": xid,
                                                                                       "ttp": _ttp_id(world)},
                     "revocable_by": _ttp_id(world)}
            body["item"]["der"] = base64.b64encode(buyer.sign(other)).decode()
            return body
        return revrev_accept
    if kind == "item":
        if protocol == "gen-ver":
            def genver_item(body: dict[str, Any]) -> dict[str, Any]:
                members = body["item"]["members"]
                if fault == "wrong":
                    members[0]["key"] = base64.b64encode(os.urandom(32)).decode()     # does not decrypt
                else:
                    members[1]["der"] = flip_b64(members[1]["der"], -5)             # receipt signature broken
                return body
            return genver_item

        def revrev_item(body: dict[str, Any]) -> dict[str, Any]:
            if fault == "forged":
                body["item"]["der"] = flip_b64(body["item"]["der"], -5)
                return body
            xid = json.loads(_statement_body(body["item"]["der"]))["exchange"]["xid"]
            other = {"type": "credential", "attributes": {"voucher": "V-999", "value": 1},
                     "exchange": {"xid": xid, "ttp": _ttp_id(world)}, "revocable_by": _ttp_id(world)}
            body["item"]["der"] = base64.b64encode(seller.sign(other)).decode()
            return body
        return revrev_item
    raise AssertionError(kind)


def _statement_body(der_b64: str) -> bytes:
    from semper.client.support.cms import parse_statement
    return parse_statement(base64.b64decode(der_b64)).content


def _ttp_id(world: World) -> str:
    from semper.client.transfer.binding import cert_id
    return cert_id(world.ttp_home.certificate())


def fault_for(world: World, protocol: str, kind: str, fault: str, c: Any) -> tuple[str | None, dict[str, Any]]:
    """(stop_before, tamper) for one case."""
    if fault == "stop":
        return kind, {}
    if kind == "negotiate":
        if fault == "wrong":
            return None, {kind: lambda b: {**b, "offer": perturb(b["offer"])}}
        return None, {kind: lambda b: {**b, "originator": flip_b64(b["originator"], 40)}}
    if kind == "negotiated":
        if fault == "wrong":
            other = {"gen-ver": "rev-rev", "rev-rev": "gen-ver", "plain": "gen-ver"}[protocol]
            return None, {kind: lambda b: {**b, "protocol": other}}
        return None, {kind: lambda b: {**b, "responder": flip_b64(b["responder"], 40)}}
    if kind == "propose":
        if protocol == "plain" and fault == "wrong":
            def wrong_data(b: dict[str, Any]) -> dict[str, Any]:
                b["item"]["plaintext"] = base64.b64encode(b"not the report").decode()
                return b
            return None, {kind: wrong_data}
        if fault == "wrong":
            return None, {kind: resign_proposal(world)}
        return None, {kind: lambda b: {**b, "proposal": flip_b64(b["proposal"], -10)}}
    return None, {kind: spoil_item(world, protocol, kind, fault, c)}


# ---- running one case -------------------------------------------------------------------------------------
DEALS = {"gen-ver": lambda w, c: purchase(w, c), "rev-rev": lambda w, c: swap(w), "plain": lambda w, c: plain_sale(w,
                                                                                                                   c)}


def exchange_with_fault(world: World, tmp_path: Path, fresh_images: Any, protocol: str, *, dishonest: str,
                        stop_before: str | None = None, tamper: dict[str, Any] | None = None,
                        spoil: Callable[..., Any] | None = None, offer_hook: Callable[..., Any] | None = None,
                        buyer_faults: dict[str, Any] | None = None) -> dict[str, Any]:
    c = cards(world, tmp_path / "cards", fresh_images)
    t = start_ttp(world, tmp_path / "ttp.db")
    balance_before = c.balance()
    result: dict[str, Any] = {"cards": c, "ttp": t}

    async def go() -> None:
        seller = make_party(world, "seller", tmp_path, seller_managers(world, c), t.url, step_timeout=STEP)
        buyer = make_party(world, "buyer", tmp_path, buyer_managers(world), t.url, step_timeout=STEP)
        await seller.start()
        await buyer.start()
        try:
            deal = DEALS[protocol](world, c)
            if offer_hook is not None:
                deal = offer_hook(deal)
            buyer.plans.append(deal.plan)
            bad: Party = seller if dishonest == "originator" else buyer
            bad.outbox.stop_before = stop_before
            bad.outbox.tamper = dict(tamper or {})
            if spoil is not None:
                bad.outbox.tamper.update(spoil(c))
            if buyer_faults:
                for k, v in buyer_faults.items():
                    setattr(buyer.outbox, k, v)
            o = await seller.originate(buyer.url, deal.offer, deal.want, fair=deal.fair)
            # the responder has a run only if the negotiation reached its service
            r = await buyer.wait_outcome(o.session, 10) if buyer.knows(o.session) else None
            result.update(originator=o, responder=r, seller=seller, buyer=buyer)
            honest = r if dishonest == "originator" else o
            result["honest"] = honest
            result["bundle"] = None
            honest_party = seller if honest is o else buyer
            if honest is not None and honest.xid is not None and honest_party.archive.entries(honest.xid):
                party = seller if honest is o else buyer
                result["bundle"] = party.export(honest.xid, tmp_path / "honest.zip")
        finally:
            await seller.stop()
            await buyer.stop()
            seller.close()
            buyer.close()
    try:
        run(go())
    finally:
        t.stop()
    result["paid"] = balance_before - c.balance()
    return result


def assert_fair_end(res: dict[str, Any], protocol: str) -> None:
    """The issue's rule for the honest party, checked on its outcome and on the money."""
    honest = res["honest"]
    if honest is None:                       # it never heard of the exchange: nothing given, nothing owed
        assert res["paid"] == 0
        return
    assert honest.status not in ("stopped", "refused"), honest.as_dict()
    if protocol == "plain":
        assert honest.status in ("completed", "failed", "no-exchange"), honest.as_dict()
    elif honest.gave:
        # gave its item: it holds the expected item, T's replacement, or T's signed decision
        assert honest.received is not None or (honest.status in ("revoked", "originator-fault")
                                               and honest.decision is not None), honest.as_dict()
    else:
        assert honest.status in ("completed", "no-exchange", "pending", "revoked", "resolved"), honest.as_dict()
        if honest.status == "pending":
            assert honest.decision is not None          # T's signed 'undecided' is the evidence
    # money: the buyer's card lost the price only if the buyer gave its payment
    buyer_outcome = res["responder"]
    if res["paid"]:
        assert res["paid"] == PRICE or (res["paid"] == 2 * PRICE), res["paid"]
        assert buyer_outcome is not None and (buyer_outcome.gave or buyer_outcome.status == "stopped"), \
            buyer_outcome and buyer_outcome.as_dict()


def judged(world: World, res: dict[str, Any]) -> Any:
    if res["bundle"] is None:
        return None
    ruling = judge(res["bundle"], world.trust, item_verifiers(purse_root=world.purse_root))
    assert ruling.bundle_ok, ruling.bundle_problems
    return ruling


EXPECTED_HONEST = {
    # (protocol, kind, fault) -> the honest party's status (stop/wrong/forged alike unless listed)
    ("gen-ver", "negotiate"): {"no-exchange", None}, ("gen-ver", "negotiated"): {"no-exchange"},
    ("gen-ver", "propose"): {"no-exchange"}, ("gen-ver", "accept"): {"pending"}, ("gen-ver", "item"): {"resolved"},
    ("rev-rev", "negotiate"): {"no-exchange", None}, ("rev-rev", "negotiated"): {"no-exchange"},
    ("rev-rev", "propose"): {"no-exchange"}, ("rev-rev", "accept"): {"revoked"}, ("rev-rev", "item"): {"revoked"},
    ("plain", "negotiate"): {"no-exchange", None}, ("plain", "negotiated"): {"no-exchange"},
    ("plain", "propose"): {"no-exchange", "failed"}, ("plain", "accept"): {"failed"},
}


@pytest.mark.parametrize("protocol, kind, fault", CASES, ids=[f"{p}-{k}-{f}" for p, k, f in CASES])
def test_a_faulty_party_leaves_the_honest_one_whole(world: World, tmp_path: Path, fresh_images: Any,
                                                    protocol: str, kind: str, fault: str) -> None:
    c_holder: dict[str, Any] = {}
    dishonest = SENDER[kind]

    def spoil(c: Any) -> dict[str, Any]:
        c_holder["c"] = c
        stop, tamper = fault_for(world, protocol, kind, fault, c)
        assert stop is None
        return tamper
    res = exchange_with_fault(world, tmp_path, fresh_images, protocol, dishonest=dishonest,
                              stop_before=kind if fault == "stop" else None,
                              spoil=None if fault == "stop" else spoil)
    honest = res["honest"]
    status = honest.status if honest is not None else None
    assert status in EXPECTED_HONEST[(protocol, kind)], (honest.as_dict() if honest else None)
    assert_fair_end(res, protocol)
    ruling = judged(world, res)
    if ruling is None:
        return
    if status == "resolved":
        assert ruling.originator.how == "by the third party's replacement" and ruling.responder.fulfilled
        assert ruling.fair
    elif status == "revoked":
        assert ruling.fair and ruling.originator.how == "revoked"
    elif status == "pending":                       # gen-ver: the responder never paid, the originator never released
        assert not ruling.originator.fulfilled and not ruling.responder.fulfilled and ruling.fair
    elif status == "failed" and protocol == "plain" and dishonest == "responder":
        # the honest originator gave its item and holds the evidence that wins the dispute
        assert ruling.originator.fulfilled and not ruling.responder.fulfilled and not ruling.fair
        assert "responder owes" in ruling.ruling


def test_a_false_commitment_gives_the_responder_a_signed_finding(world: World, tmp_path: Path,
                                                                 fresh_images: Any) -> None:
    """gen-ver: the seller's proposal seals a key that does not decrypt the report, and it then stops.
    The buyer paid; the third party finds the commitment false and says so, signed."""
    class LyingInformationOffer(InformationOffer):
        def commit(self, d: Any, b: Any, escrow: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            c, a = super().commit(d, b, escrow)
            c["escrow"] = seal(escrow.point, os.urandom(32), b.xid, c["ciphertext_sha256"])
            return c, a

    def lie(deal: Any) -> Any:
        from semper.client.transfer.managers import PackageOffer
        info, receipt = deal.offer.members
        deal.offer = PackageOffer((LyingInformationOffer(info.data, "report.bin"), receipt), deal.offer.label)
        return deal
    res = exchange_with_fault(world, tmp_path, fresh_images, "gen-ver", dishonest="originator",
                              stop_before="item", offer_hook=lie)
    honest = res["honest"]
    assert honest.status == "originator-fault" and honest.gave and honest.decision is not None
    assert "commitment is false" in honest.reason
    assert res["paid"] == PRICE
    assert_fair_end(res, "gen-ver")
    ruling = judged(world, res)
    assert ruling.responder.fulfilled and not ruling.originator.fulfilled and not ruling.fair
    assert ruling.originator.how == "commitment false" and "originator owes" in ruling.ruling
