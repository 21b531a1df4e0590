"""rev-rev: two revocable items; the third party can undo both transfers, or make both final.

::

    O -> R   propose: signed by O; xid; both descriptions (both items revocable by T for this xid)
    R -> O   accept: signed by R; and R's item, bound to xid and revocable by T
    O -> R   O's item, bound to xid and revocable by T, only if R's item checked

A party missing the peer's item (or holding a wrong one) asks T to *abort*: T decides ``revoked``
once, and both transfers of the exchange are void — whoever complained, the start is restored.

A party holding the peer's item may ask T to *resolve*, handing in both items: T checks both and
decides ``resolved`` once, keeping both, so a later abort by either gets the other's item instead of a
revocation. Revocable *payments* (SET-like) need this: the bank holds them until T's decision, and
captures them only on ``resolved`` (a payment that stays revocable forever is no payment). So a party
that received one resolves after the exchange; for statements nothing needs it (T is not asked).
"""
from __future__ import annotations

from typing import Any

from ..transfer.errors import TransferError
from ..transfer.items import Content, content_from_json
from ..transfer.managers import offer_make, offer_revoked
from .errors import PeerUnreachable, TtpUnavailable
from .outcome import Outcome
from .run import Run
from .steps import Setup, receive_proposal, send_acceptance, send_proposal, take_acceptance

PEER_ITEM = {"originator": "responder_item", "responder": "originator_item"}


def _peer(run: Run) -> tuple[Any, Any]:
    """(the peer's description, the peer's certificate) in this run."""
    assert run.proposal is not None
    b = run.proposal.binding
    if run.role == "originator":
        return run.proposal.desc_r, b.responder
    return run.proposal.desc_o, b.originator


async def _undo(run: Run, setup: Setup | None, decision: Any) -> None:
    """T revoked: what this party gave is void; a revocable payment's hold goes back to it (its offer asks
    the bank, with T's decision). Best effort: the decision stays in the archive either way."""
    if setup is None or run.proposal is None:
        return
    mine = run.proposal.desc_o if run.role == "originator" else run.proposal.desc_r
    try:
        await run.blocking(offer_revoked, setup.offer, mine, run.proposal.binding, decision.der)
    except TransferError as e:
        run.record("undo-failed", {"reason": str(e)})


async def _from_resolution(run: Run, why: str, decision: Any, received: Content | None) -> Outcome:
    """T resolved (this party or the peer asked): take the peer's item from T's decision where it did not
    come directly, and make received revocable payments final."""
    party = run.party
    desc, cert = _peer(run)
    assert run.proposal is not None
    kept = received
    if kept is None:
        try:
            item = content_from_json(decision.body.get(PEER_ITEM[run.role]), "the peer's item")
            kept = await run.blocking(party.managers.check, item, desc, run.proposal.binding, cert)
        except TransferError as e:
            return run.outcome("refused", f"{why}; the third party resolved, but the peer's item it kept does not "
                                          f"check here: {e}", gave=True)
        run.record_item("received", kept)
    try:
        await run.blocking(party.managers.settle, kept, desc, decision.der)
    except TransferError as e:                 # the decision is kept: settling can be done again later
        run.record("settle-failed", {"reason": str(e)})
    run.state("done", outcome="resolved")
    return run.outcome("resolved", f"{why}; the third party resolved the exchange: both items stand", received=kept,
                       gave=True)


async def abort(run: Run, why: str, gave: bool, setup: Setup | None = None) -> Outcome:
    try:
        decision = await run.ttp("abort")
    except TtpUnavailable as e:
        return run.outcome("pending", f"{why}; the third party could not be asked yet ({e}); ask again "
                                      "(Party.recover)", gave=gave)
    if decision.outcome == "revoked":
        await _undo(run, setup, decision)
        run.state("done", outcome="revoked")
        return run.outcome("revoked", f"{why}; the third party revoked both transfers", gave=gave)
    if decision.outcome == "resolved":          # the peer resolved first: T holds its item for this party
        return await _from_resolution(run, why, decision, None)
    return run.outcome("refused", f"{why}; the third party refused to abort: {decision.reason}", gave=gave)


async def resolve(run: Run, setup: Setup | None, received: Content, mine: Content, why: str) -> Outcome:
    """Both items here: have T make the exchange final, so a revocable payment received can be captured."""
    try:
        decision = await run.ttp("resolve", item=received.to_json(), own=mine.to_json())
    except TtpUnavailable as e:
        return run.outcome("pending", f"{why}; both items were exchanged, but the third party could not be asked "
                                      f"to make them final yet ({e}); ask again (Party.recover)", received=received,
                           gave=True)
    if decision.outcome == "resolved":
        return await _from_resolution(run, why, decision, received)
    if decision.outcome == "revoked":           # the peer aborted first: both void, whatever arrived
        await _undo(run, setup, decision)
        run.state("done", outcome="revoked")
        return run.outcome("revoked", f"{why}; but the peer had aborted first: the third party revoked both "
                                      "transfers", gave=True)
    return run.outcome("refused", f"{why}; the third party refused to resolve: {decision.reason}", received=received,
                       gave=True)


async def _finish(run: Run, setup: Setup, kept: Content, mine: Content) -> Outcome:
    """Completed: where the item this party received is final only with T's word (a revocable payment),
    ask T to resolve now; otherwise done, T saw nothing."""
    desc, _cert = _peer(run)
    if run.party.managers.settles(desc):
        return await resolve(run, setup, kept, mine, "both items exchanged")
    run.state("done", outcome="completed")
    return run.outcome("completed", "both items exchanged (each revocable by the third party until then)",
                       received=kept, gave=True)


async def originator(run: Run, setup: Setup) -> Outcome:
    try:
        proposal = await send_proposal(run, setup, {}, {})
    except PeerUnreachable as e:
        return await abort(run, f"the responder did not take the proposal ({e})", gave=False, setup=setup)
    got = await take_acceptance(run, proposal)
    if got.outcome is not None:
        return got.outcome
    if got.problem is not None:
        return await abort(run, got.problem, gave=False, setup=setup)
    kept = got.kept
    mine = await run.blocking(offer_make, setup.offer, setup.desc_o, proposal.binding)
    run.record_item("sent", mine)
    run.state("released")
    try:
        await run.send("item", {"item": mine.to_json()})
    except PeerUnreachable:
        pass                               # R will abort, or resolve from T: still fair
    return await _finish(run, setup, kept, mine)


async def responder(run: Run, setup: Setup) -> Outcome:
    party = run.party
    got = await receive_proposal(run, setup, "rev-rev")
    if isinstance(got, Outcome):
        return got
    proposal, _attachments, _body = got
    item, problem = await send_acceptance(run, setup, proposal)
    if problem is not None:
        return await abort(run, problem, gave=True, setup=setup)
    got_item = await run.expect(("item",))
    if got_item is None:
        return await abort(run, "the originator's item did not arrive", gave=True, setup=setup)
    try:
        theirs = content_from_json(got_item[1].get("item"), "the originator's item")
        run.record_item("offered", theirs)
        kept = await run.blocking(party.managers.check, theirs, proposal.desc_o, proposal.binding,
                                  proposal.binding.originator)
    except TransferError as e:
        run.record("peer-fault", {"reason": str(e)})
        return await abort(run, f"the originator's item is not valid ({e})", gave=True, setup=setup)
    run.record_item("received", kept)
    return await _finish(run, setup, kept, item)
