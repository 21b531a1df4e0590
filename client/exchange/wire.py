"""How parties reach each other: JSON messages over HTTPS on their exchange services.

Every party runs an exchange service (aiohttp, TLS with a certificate from the semper CA) whose one
endpoint, ``POST /exchange``, takes a protocol message ``{"session", "kind", "body"}`` and answers
``202`` once it is queued — a transport acknowledgement, never a protocol answer, so a party can
stop after any message and its peer notices only by waiting (bounded) or by a refused connection.
Clients pin the CA root (``client/support/channels.py``'s contexts). Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from aiohttp import web
from msgspec import Meta

from ..support.channels import AsyncJsonClient, ChannelError, TlsError
from ..support.http_service import ApiError, make_app, read_json
from ..support.shapes import Shape
from .errors import PeerUnreachable, TtpUnavailable

MAX_MESSAGE = 16 * 1024 * 1024
MAX_QUEUED = 64                 # messages waiting in one run: a protocol needs a handful
MAX_RUNS = 1024                 # runs open at once: more is a flood, not commerce
SEND_TIMEOUT = 10.0
Kind = Literal["negotiate", "negotiated", "propose", "accept", "item", "refuse"]
KINDS: tuple[str, ...] = get_args(Kind)

Handler = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class Message(Shape, frozen=True):
    """``POST /exchange``: one protocol message of one run (the body is the protocol's to read)."""

    codes = {"kind": "unknown_kind", "session": "bad_session"}
    session: Annotated[str, Meta(min_length=16, max_length=64)]
    kind: Kind
    body: dict[str, Any]


@dataclass
class Mailbox:
    """The receiving end: one bounded queue per open run; ``on_new`` starts a responder for a new session.

    A message for a session this party has no run for is refused (404), so a peer cannot make it
    keep queues for nothing; a run's queue goes when the run ends (:meth:`close`).
    """

    on_new: Handler
    queues: dict[str, asyncio.Queue[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    received: int = 0

    def queue(self, session: str) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        return self.queues.setdefault(session, asyncio.Queue(MAX_QUEUED))

    def close(self, session: str) -> None:
        self.queues.pop(session, None)

    async def deliver(self, session: str, kind: str, body: dict[str, Any]) -> None:
        self.received += 1
        if session not in self.queues:
            if kind != "negotiate":
                raise ApiError(404, "unknown_session", "this party has no exchange under that session (finished, "
                                                       "never started, or the party restarted)")
            if len(self.queues) >= MAX_RUNS:
                raise ApiError(503, "busy", "too many exchanges are open here; try again later")
            self.queue(session)
            await self.on_new(session, kind, body)
            return
        try:
            self.queue(session).put_nowait((kind, body))
        except asyncio.QueueFull:
            raise ApiError(429, "queue_full", "too many messages for one exchange") from None

    def app(self) -> web.Application:
        routes = web.RouteTableDef()

        @routes.post("/exchange")
        async def post(request: web.Request) -> web.Response:
            msg = await read_json(request, Message)
            await self.deliver(msg.session, msg.kind, msg.body)
            return web.json_response({"queued": True}, status=202)

        return make_app(list(routes), max_body=MAX_MESSAGE)


class Server:
    """An aiohttp app listening on loopback inside the running event loop (bounded start and stop)."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0):
        self.app, self.ssl_context, self.host, self.port = app, ssl_context, host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def start(self) -> Server:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await asyncio.wait_for(self._runner.setup(), 10)
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await asyncio.wait_for(site.start(), 10)
        server = site._server
        sockets = getattr(server, "sockets", None)       # an asyncio.Server's; aiohttp types it as AbstractServer
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await asyncio.wait_for(runner.cleanup(), 10)


async def send_message(poster: AsyncJsonClient, peer_url: str, session: str, kind: str, body: dict[str, Any]) -> None:
    """Hand one message to the peer's exchange service; PeerUnreachable if it does not take it."""
    try:
        status, answer = await poster.post_raw(peer_url.rstrip("/") + "/exchange",
                                               {"session": session, "kind": kind, "body": body})
    except TlsError as e:
        raise PeerUnreachable(f"the peer at {peer_url} is not who the CA root vouches for; the {kind} message was "
                              f"not sent ({e})") from None
    except ChannelError as e:
        raise PeerUnreachable(f"the peer at {peer_url} did not take the {kind} message ({e})") from None
    if status != 202:
        raise PeerUnreachable(f"the peer at {peer_url} refused the {kind} message: {answer.get('message', status)}")


async def ttp_call(poster: AsyncJsonClient, ttp_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request to the third party; TtpUnavailable when it cannot be made or is refused outright."""
    try:
        status, answer = await poster.post_raw(ttp_url.rstrip("/") + path, body)
    except TlsError as e:
        raise TtpUnavailable(f"the third party at {ttp_url} is not the one the CA root vouches for ({e}); check its "
                             "URL and your CA root") from None
    except ChannelError as e:
        raise TtpUnavailable(f"the third party at {ttp_url} could not be reached ({e}); "
                             "try again later: its decisions are kept") from None
    if status != 200:
        raise TtpUnavailable(f"the third party at {ttp_url} refused the request outright: "
                             f"{answer.get('message', status)} ({answer.get('error', 'http_error')})")
    return answer
