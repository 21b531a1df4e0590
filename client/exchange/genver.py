"""gen-ver: a generatable item (originator O) for an externally verifiable one (responder R).

The paper's figure 4 in the asynchronous optimistic form (docs/exchange.md has the charts and the
fairness argument)::

    O -> R   propose: signed by O; xid; both descriptions; commitment to O's item
    R -> O   accept: signed by R; and R's item (the verifiable transfer)
    O -> R   O's item (the generatable transfer), only if R's item checked

R, missing or refusing O's item, asks T to *resolve*: T verifies R's item externally, generates
O's item, and keeps R's item for O. O never needs T to stay safe (its commitment counts only
against R's item, which T then keeps for it); it asks for the *status* when R's item does not come.
"""
from __future__ import annotations

from typing import Any

from ..transfer.errors import TransferError
from ..transfer.items import Content, content_from_json
from ..transfer.managers import offer_commit, offer_release, offer_revoked
from .errors import PeerUnreachable, TtpUnavailable
from .messages import Proposal
from .outcome import Outcome
from .run import Run
from .steps import Setup, receive_proposal, send_acceptance, send_proposal, take_acceptance


# ---- originator --------------------------------------------------------------------------------
async def originator(run: Run, setup: Setup) -> Outcome:
    party = run.party
    assert setup.binding is not None and setup.desc_r is not None
    escrow = party.ttp.escrow if party.ttp is not None else None
    commitments, attachments = await run.blocking(offer_commit, setup.offer, setup.desc_o, setup.binding, escrow)
    try:
        proposal = await send_proposal(run, setup, commitments, attachments)
    except PeerUnreachable as e:          # maybe delivered, maybe not: R may still pay and resolve
        return await originator_status(run, f"the responder did not take the proposal ({e})", setup)
    got = await take_acceptance(run, proposal)
    if got.outcome is not None:
        return got.outcome
    if got.problem is not None:
        return await originator_status(run, got.problem, setup)
    kept = got.kept
    await run.blocking(party.managers.accept, kept, proposal.desc_r)
    release = await run.blocking(offer_release, setup.offer, setup.desc_o, proposal.binding)
    run.record_item("sent", release)
    run.state("done", outcome="completed")
    try:
        await run.send("item", {"item": release.to_json()})
    except PeerUnreachable:
        pass                            # R can always get it from T: its item is what T needs
    return run.outcome("completed", "both items exchanged", received=kept, gave=True)


async def originator_status(run: Run, why: str, setup: Setup | None = None) -> Outcome:
    """O without R's item: it gave only a conditional commitment. T's status tells whether R resolved
    (then T holds R's item for O) or nothing happened (T's signed 'undecided' is the evidence)."""
    try:
        decision = await run.ttp("status")
    except TtpUnavailable as e:
        return run.outcome("pending", f"{why}; the third party could not be asked ({e}); only a conditional "
                                      "commitment was given")
    return await originator_from_decision(run, why, decision, setup)


async def originator_from_decision(run: Run, why: str, decision: Any, setup: Setup | None = None) -> Outcome:
    proposal = run.proposal
    assert proposal is not None
    if decision.outcome == "resolved":
        try:
            item = content_from_json(decision.body.get("responder_item"), "responder_item")
            kept = await run.blocking(run.party.managers.check, item, proposal.desc_r, proposal.binding,
                                      proposal.binding.responder)
        except TransferError as e:                     # T vouched for it; if it does not check, that is evidence
            return run.outcome("refused", f"the third party resolved, but the responder's item it kept does not "
                                          f"check here: {e}")
        run.record_item("received", kept)
        await run.blocking(run.party.managers.accept, kept, proposal.desc_r)
        run.state("done", outcome="resolved")
        return run.outcome("resolved", "the third party resolved the exchange: it generated this party's item "
                                       "for the responder and kept the responder's item for this party",
                           received=kept, gave=True)
    if decision.outcome == "originator-fault":
        run.state("done", outcome="originator-fault")
        return run.outcome("originator-fault", decision.reason, gave=False)
    if decision.outcome == "expired":
        if setup is not None:              # the commitment comes back (a reserved cheque: from the bank)
            await run.blocking(offer_revoked, setup.offer, proposal.desc_o, proposal.binding, decision.der)
        run.state("done", outcome="expired")
        return run.outcome("expired", f"{why}; {decision.reason}", gave=False)
    return run.outcome("pending", f"{why}; the third party has not decided ({decision.reason}); only a conditional "
                                  "commitment was given")


# ---- responder ---------------------------------------------------------------------------------
async def responder(run: Run, setup: Setup) -> Outcome:
    party = run.party
    got = await receive_proposal(run, setup, "gen-ver")
    if isinstance(got, Outcome):
        return got
    proposal, attachments, _body = got
    item, problem = await send_acceptance(run, setup, proposal)
    if problem is not None:
        return await resolve(run, item, attachments, problem)
    got_item = await run.expect(("item",))
    if got_item is None:
        return await resolve(run, item, attachments, "the originator's item did not arrive")
    try:
        released = content_from_json(got_item[1].get("item"), "the originator's item")
        run.record_item("offered", released)
        kept = await run.blocking(party.managers.check_release, released, proposal.commitments, attachments,
                                  proposal.desc_o, proposal.binding)
    except TransferError as e:
        run.record("peer-fault", {"reason": str(e)})
        return await resolve(run, item, attachments, f"the originator's item is not what it committed to ({e})")
    run.record_item("received", kept)
    run.state("done", outcome="completed")
    return run.outcome("completed", "both items exchanged", received=kept, gave=True)


async def resolve(run: Run, item: Content, attachments: dict[str, Any], why: str) -> Outcome:
    """R gave its item and lacks O's: the third party resolves (or says why not, signed)."""
    try:
        decision = await run.ttp("resolve", item=item.to_json(), attachments=attachments)
    except TtpUnavailable as e:
        return run.outcome("pending", f"{why}; the third party could not be asked yet ({e}); ask again "
                                      "(Party.recover): its decisions are kept", gave=True)
    return await responder_from_decision(run, why, decision, attachments)


async def responder_from_decision(run: Run, why: str, decision: Any, attachments: dict[str, Any]) -> Outcome:
    proposal: Proposal | None = run.proposal
    assert proposal is not None
    if decision.outcome == "resolved":
        try:
            kept = await run.blocking(run.party.managers.check_replacement, decision.body.get("replacement") or {},
                                      proposal.commitments, attachments, proposal.desc_o, proposal.binding)
        except TransferError as e:
            return run.outcome("refused", f"{why}; the third party's replacement does not check: {e}", gave=True)
        run.record_item("received", kept)
        run.state("done", outcome="resolved")
        return run.outcome("resolved", f"{why}; the third party generated the originator's item", received=kept,
                           gave=True)
    if decision.outcome == "originator-fault":
        run.state("done", outcome="originator-fault")
        return run.outcome("originator-fault", f"{why}; {decision.reason}", gave=True)
    if decision.outcome == "expired":
        run.state("done", outcome="expired")
        return run.outcome("expired", f"{why}; the third party may no longer act on the originator's commitment: "
                                      f"{decision.reason}", gave=True)
    return run.outcome("refused", f"{why}; the third party refused: {decision.reason}", gave=True)
