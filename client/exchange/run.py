"""One run of a protocol for one party: sending through the party's outbox, bounded waits, evidence, T calls.

Every protocol module (``genver``, ``revrev``, ``plain``) speaks through a :class:`Run`, so the
rules hold everywhere: a message goes out only through :meth:`Run.send` (past the party's
:class:`Outbox`, and counted), every wait is bounded by the party's step timeout, everything that
commits anyone is archived under the exchange id before the next step, and the third party is
called only through :meth:`Run.ttp`, which checks the signed answer before anything relies on it.
"""
from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..transfer.binding import Binding
from ..transfer.errors import TransferError
from ..transfer.items import Content, b64d
from .errors import BadMessage, TtpUnavailable
from .messages import Decision, Proposal, check_decision, request_body
from .outcome import Outcome
from .wire import send_message, ttp_call

if TYPE_CHECKING:
    from .party import Party

T = TypeVar("T")


class Outbox:
    """The last step of everything a party sends: each protocol message (by its kind) and each request
    to the third party (kind ``"ttp"``, the unsigned request body) passes :meth:`release` just before
    it leaves, and what it returns is what is sent (and signed, for the third party).

    Why a seam here: the protocols stay one code path, while a party program with its own conduct
    (a throttled sender, an operator's pause switch, the misbehaving parties of ``chaos/``) replaces
    this object (``Party(outbox=...)`` or ``party.outbox``) instead of the protocols. Raising
    :class:`~.errors.PartyStopped` ends the run as ``stopped``. This one, every party's default,
    sends everything as it is.
    """

    async def release(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return body


class Run:
    def __init__(self, party: Party, session: str, role: str, peer_url: str) -> None:
        self.party = party
        self.session = session
        self.role = role
        self.peer_url = peer_url
        self.inbox = party.mailbox.queue(session)
        self.binding: Binding | None = None
        self.proposal: Proposal | None = None
        self.messages_sent = 0
        self.ttp_requests = 0
        self.decision: Decision | None = None

    # ---- helpers ---------------------------------------------------------------------------------
    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Device and card work off the event loop (a signature must not stall the other runs)."""
        return await asyncio.to_thread(fn, *args)

    def outcome(self, status: str, reason: str = "", **kw: Any) -> Outcome:
        return Outcome(self.session, self.role, status, reason, xid=self.binding.xid if self.binding else None,
                       protocol=self.binding.protocol if self.binding else None, messages_sent=self.messages_sent,
                       ttp_requests=self.ttp_requests, decision=self.decision.der if self.decision else None, **kw)

    # ---- messages --------------------------------------------------------------------------------
    async def send(self, kind: str, body: dict[str, Any]) -> None:
        """Send one message; a PeerUnreachable is left to the protocol (it then waits or goes to T)."""
        body = await self.party.outbox.release(kind, body)
        self.messages_sent += 1
        self.party.counters["messages"] += 1
        await send_message(self.party.poster, self.peer_url, self.session, kind, body)

    async def expect(self, kinds: tuple[str, ...], timeout: float | None = None) -> tuple[str, dict[str, Any]] | None:
        """The next message of one of ``kinds`` (others are dropped as out of protocol), or None after
        the step timeout: the peer is slow, stopped or gone — the protocol decides what that means."""
        if timeout is None:
            timeout = self.party.waits.get(kinds[0], self.party.step_timeout)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return None
            try:
                kind, body = await asyncio.wait_for(self.inbox.get(), left)
            except TimeoutError:
                return None
            if kind in kinds:
                return kind, body

    # ---- evidence --------------------------------------------------------------------------------
    def record(self, kind: str, obj: Mapping[str, Any]) -> None:
        assert self.binding is not None
        self.party.archive.append(self.binding.xid, kind, json.dumps(obj, sort_keys=True).encode())

    def record_statement(self, der: bytes) -> None:
        assert self.binding is not None
        self.party.archive.append_statement(self.binding.xid, der)

    def state(self, step: str, **extra: Any) -> None:
        """The party's own progress marker: what recovery after a crash resumes from."""
        assert self.binding is not None
        self.record("state", {"role": self.role, "protocol": self.binding.protocol, "step": step,
                              "session": self.session, "peer": self.peer_url, **extra})

    def record_item(self, direction: str, content: Content) -> None:
        self.record(f"item:{direction}", {"role": self.role, "item": content.to_json()})

    # ---- the third party -------------------------------------------------------------------------
    async def ttp(self, kind: str, **extra: Any) -> Decision:
        """Ask the third party; the signed answer is checked and archived. TtpUnavailable when it
        cannot be asked (the party stays pending and asks again later)."""
        assert self.binding is not None and self.proposal is not None
        body = await self.party.outbox.release("ttp", request_body(kind, self.proposal, self.binding.xid, **extra))
        info = self.party.ttp
        if info is None or self.binding.ttp is None:
            raise TtpUnavailable("this exchange has no third party")
        request = await self.blocking(self.party.identity.sign, body)
        self.record_statement(request)
        self.ttp_requests += 1
        self.party.counters["ttp_requests"] += 1
        answer = await ttp_call(self.party.poster, info.url, f"/{kind}",
                                {"request": base64.b64encode(request).decode()})
        try:
            der = b64d(answer.get("answer"), "answer")
        except TransferError as e:
            raise TtpUnavailable(f"the third party's answer is unreadable: {e}") from None
        try:
            decision = await self.blocking(check_decision, der, self.party.trust, self.binding, None)
        except BadMessage as e:
            raise TtpUnavailable(f"the third party's answer does not verify: {e}") from None
        self.record_statement(der)
        self.decision = decision
        return decision
