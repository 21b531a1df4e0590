"""plain: two transfers, no fairness asked for and no third party.

::

    O -> R   O's item (with O's origin statement when non-repudiation of origin is asked)
    R -> O   R's item (with R's receipt for O's item when non-repudiation of receipt is asked)

After each transfer the receiver decides locally (paper §2.2): satisfied, or it keeps its evidence
and refuses to go on (a dispute for the judge; the third party has no power over plain transfers).
"""
from __future__ import annotations

import base64

from ..transfer.attributes import check_nr_statement, origin_statement, receipt_statement
from ..transfer.errors import TransferError
from ..transfer.items import b64d, content_from_json
from ..transfer.managers import offer_make
from .errors import BadMessage, PeerUnreachable
from .outcome import Outcome
from .run import Run
from .steps import Setup, refuse


async def originator(run: Run, setup: Setup) -> Outcome:
    party = run.party
    b = setup.binding
    assert b is not None and setup.desc_r is not None
    run.binding = b
    mine = await run.blocking(offer_make, setup.offer, setup.desc_o, b)
    body = {"item": mine.to_json(), "responder_item": setup.desc_r.to_json()}
    if setup.attributes.non_repudiation_of_origin:
        der = await run.blocking(origin_statement, party.identity.sign, b.xid, mine, setup.desc_o, b.responder)
        run.record_statement(der)
        body["origin"] = base64.b64encode(der).decode()
    run.record_item("sent", mine)
    run.state("released")
    try:
        await run.send("transfer", body)
    except PeerUnreachable as e:
        run.state("done", outcome="failed")
        return run.outcome("failed", f"the responder did not take the transfer ({e})")
    got = await run.expect(("transfer", "refuse"))
    if got is None or got[0] == "refuse":
        why = "the responder's item did not arrive" if got is None else f"the responder refused: {got[1].get('reason')}"
        run.state("done", outcome="failed")
        return run.outcome("failed", why + " (plain transfers: no fairness was agreed)", gave=True)
    try:
        theirs = content_from_json(got[1].get("item"), "the responder's item")
        run.record_item("offered", theirs)
        kept = await run.blocking(party.managers.check, theirs, setup.desc_r, b, b.responder)
        if setup.attributes.non_repudiation_of_receipt:
            receipt = b64d(got[1].get("receipt"), "receipt")
            await run.blocking(check_nr_statement, receipt, party.trust, "receipt", b.xid, mine, setup.desc_o,
                               b.responder)
            run.record_statement(receipt)
    except (TransferError, BadMessage) as e:
        run.record("peer-fault", {"reason": str(e)})
        run.state("done", outcome="failed")
        return run.outcome("failed", f"the responder's item is not valid ({e})", gave=True)
    run.record_item("received", kept)
    await run.blocking(party.managers.accept, kept, setup.desc_r)
    run.state("done", outcome="completed")
    return run.outcome("completed", "both transfers done", received=kept, gave=True)


async def responder(run: Run, setup: Setup) -> Outcome:
    party = run.party
    got = await run.expect(("transfer",))
    if got is None:
        return run.outcome("no-exchange", "the originator's transfer did not arrive; nothing was given")
    body = got[1]
    try:
        from ..transfer.items import expectation_from_json
        desc_r = expectation_from_json(body.get("responder_item"), "responder_item")
        await run.blocking(_accept, setup, desc_r)
        setup.desc_r = desc_r
        b = setup.bind()
        run.binding = b
        theirs = content_from_json(body.get("item"), "the originator's item")
        run.record_item("offered", theirs)
        kept = await run.blocking(party.managers.check, theirs, setup.desc_o, b, b.originator)
        if setup.attributes.non_repudiation_of_origin:
            origin = b64d(body.get("origin"), "origin")
            await run.blocking(check_nr_statement, origin, party.trust, "origin", b.xid, theirs, setup.desc_o,
                               b.originator)
            run.record_statement(origin)
    except (TransferError, BadMessage) as e:
        if run.binding is not None:
            run.record("peer-fault", {"reason": str(e)})
            run.state("done", outcome="failed")
        await refuse(run, f"the transfer was refused: {e}")
        return run.outcome("failed", f"the originator's item is not valid ({e}); this party's item was kept back")
    run.record_item("received", kept)
    await run.blocking(party.managers.accept, kept, setup.desc_o)
    mine = await run.blocking(offer_make, setup.offer, desc_r, b)
    reply = {"item": mine.to_json()}
    if setup.attributes.non_repudiation_of_receipt:
        der = await run.blocking(receipt_statement, party.identity.sign, b.xid, kept, setup.desc_o, b.originator)
        run.record_statement(der)
        reply["receipt"] = base64.b64encode(der).decode()
    run.record_item("sent", mine)
    run.state("done", outcome="completed")
    try:
        await run.send("transfer", reply)
    except PeerUnreachable:
        pass
    return run.outcome("completed", "both transfers done", received=kept, gave=True)


def _accept(setup: Setup, desc_r: object) -> None:
    from ..transfer.managers import offer_accept
    offer_accept(setup.offer, desc_r)  # type: ignore[arg-type]


