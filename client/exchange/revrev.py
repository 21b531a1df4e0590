"""rev-rev: two revocable items; the third party can undo both transfers.

::

    O -> R   propose: signed by O; xid; both descriptions (both items revocable by T for this xid)
    R -> O   accept: signed by R; and R's item, bound to xid and revocable by T
    O -> R   O's item, bound to xid and revocable by T, only if R's item checked

A party missing the peer's item (or holding a wrong one) asks T to *abort*: T decides ``revoked``
once, and both transfers of the exchange are void — whoever complained, the start is restored.
"""
from __future__ import annotations

from ..transfer.errors import TransferError
from ..transfer.items import content_from_json
from ..transfer.managers import offer_make
from .errors import PeerUnreachable, TtpUnavailable
from .outcome import Outcome
from .run import Run
from .steps import Setup, receive_proposal, send_acceptance, send_proposal, take_acceptance


async def abort(run: Run, why: str, gave: bool) -> Outcome:
    try:
        decision = await run.ttp("abort")
    except TtpUnavailable as e:
        return run.outcome("pending", f"{why}; the third party could not be asked yet ({e}); ask again "
                                      "(Party.recover)", gave=gave)
    if decision.outcome == "revoked":
        run.state("done", outcome="revoked")
        return run.outcome("revoked", f"{why}; the third party revoked both transfers", gave=gave)
    return run.outcome("refused", f"{why}; the third party refused to abort: {decision.reason}", gave=gave)


async def originator(run: Run, setup: Setup) -> Outcome:
    try:
        proposal = await send_proposal(run, setup, {}, {})
    except PeerUnreachable as e:
        return await abort(run, f"the responder did not take the proposal ({e})", gave=False)
    got = await take_acceptance(run, proposal)
    if got.outcome is not None:
        return got.outcome
    if got.problem is not None:
        return await abort(run, got.problem, gave=False)
    kept = got.kept
    mine = await run.blocking(offer_make, setup.offer, setup.desc_o, proposal.binding)
    run.record_item("sent", mine)
    run.state("done", outcome="completed")
    try:
        await run.send("item", {"item": mine.to_json()})
    except PeerUnreachable:
        pass                               # R will abort: both revoked, still fair
    return run.outcome("completed", "both items exchanged (each revocable by the third party until then)",
                       received=kept, gave=True)


async def responder(run: Run, setup: Setup) -> Outcome:
    party = run.party
    got = await receive_proposal(run, setup, "rev-rev")
    if isinstance(got, Outcome):
        return got
    proposal, _attachments, _body = got
    item, problem = await send_acceptance(run, setup, proposal)
    if problem is not None:
        return await abort(run, problem, gave=True)
    got_item = await run.expect(("item",))
    if got_item is None:
        return await abort(run, "the originator's item did not arrive", gave=True)
    try:
        theirs = content_from_json(got_item[1].get("item"), "the originator's item")
        run.record_item("offered", theirs)
        kept = await run.blocking(party.managers.check, theirs, proposal.desc_o, proposal.binding,
                                  proposal.binding.originator)
    except TransferError as e:
        run.record("peer-fault", {"reason": str(e)})
        return await abort(run, f"the originator's item is not valid ({e})", gave=True)
    run.record_item("received", kept)
    run.state("done", outcome="completed")
    return run.outcome("completed", "both items exchanged", received=kept, gave=True)
