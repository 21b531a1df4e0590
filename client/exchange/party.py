"""A party of the exchange layer: its exchange service, its exchange manager, its evidence, recovery.

A :class:`Party` is a server (its mailbox on HTTPS) and a client (it sends to its peers' mailboxes
and to the third party). It *originates* an exchange when its application asks
(:meth:`Party.originate`), and *responds* when a peer's negotiation matches one of its
:class:`ResponsePlan` s. Negotiation (the first round trip) settles the protocol from the items'
properties (``negotiation.choose_protocol``), the nonces and, for payments, the payer's data the
payee needs for its request; then ``genver``, ``revrev`` or ``plain`` runs.

Everything that commits anyone goes into the party's evidence archive under the exchange id, with
progress markers, so that after a crash :meth:`Party.recover` finishes every open exchange by
going to the third party — the party never needs the peer again to end fairly.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..support.archive import Archive
from ..support.channels import AsyncJsonClient, server_context
from ..support.trust import TrustStore
from ..transfer.attributes import SecurityAttributes, check_attributes
from ..transfer.errors import TransferError
from ..transfer.items import (
    Expectation,
    content_from_json,
    expectation_from_json,
)
from ..transfer.managers import (
    Managers,
    OfferTree,
    check_satisfies,
    offer_accept,
    offer_description,
    offer_hints,
)
from ..transfer.statements import same_key
from . import genver, plain, revrev
from .errors import (
    BadMessage,
    ExchangeError,
    NoFairProtocol,
    PartyStopped,
    PeerUnreachable,
)
from .identity import Identity, TtpInfo
from .messages import Proposal, cert_b64, check_party_cert, load_cert
from .negotiation import choose_protocol
from .outcome import Outcome
from .run import Outbox, Run
from .steps import Setup, refuse
from .wire import SEND_TIMEOUT, Mailbox, Server

log = logging.getLogger("semper.exchange")
PROTOCOL_MODULES = {"gen-ver": genver, "rev-rev": revrev, "plain": plain}


@dataclass
class ResponsePlan:
    """What a responder will exchange: it expects ``expect`` of the originator and gives ``offer``."""

    expect: Expectation
    offer: OfferTree
    fair: bool | None = None          # None: as the originator asks; True: refuse plain transfers
    once: bool = True
    originator: Any = None            # an x509.Certificate: only this originator (None: any certified one)


class Party:
    def __init__(self, name: str, identity: Identity, trust: TrustStore, managers: Managers, archive: Path, *,
                 tls: tuple[Path, Path], root_pem: str, ttp: TtpInfo | None = None, step_timeout: float = 10.0,
                 host: str = "127.0.0.1", port: int = 0, outbox: Outbox | None = None) -> None:
        self.name = name
        self.identity = identity
        self.trust = trust
        self.managers = managers
        self.ttp = ttp
        self.step_timeout = step_timeout
        self.waits: dict[str, float] = {}      # per awaited message kind, overriding step_timeout
        Path(archive).parent.mkdir(parents=True, exist_ok=True)
        self.archive = Archive.open(archive, create=True, sign=identity.sign)
        self.mailbox = Mailbox(self._on_new)
        self.server = Server(self.mailbox.app(), server_context(*tls), host, port)
        self.poster = AsyncJsonClient(None, root_pem, timeout=SEND_TIMEOUT)
        self.plans: list[ResponsePlan] = []
        self.outbox = outbox if outbox is not None else Outbox()     # all it sends passes here last
        self.outcomes: dict[str, Outcome] = {}
        self.counters = {"messages": 0, "ttp_requests": 0}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seen: set[str] = set()
        self._changed: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> Party:
        self._changed = asyncio.Event()
        await self.server.start()
        return self

    async def stop(self) -> None:
        """Stop serving and abandon every run in flight (a crash, as far as peers can tell)."""
        await self.server.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.poster.close()

    def close(self) -> None:
        self.archive.close()

    # ---- outcomes ----------------------------------------------------------------------------------
    def _finish(self, outcome: Outcome) -> Outcome:
        self.outcomes[outcome.session] = outcome
        if self._changed is not None:
            self._changed.set()
        return outcome

    async def wait_outcome(self, session: str, timeout: float = 30.0) -> Outcome:
        """The outcome of a run this party responded to (bounded wait)."""
        async def wait() -> Outcome:
            while session not in self.outcomes:
                assert self._changed is not None
                self._changed.clear()
                await self._changed.wait()
            return self.outcomes[session]
        return await asyncio.wait_for(wait(), timeout)

    async def _guarded(self, run: Run, body: Any) -> Outcome:
        try:
            outcome = await body
        except PartyStopped as e:
            outcome = run.outcome("stopped", str(e))
        except (ExchangeError, TransferError) as e:
            outcome = run.outcome("failed", f"{type(e).__name__}: {e}")
        except Exception as e:                         # a bug: keep the party alive, say what happened
            log.exception("%s: run %s failed", self.name, run.session)
            outcome = run.outcome("failed", f"unexpected {type(e).__name__}: {e}")
        finally:
            self.mailbox.close(run.session)
            self._seen.add(run.session)
        return self._finish(outcome)

    def knows(self, session: str) -> bool:
        """Whether this party ever ran (or runs) the exchange under ``session``."""
        return session in self._seen or session in self.mailbox.queues

    # ---- originating ------------------------------------------------------------------------------
    async def originate(self, peer_url: str, offer: OfferTree, want: Expectation, *, fair: bool = True,
                        attributes: SecurityAttributes | None = None, responder: Any = None,
                        session: str | None = None) -> Outcome:
        """Exchange ``offer`` for an item described by ``want`` with the party at ``peer_url`` (and, given
        ``responder``, an x509.Certificate, only if that party's key answers: the one the user confirmed).
        ``session``: the run's id, when the application records it beforehand to recover the run after a
        crash (:meth:`recover` with ``sessions``); a fresh one by default."""
        attributes = attributes or SecurityAttributes()
        session = session or secrets.token_hex(16)
        run = Run(self, session, "originator", peer_url)
        return await self._guarded(run, self._originate(run, offer, want, fair, attributes, responder))

    async def _originate(self, run: Run, offer: OfferTree, want: Expectation, fair: bool,
                         attributes: SecurityAttributes, expected: Any = None) -> Outcome:
        desc_o = offer_description(offer)
        self.managers.check_expectation(desc_o)
        self.managers.check_expectation(want)
        check_attributes(attributes, desc_o, self.managers.properties)
        check_attributes(attributes, want, self.managers.properties)
        protocol = choose_protocol(self.managers.properties(desc_o), self.managers.properties(want), fair)
        ttp = self.ttp if protocol != "plain" else None
        if protocol != "plain" and ttp is None:
            raise NoFairProtocol(f"a {protocol} exchange needs a third party; configure one")
        nonce_o = secrets.token_hex(16)
        # what the receiver of this party's item needs to describe it fully (a payer's hint for the payee's
        # request: this party pays in the exchange)
        hints_o = await run.blocking(offer_hints, offer)
        try:
            await run.send("negotiate", {
                "originator": cert_b64(self.identity.certificate), "ttp": cert_b64(ttp.certificate) if ttp else None,
                "offer": desc_o.to_json(), "want": want.to_json(), "fair": fair, "nonce": nonce_o,
                "reply_to": self.url, "attributes": attributes.as_dict(), "offer_hints": hints_o})
        except PeerUnreachable as e:
            return run.outcome("no-exchange", f"the peer did not take the negotiation ({e}); nothing was given")
        got = await run.expect(("negotiated", "refuse"))
        if got is None:
            return run.outcome("no-exchange", "the peer did not answer the negotiation; nothing was given")
        kind, body = got
        if kind == "refuse":
            return run.outcome("no-exchange", f"the peer refused: {body.get('reason', '')}")
        try:
            responder = load_cert(body.get("responder"), "responder")
            await run.blocking(check_party_cert, responder, self.trust, "responder")
            if expected is not None and not same_key(responder, expected):
                raise BadMessage("the party that answered is not the one you chose to exchange with")
            nonce_r = body.get("nonce")
            if body.get("protocol") != protocol:
                raise BadMessage(f"the peer chose {body.get('protocol')!r}, but these items call for {protocol}")
            if not isinstance(nonce_r, str) or not 16 <= len(nonce_r) <= 64:
                raise BadMessage("the peer's nonce is missing or malformed")
            hints = body.get("hints") or {}
            if not isinstance(hints, Mapping):
                raise BadMessage("the peer's hints must be a JSON object")
            desc_r = await run.blocking(self.managers.complete, want, hints)
            if body.get("offer") is not None:        # the peer receives a payment from this party: its request
                desc_o = await run.blocking(_completed_offer, offer, desc_o, body["offer"])
        except (BadMessage, TransferError) as e:
            await refuse(run, f"the negotiation was refused: {e}")
            return run.outcome("no-exchange", f"the peer's negotiation answer is not acceptable ({e}); nothing was "
                                              "given")
        setup = Setup(protocol, offer, desc_o, desc_r, (nonce_o, nonce_r), attributes,
                      (self.identity.certificate, responder, ttp.certificate if ttp else None))
        setup.bind()
        return await PROTOCOL_MODULES[protocol].originator(run, setup)

    # ---- responding -------------------------------------------------------------------------------
    async def _on_new(self, session: str, kind: str, body: dict[str, Any]) -> None:
        peer = body.get("reply_to")
        try:
            parts = urlsplit(peer) if isinstance(peer, str) else None
            host = parts.hostname if parts is not None else None
        except ValueError:                                     # e.g. "https://[": not a URL at all
            parts, host = None, None
        if parts is None or parts.scheme != "https" or not host:
            self.mailbox.close(session)                        # nobody to answer: drop it, and keep nothing
            return
        run = Run(self, session, "responder", str(peer))
        task = asyncio.get_running_loop().create_task(self._guarded(run, self._respond(run, body)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _plan_for(self, desc_o: Expectation, want: Expectation, originator: Any = None) -> ResponsePlan:
        reasons = []
        for plan in self.plans:
            if plan.originator is not None and (originator is None or not same_key(originator, plan.originator)):
                reasons.append("this offer is for another party")
                continue
            try:
                check_satisfies(desc_o, plan.expect)
                check_satisfies(offer_description(plan.offer), want)
                return plan
            except TransferError as e:
                reasons.append(str(e))
        raise BadMessage("nothing to exchange for that: " + ("; ".join(reasons) or "this party offers nothing now"))

    async def _respond(self, run: Run, body: dict[str, Any]) -> Outcome:
        try:
            originator = load_cert(body.get("originator"), "originator")
            await run.blocking(check_party_cert, originator, self.trust, "originator")
            ttp_cert = load_cert(body["ttp"], "third party") if body.get("ttp") is not None else None
            desc_o = expectation_from_json(body.get("offer"), "offer")
            want = expectation_from_json(body.get("want"), "want")
            self.managers.check_expectation(desc_o)
            offer_hints_o = body.get("offer_hints") or {}
            if not isinstance(offer_hints_o, Mapping):
                raise BadMessage("the originator's hints must be a JSON object")
            nonce_o, fair = body.get("nonce"), body.get("fair")
            if not isinstance(nonce_o, str) or not 16 <= len(nonce_o) <= 64 or not isinstance(fair, bool):
                raise BadMessage("the negotiation lacks a nonce or the fairness flag")
            attributes = SecurityAttributes.from_dict(body.get("attributes") or {})
            plan = self._plan_for(desc_o, want, originator)
            if plan.fair is True and not fair:
                raise BadMessage("this party exchanges these items only fairly")
            mine = offer_description(plan.offer)
            check_attributes(attributes, mine, self.managers.properties)
            protocol = choose_protocol(self.managers.properties(desc_o), self.managers.properties(mine), fair)
            ttp = self.ttp.certificate if (protocol != "plain" and self.ttp is not None) else None
            if protocol != "plain" and (ttp is None or ttp_cert is None or not same_key(ttp, ttp_cert)):
                raise BadMessage("the originator names a third party this party does not use")
            hints = await run.blocking(offer_hints, plan.offer)
            # this party receives the originator's item: where it is a payment, its request goes in
            completed_o = await run.blocking(self.managers.complete, desc_o, offer_hints_o)
        except (BadMessage, TransferError, NoFairProtocol) as e:
            await refuse(run, str(e))
            return run.outcome("no-exchange", f"the negotiation was refused: {e}")
        if plan.once and plan in self.plans:
            self.plans.remove(plan)
        nonce_r = secrets.token_hex(16)
        setup = Setup(protocol, plan.offer, completed_o, None, (nonce_o, nonce_r), attributes,
                      (originator, self.identity.certificate, ttp))
        answer = {"responder": cert_b64(self.identity.certificate), "nonce": nonce_r, "protocol": protocol,
                  "hints": hints}
        if completed_o.to_json() != desc_o.to_json():
            answer["offer"] = completed_o.to_json()
        try:
            await run.send("negotiated", answer)
        except PeerUnreachable as e:
            return run.outcome("no-exchange", f"the originator went away during negotiation ({e})")
        return await PROTOCOL_MODULES[protocol].responder(run, setup)

    # ---- after a crash ------------------------------------------------------------------------------
    async def recover(self, sessions: set[str] | None = None) -> list[Outcome]:
        """Finish every exchange the archive shows open, by going to the third party where needed.

        ``sessions``: only the runs with these ids (an application with several processes on one
        archive recovers the runs of a process that died, not those another one is running); their
        runs that had ended are reported too, with the outcome they ended with, so the application
        learns the end of a run whose process died before it could tell it."""
        out = []
        for xid, _count in self.archive.deals():
            entries = self.archive.entries(xid)
            states = [json.loads(e.content) for e in entries if e.kind == "state"]
            if not states:
                continue
            last = states[-1]
            if sessions is not None and str(last.get("session")) not in sessions:
                continue
            run = Run(self, str(last["session"]), str(last["role"]), str(last["peer"]))
            if last.get("step") == "done":
                if sessions is not None and run.session not in self.outcomes:
                    self._seen.add(run.session)
                    self.mailbox.close(run.session)
                    out.append(self._finish(Outcome(run.session, run.role, str(last.get("outcome", "failed")),
                                                    "the run had ended before this party restarted", xid=xid,
                                                    protocol=str(last.get("protocol")))))
                else:
                    self.mailbox.close(run.session)
                continue
            out.append(await self._guarded(run, self._resume(run, last, entries)))
        return out

    async def _resume(self, run: Run, last: Mapping[str, Any], entries: list[Any]) -> Outcome:
        proposal_der = next((e.content for e in entries if e.kind == "statement:xchg-proposal"), None)
        if proposal_der is None:
            return run.outcome("failed", "nothing to resume: no proposal was archived")
        proposal = await run.blocking(Proposal.verify, proposal_der, self.trust)
        run.binding, run.proposal = proposal.binding, proposal
        attachments: dict[str, Any] = next(
            (json.loads(e.content)["attachments"] for e in entries if e.kind == "attachments"), {})
        sent = next((content_from_json(json.loads(e.content)["item"]) for e in entries if e.kind == "item:sent"), None)
        received = next((content_from_json(json.loads(e.content)["item"]) for e in entries
                         if e.kind == "item:received"), None)
        why = "resumed after a restart"
        if proposal.protocol == "gen-ver":
            if run.role == "responder":
                if sent is None:
                    run.state("done", outcome="no-exchange")
                    return run.outcome("no-exchange", f"{why}: this party had not paid or given anything")
                return await genver.resolve(run, sent, attachments, why)
            if received is not None:                    # O holds R's item: finish its side
                await run.blocking(self.managers.accept, received, proposal.desc_r)
                run.state("done", outcome="completed")
                return run.outcome("completed", f"{why}: the responder's item had arrived; the responder can "
                                                "resolve with the third party if this party's item did not reach it",
                                   received=received)
            return await genver.originator_status(run, why)
        if proposal.protocol == "rev-rev":
            if sent is not None and received is not None:
                run.state("done", outcome="completed")
                return run.outcome("completed", f"{why}: both items had been exchanged", received=received, gave=True)
            return await revrev.abort(run, why, gave=sent is not None)
        run.state("done", outcome="failed")
        return run.outcome("failed", f"{why}: plain transfers have no third party to finish with")

    # ---- evidence ---------------------------------------------------------------------------------
    def export(self, xid: str, path: Path) -> Path:
        """An evidence bundle of one exchange for the judge (checkpoint signed by this party)."""
        return self.archive.export(xid, path)

    def evidence(self, xid: str) -> list[tuple[str, bytes]]:
        return [(e.kind, e.content) for e in self.archive.entries(xid)]


def _without_requests(e: Expectation) -> Any:
    """A description's JSON with every payment request taken out (what the payer described itself)."""
    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            if obj.get("type") == "package":
                return {**obj, "members": [strip(m) for m in obj.get("members", [])]}
            return {k: v for k, v in obj.items() if k != "request"}
        return obj
    return strip(e.to_json())


def _completed_offer(offer: OfferTree, desc_o: Expectation, raw: Any) -> Expectation:
    """The responder's completion of this party's own description (its payee's request): nothing else may
    change, and the offer must accept the request (the payer refuses another payee, amount or order)."""
    completed = expectation_from_json(raw, "the completed offer")
    if _without_requests(completed) != _without_requests(desc_o):
        raise BadMessage("the peer changed the description of this party's item beyond its payment request")
    offer_accept(offer, completed)
    return completed
