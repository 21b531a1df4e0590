"""plain: two transfers, no fairness asked for and no third party.

::

    O -> R   propose: signed by O (xid, both descriptions), with O's item
             (and O's origin statement when non-repudiation of origin is asked)
    R -> O   accept: signed by R, with R's item
             (and R's receipt for O's item when non-repudiation of receipt is asked)

The signed proposal and acceptance make the agreement evidence even without a third party. After
each transfer the receiver decides locally (paper §2.2): satisfied, or it keeps its evidence and
refuses to go on — a dispute for the judge; the third party has no power over plain transfers.
"""
from __future__ import annotations

import base64

from ..transfer.attributes import (
    check_nr_statement,
    origin_statement,
    receipt_statement,
)
from ..transfer.errors import TransferError
from ..transfer.items import b64d, content_from_json
from ..transfer.managers import offer_make
from .errors import BadMessage, PeerUnreachable
from .messages import check_accept
from .outcome import Outcome
from .run import Run
from .steps import Setup, receive_proposal, refuse, send_proposal, sign_accept


async def originator(run: Run, setup: Setup) -> Outcome:
    party = run.party
    b = setup.binding
    assert b is not None and setup.desc_r is not None
    run.binding = b
    mine = await run.blocking(offer_make, setup.offer, setup.desc_o, b)
    attachments = {}
    if setup.attributes.non_repudiation_of_origin:
        der = await run.blocking(origin_statement, party.identity.sign, b.xid, mine, setup.desc_o, b.responder)
        attachments["origin"] = {"statement": base64.b64encode(der).decode()}
    try:
        proposal = await send_proposal(run, setup, {}, attachments, mine.to_json())
    except PeerUnreachable as e:
        run.state("done", outcome="failed")
        return run.outcome("failed", f"the responder did not take the transfer ({e}); it may or may not have "
                                     "arrived (plain transfers: no fairness was agreed)", gave=True)
    run.record_item("sent", mine)
    got = await run.expect(("accept", "refuse"))
    if got is None or got[0] == "refuse":
        why = "the responder's item did not arrive" if got is None else f"the responder refused: {got[1].get('reason')}"
        run.state("done", outcome="failed")
        return run.outcome("failed", why + " (plain transfers: no fairness was agreed)", gave=True)
    body = got[1]
    try:
        accept = b64d(body.get("accept"), "accept")
        await run.blocking(check_accept, accept, proposal, party.trust)
        run.record_statement(accept)
        theirs = content_from_json(body.get("item"), "the responder's item")
        run.record_item("offered", theirs)
        kept = await run.blocking(party.managers.check, theirs, proposal.desc_r, b, b.responder)
        if setup.attributes.non_repudiation_of_receipt:
            receipt = b64d(body.get("receipt"), "receipt")
            await run.blocking(check_nr_statement, receipt, party.trust, "receipt", b.xid, mine, setup.desc_o,
                               b.responder)
            run.record_statement(receipt)
    except (TransferError, BadMessage) as e:
        run.record("peer-fault", {"reason": str(e)})
        run.state("done", outcome="failed")
        return run.outcome("failed", f"the responder's answer is not valid ({e}); plain transfers: the evidence is "
                                     "for the judge", gave=True)
    run.record_item("received", kept)
    await run.blocking(party.managers.accept, kept, proposal.desc_r)
    run.state("done", outcome="completed")
    return run.outcome("completed", "both transfers done", received=kept, gave=True)


async def responder(run: Run, setup: Setup) -> Outcome:
    party = run.party
    got = await receive_proposal(run, setup, "plain")
    if isinstance(got, Outcome):
        return got
    proposal, attachments, body = got
    b = proposal.binding
    try:
        theirs = content_from_json(body.get("item"), "the originator's item")
        run.record_item("offered", theirs)
        kept = await run.blocking(party.managers.check, theirs, proposal.desc_o, b, b.originator)
        if setup.attributes.non_repudiation_of_origin:
            origin = b64d((attachments.get("origin") or {}).get("statement"), "origin")
            await run.blocking(check_nr_statement, origin, party.trust, "origin", b.xid, theirs, setup.desc_o,
                               b.originator)
            run.record_statement(origin)
    except (TransferError, BadMessage) as e:
        run.record("peer-fault", {"reason": str(e)})
        run.state("done", outcome="failed")
        await refuse(run, f"the transfer was refused: {e}")
        return run.outcome("failed", f"the originator's item is not valid ({e}); this party's item was kept back")
    run.record_item("received", kept)
    await run.blocking(party.managers.accept, kept, proposal.desc_o)
    accept = await sign_accept(run, proposal)
    mine = await run.blocking(offer_make, setup.offer, proposal.desc_r, b)
    reply = {"accept": base64.b64encode(accept).decode(), "item": mine.to_json()}
    if setup.attributes.non_repudiation_of_receipt:
        der = await run.blocking(receipt_statement, party.identity.sign, b.xid, kept, setup.desc_o, b.originator)
        run.record_statement(der)
        reply["receipt"] = base64.b64encode(der).decode()
    run.record_item("sent", mine)
    run.state("done", outcome="completed")
    try:
        await run.send("accept", reply)
    except PeerUnreachable:
        pass
    return run.outcome("completed", "both transfers done", received=kept, gave=True)
