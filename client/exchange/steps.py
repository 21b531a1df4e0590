"""Steps the protocols share: making and checking the proposal, and the responder's acceptance."""
from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ..transfer.attributes import SecurityAttributes
from ..transfer.binding import Binding
from ..transfer.errors import TransferError
from ..transfer.items import Expectation
from ..transfer.managers import OfferTree, offer_accept
from ..transfer.statements import same_key
from .errors import BadMessage
from .messages import Proposal, accept_body, exchange_id
from .outcome import Outcome
from .run import Run


@dataclass
class Setup:
    """What negotiation fixed for one run."""

    protocol: str
    offer: OfferTree                 # this party's item (or package)
    desc_o: Expectation              # the originator's item, as the originator describes it
    desc_r: Expectation | None       # the responder's item, completed by the originator (None until proposed)
    nonces: tuple[str, str]
    attributes: SecurityAttributes
    parties: tuple[x509.Certificate, x509.Certificate, x509.Certificate | None]   # originator, responder, T
    binding: Binding | None = None

    def bind(self) -> Binding:
        """The binding (and so the exchange id) once both descriptions are known."""
        assert self.desc_r is not None
        o, r, t = self.parties
        xid = exchange_id(self.protocol, o, r, t, self.desc_o, self.desc_r, *self.nonces)
        self.binding = Binding(xid, self.protocol, o, r, t)
        return self.binding


async def send_proposal(run: Run, setup: Setup, commitments: Mapping[str, Any],
                        attachments: Mapping[str, Any], item: Mapping[str, Any] | None = None) -> Proposal:
    """Originator: sign the proposal, keep it (and what goes beside it) as evidence, send it (with the
    originator's item when the protocol sends it first: plain)."""
    assert setup.binding is not None and setup.desc_r is not None
    body = Proposal.body_for(setup.binding, setup.desc_o, setup.desc_r, setup.nonces, commitments)
    der = await run.blocking(run.party.identity.sign, body)
    proposal = Proposal(der, body, setup.binding, setup.desc_o, setup.desc_r, commitments)
    run.binding, run.proposal = setup.binding, proposal
    run.record_statement(der)
    if attachments:
        run.record("attachments", {"attachments": dict(attachments)})
    run.state("proposed")
    body = {"proposal": base64.b64encode(der).decode(), "attachments": dict(attachments)}
    if item is not None:
        body["item"] = dict(item)
    await run.send("propose", body)
    return proposal


async def receive_proposal(run: Run, setup: Setup, protocol: str
                           ) -> tuple[Proposal, dict[str, Any], dict[str, Any]] | Outcome:
    """Responder: wait for the proposal and check it against what was negotiated; refuse otherwise."""
    got = await run.expect(("propose",))
    if got is None:
        return run.outcome("no-exchange", "the originator sent no proposal (it stopped or is slow); "
                                          "nothing was given")
    _kind, body = got
    party = run.party
    try:
        der = base64.b64decode(str(body.get("proposal", "")), validate=True)
        proposal = await run.blocking(Proposal.verify, der, party.trust)
        b = proposal.binding
        if not same_key(b.responder, party.identity.certificate):
            raise BadMessage("the proposal names another responder")
        if proposal.protocol != protocol or tuple(proposal.body["nonces"]) != setup.nonces:
            raise BadMessage("the proposal is not for the negotiated protocol and nonces (replayed or altered)")
        if proposal.desc_o.to_json() != setup.desc_o.to_json():
            raise BadMessage("the proposal describes another originator item than the one negotiated")
        if protocol != "plain" and (party.ttp is None or b.ttp is None or not same_key(b.ttp, party.ttp.certificate)):
            raise BadMessage("the proposal names a third party this party does not use")
        await run.blocking(offer_accept, setup.offer, proposal.desc_r)
        attachments = body.get("attachments") or {}
        if not isinstance(attachments, dict):
            raise BadMessage("the attachments must be a JSON object")
        if protocol == "gen-ver":
            await run.blocking(party.managers.check_commitments, proposal.commitments, attachments, proposal.desc_o, b)
    except (BadMessage, TransferError, ValueError) as e:
        reason = f"the proposal was refused: {e}"
        await refuse(run, reason)
        return run.outcome("no-exchange", reason + "; nothing was given")
    setup.binding, setup.desc_r = proposal.binding, proposal.desc_r
    run.binding, run.proposal = proposal.binding, proposal
    run.record_statement(proposal.der)
    if attachments:
        run.record("attachments", {"attachments": attachments})
    run.state("proposed")
    return proposal, attachments, body


async def sign_accept(run: Run, proposal: Proposal) -> bytes:
    der = await run.blocking(run.party.identity.sign, accept_body(proposal))
    run.record_statement(der)
    return der


async def refuse(run: Run, reason: str) -> None:
    from .errors import PeerUnreachable
    try:
        await run.send("refuse", {"reason": reason[:2000]})
    except PeerUnreachable:
        pass


@dataclass(frozen=True)
class Accepted:
    """What the originator got back after its proposal: one of the three fields is set."""

    kept: Any = None                   # the responder's item, checked against its description
    outcome: Outcome | None = None     # the responder refused: the exchange ended here
    problem: str | None = None         # nothing came, or it was not valid: the protocol goes to T


async def take_acceptance(run: Run, proposal: Proposal) -> Accepted:
    """Wait for the responder's signed acceptance and item (gen-ver and rev-rev share this step)."""
    from ..transfer.items import content_from_json
    from .messages import check_accept
    party = run.party
    got = await run.expect(("accept", "refuse"))
    if got is None:
        return Accepted(problem="the responder's acceptance and item did not arrive")
    kind, body = got
    if kind == "refuse":
        run.record("peer-refused", {"reason": str(body.get("reason", ""))[:2000]})
        run.state("done", outcome="no-exchange")
        return Accepted(outcome=run.outcome("no-exchange", f"the responder refused: {body.get('reason', '')}"))
    try:
        accept = base64.b64decode(str(body.get("accept", "")), validate=True)
        await run.blocking(check_accept, accept, proposal, party.trust)
        run.record_statement(accept)
        item = content_from_json(body.get("item"), "the responder's item")
        run.record_item("offered", item)
        kept = await run.blocking(party.managers.check, item, proposal.desc_r, proposal.binding,
                                  proposal.binding.responder)
    except (BadMessage, TransferError, ValueError) as e:
        run.record("peer-fault", {"reason": str(e)})
        return Accepted(problem=f"the responder's acceptance or item is not valid ({e})")
    run.record_item("received", kept)
    return Accepted(kept=kept)


async def send_acceptance(run: Run, setup: Setup, proposal: Proposal) -> tuple[Any, str | None]:
    """The responder's move (gen-ver and rev-rev): sign the acceptance, make its item, send both.

    Returns the item sent and, when the originator could not be reached, why (the protocol then
    goes to T: the item may have arrived)."""
    from ..transfer.managers import offer_make
    from .errors import PeerUnreachable
    accept = await sign_accept(run, proposal)
    item = await run.blocking(offer_make, setup.offer, proposal.desc_r, proposal.binding)
    run.record_item("sent", item)
    run.state("released")
    try:
        await run.send("accept", {"accept": base64.b64encode(accept).decode(), "item": item.to_json()})
    except PeerUnreachable as e:
        return item, f"the originator did not take the acceptance ({e})"
    return item, None
