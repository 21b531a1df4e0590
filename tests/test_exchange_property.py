"""Random interleavings and crashes of both parties; fairness checked at the end of every run.

Hypothesis draws the protocol, where each party crashes (before which message, or before going to
the third party), how late each message is (so messages overtake the peer's patience and race its
call to the third party), each party's patience, and the order in which the crashed parties come
back. A crashed party is stopped (its service closed) and restarted from its evidence archive
alone; then every party recovers. Fairness is judged on ground truth, not on the parties' own
reports: the buyer's card balance, the seller's PSAM total, what each party holds, and the third
party's record.
"""
from __future__ import annotations

import base64
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_exchange_support import (
    PRICE,
    REPORT,
    World,
    buyer_managers,
    cards,
    make_party,
    purchase,
    run,
    seller_managers,
    start_ttp,
    swap,
    world,
)

from semper.client.servers import ttp_store

SELLER_CRASH = [None, "negotiate", "propose", "item", "ttp"]
BUYER_CRASH = [None, "negotiated", "accept", "ttp"]
DELAY = st.sampled_from([0.0, 0.0, 0.05, 0.45])

scenario = st.fixed_dictionaries({
    "protocol": st.sampled_from(["gen-ver", "rev-rev"]),
    "seller_crash": st.sampled_from(SELLER_CRASH),
    "buyer_crash": st.sampled_from(BUYER_CRASH),
    "seller_delays": st.fixed_dictionaries({k: DELAY for k in ("propose", "item")}),
    "buyer_delays": st.fixed_dictionaries({k: DELAY for k in ("negotiated", "accept")}),
    "seller_patience": st.sampled_from([0.25, 0.5]),
    "buyer_patience": st.sampled_from([0.25, 0.5]),
    "buyer_first": st.booleans(),
})


def holds_expected(outcomes: list[Any], role: str, protocol: str) -> bool:
    for o in outcomes:
        if o is None or o.received is None or o.status not in ("completed", "resolved"):
            continue
        if protocol == "gen-ver" and role == "buyer":
            return base64.b64decode(o.received.members[0].data["plaintext"]) == REPORT
        return True
    return False


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=scenario)
def test_random_interleavings_and_crashes_end_fairly(world: World, tmp_path_factory: Any, fresh_images: Any,
                                                     s: dict[str, Any]) -> None:
    folder = tmp_path_factory.mktemp("prop")
    c = cards(world, folder / "cards", fresh_images)
    t = start_ttp(world, folder / "ttp.db")
    balance, total = c.balance(), c.psam_total()
    outcomes: dict[str, list[Any]] = {"seller": [], "buyer": []}

    def new_party(name: str, sub: str) -> Any:
        managers = seller_managers(world, c) if name == "seller" else buyer_managers(world)
        patience = s["seller_patience"] if name == "seller" else s["buyer_patience"]
        return make_party(world, name, folder / name, managers, t.url, step_timeout=patience)

    async def go() -> None:
        parties = {"seller": new_party("seller", "a"), "buyer": new_party("buyer", "a")}
        for p in parties.values():
            await p.start()
        seller, buyer = parties["seller"], parties["buyer"]
        seller.outbox.stop_before, buyer.outbox.stop_before = s["seller_crash"], s["buyer_crash"]
        seller.outbox.delays, buyer.outbox.delays = dict(s["seller_delays"]), dict(s["buyer_delays"])
        deal = purchase(world, c) if s["protocol"] == "gen-ver" else swap(world)
        buyer.plans.append(deal.plan)
        o = await seller.originate(buyer.url, deal.offer, deal.want)
        r = await buyer.wait_outcome(o.session, 15) if buyer.knows(o.session) else None
        outcomes["seller"].append(o)
        outcomes["buyer"].append(r)
        # crashed parties come back from their archives only; everyone then finishes via recovery
        order = ["buyer", "seller"] if s["buyer_first"] else ["seller", "buyer"]
        for name in order:
            p = parties[name]
            crashed = any(x is not None and x.status == "stopped" for x in outcomes[name])
            if crashed:
                await p.stop()
                p.close()
                p = parties[name] = new_party(name, "b")
                await p.start()
            outcomes[name].extend(await p.recover())
        for name in order:                    # a second round: what the other's recovery changed at T
            outcomes[name].extend(await parties[name].recover())
        for p in parties.values():
            await p.stop()
            p.close()
    try:
        run(go(), 60)
        xid = next((x.xid for x in outcomes["seller"] + outcomes["buyer"] if x is not None and x.xid), None)
        with t.ttp.db.transaction() as tx:
            record = ttp_store.get_record(tx, xid) if xid else None
    finally:
        t.stop()

    every = [x for xs in outcomes.values() for x in xs if x is not None]
    assert not [x.as_dict() for x in every if x.status in ("failed", "refused", "originator-fault")], s
    paid = balance - c.balance()
    deposited = c.psam_total() - total
    assert paid in (0, PRICE) and deposited in (0, PRICE), (s, paid, deposited)
    if s["protocol"] == "gen-ver":
        buyer_got = holds_expected(outcomes["buyer"], "buyer", "gen-ver")
        # no value created or lost: what left the card reached the seller's PSAM (directly or through T)
        assert paid == deposited, (s, paid, deposited, [x.as_dict() for x in every])
        # fairness: the buyer paid if and only if it got the report
        assert bool(paid) == buyer_got, (s, [x.as_dict() for x in every])
        assert record is None or record.outcome == "resolved"
    else:
        revoked = record is not None and record.outcome == "revoked"
        seller_got = holds_expected(outcomes["seller"], "seller", "rev-rev")
        buyer_got = holds_expected(outcomes["buyer"], "buyer", "rev-rev")
        # fairness: either the third party voided both transfers, or each side holds the other's item
        assert revoked or (seller_got == buyer_got), (s, [x.as_dict() for x in every])
        assert record is None or record.outcome == "revoked"
    # nobody is left hanging: every party's last word is an end state
    for name in ("seller", "buyer"):
        last = [x for x in outcomes[name] if x is not None]
        if last:
            assert last[-1].status in ("completed", "resolved", "revoked", "no-exchange", "pending", "stopped"), s
