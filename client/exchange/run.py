"""One run of a protocol for one party: sending with faults applied, bounded waits, evidence, T calls.

Every protocol module (``genver``, ``revrev``, ``plain``) speaks through a :class:`Run`, so the
rules hold everywhere: a message goes out only through :meth:`Run.send` (where test faults apply
and messages are counted), every wait is bounded by the party's step timeout, everything that
commits anyone is archived under the exchange id before the next step, and the third party is
called only through :meth:`Run.ttp`, which checks the signed answer before anything relies on it.
"""
from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..transfer.binding import Binding
from ..transfer.errors import TransferError
from ..transfer.items import Content, b64d
from .errors import BadMessage, PartyStopped, TtpUnavailable
from .messages import Decision, Proposal, check_decision, request_body
from .outcome import Outcome
from .wire import send_message, ttp_call

if TYPE_CHECKING:
    from .party import Party

T = TypeVar("T")
Tamper = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Faults:
    """Test faults for a party: stop before sending a message kind (``"ttp"``: before going to the
    third party; ``"*"``: at the first chance), or alter a message body before it is sent."""

    stop_before: str | None = None
    tamper: dict[str, Tamper] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)     # seconds to wait before sending a kind

    def stops_at(self, kind: str) -> bool:
        return self.stop_before in (kind, "*")


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
        faults = self.party.faults
        if faults.stops_at(kind):
            raise PartyStopped(f"{self.party.name} stops before sending {kind}")
        if kind in faults.delays:
            await asyncio.sleep(faults.delays[kind])
        if kind in faults.tamper:
            body = faults.tamper[kind](json.loads(json.dumps(body)))
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
        if self.party.faults.stops_at("ttp"):
            raise PartyStopped(f"{self.party.name} stops before going to the third party")
        assert self.binding is not None and self.proposal is not None
        info = self.party.ttp
        if info is None or self.binding.ttp is None:
            raise TtpUnavailable("this exchange has no third party")
        request = await self.blocking(self.party.identity.sign,
                                      request_body(kind, self.proposal, self.binding.xid, **extra))
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
