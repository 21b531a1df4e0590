"""A lean HTTP/1.1 path for the services' JSON API routes, with aiohttp behind it for everything else.

Why: a purchase is four HTTPS requests to the shop, and aiohttp's request path (its parser's
objects, the router, the middleware chain, the response's ``prepare``) cost 0.13-0.17 ms of server
CPU per JSON request over TLS, this path 0.09-0.10 ms, the TLS and event loop alone 0.03-0.05 ms
(docs/performance.md, "A lean request path").

Here a connection starts on :class:`FastConnection`, which answers only the plain, common case
itself: an ``HTTP/1.1`` request whose method and path are exactly one of the app's JSON routes
(those given to ``make_app``), headers well formed and small, the body (if any) sized by one
``Content-Length`` within the app's limit, no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``. The
handler runs as before, wrapped in the same :func:`~.http_service.json_errors`, so a refusal is the
same JSON with the same status.

Anything else, from the first byte of the first request that is not the plain case (an unknown
path, a wrong method, a chunked or oversized body, a malformed or HTTP/1.0 request, the web pages),
is handed with the connection to aiohttp's own protocol, which then serves that connection to its
end: aiohttp keeps answering every edge case exactly as it did (404/405/413 JSON, 400 for a
malformed request, 100-continue), and nothing of it had to be written twice.

Bounds: a request head larger than :data:`MAX_HEAD`, or of more than :data:`MAX_HEADERS` header lines,
goes to aiohttp (which takes a long head of short lines, and refuses a line over 8190 bytes or more
than 128 headers); the head is parsed once, however many pieces its body comes in; a
request must arrive whole within :data:`REQUEST_TIMEOUT` once begun, an idle keep-alive connection
is closed after :data:`KEEPALIVE_TIMEOUT` (aiohttp's default); pipelined requests are answered in
order, one at a time, and reading pauses while more than :data:`MAX_BUFFER` bytes wait.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, cast

import aiohttp
from aiohttp import web
from aiohttp.helpers import HeadersMixin
from multidict import CIMultiDict, CIMultiDictProxy

log = logging.getLogger("semper.services")

MAX_HEAD = 8 * 1024             # bytes of request line and headers taken here; more goes to aiohttp
MAX_HEADERS = 128               # header lines taken here (aiohttp's parser refuses more: 400)
MAX_BUFFER = 256 * 1024         # bytes of pipelined requests held before reading pauses
REQUEST_TIMEOUT = 30.0          # seconds from a request's first byte to its last
KEEPALIVE_TIMEOUT = 75.0        # seconds an idle connection stays open (aiohttp's default)

Handler = Callable[[Any], Awaitable[web.StreamResponse]]
Middleware = Callable[[Any, Handler], Awaitable[web.StreamResponse]]
Routes = Mapping[tuple[bytes, bytes], Handler]

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# the request line: a method, an origin-form path with no escapes (a path with any goes to aiohttp,
# which decodes it), an optional query, HTTP/1.1 only
_REQUEST_LINE = re.compile(rb"([A-Z]+) (/[!$&'()*+,\-./0-9:;=@A-Z_a-z~]*)"
                           rb"(?:\?([!$&'()*+,\-./0-9:;=?@A-Z_a-z~%]*))? HTTP/1\.1\r\n")
# the headers: each a token, a colon, a value of visible characters, spaces and tabs (no obsolete
# line folding, no control characters, no bare CR or LF)
_HEADERS = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_SERVER = f"Python/{sys.version_info[0]}.{sys.version_info[1]} aiohttp/{aiohttp.__version__}"


class FastRequest(HeadersMixin):
    """What a JSON route's handler reads of a request, for a request :class:`FastConnection` parsed.

    The same names and meanings as on aiohttp's ``web.Request`` for what the services' JSON handlers
    and :func:`~.http_service.json_errors` read (``method``, ``path``, ``headers``, ``content_type``,
    ``read``, ``app``), and nothing else: a JSON route whose handler reads more of its request (its
    query, its peer) answers 500 on this path, which every service's tests run. ``content_type`` is
    aiohttp's own (:class:`aiohttp.helpers.HeadersMixin`, as on ``web.Request``): the same media type
    for every Content-Type value, however malformed."""

    __slots__ = ("method", "path", "_headers", "app", "_body")

    def __init__(self, method: str, path: str, headers: CIMultiDictProxy[str], body: bytes,
                 app: web.Application) -> None:
        self.method = method
        self.path = path
        self._headers = headers
        self.app = app
        self._body = body

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return cast(CIMultiDictProxy[str], self._headers)

    async def read(self) -> bytes:
        return self._body


def _date() -> bytes:
    """The Date header's value, made once a second."""
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode()
    return _date_cache[1]


_date_cache: list[Any] = [0, b""]


def _serialise(response: web.StreamResponse, close: bool) -> bytes | None:
    """The bytes of a handler's ``web.Response`` with a bytes body; None for anything else (a stream,
    a file), which this path does not send."""
    if type(response) is not web.Response or response.cookies:
        return None
    body = response.body
    if body is None:
        body = b""
    if not isinstance(body, bytes | bytearray):
        return None
    key = (response.status, response.reason, tuple(response.headers.items()))
    head = _heads.get(key)
    if head is None:
        head = _head(*key)
    date = b"" if "Date" in response.headers else b"Date: " + _date() + b"\r\n"
    return b"".join((head, date, b"Connection: close\r\n" if close else b"",
                     b"Content-Length: %d\r\n\r\n" % len(body), body))


_heads: dict[tuple[int, str, tuple[tuple[str, str], ...]], bytes] = {}


def _head(status: int, reason: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    """The status line and the headers of an answer but its length, date and connection: the same for
    most answers, so kept (up to a bound)."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    for name, value in headers:
        if "\r" in name + value or "\n" in name + value or ":" in name:
            raise ValueError(f"a header with a line break or a colon in its name: {name!r}")
        if name.lower() not in ("content-length", "connection", "transfer-encoding", "date"):
            lines.append(f"{name}: {value}\r\n")
    if not any(name.lower() == "server" for name, _ in headers):
        lines.append(f"Server: {_SERVER}\r\n")
    head = "".join(lines).encode("latin-1")
    if len(_heads) < 256:
        _heads[(status, reason, headers)] = head
    return head


class FastServer:
    """The connections of one listening socket: their protocol factory, the routes they answer, the
    aiohttp server they hand the rest to, and the graceful stop of them all."""

    def __init__(self, app: web.Application, routes: Routes, middleware: Middleware,
                 fallback: web.Server, max_body: int) -> None:
        self.app = app
        self.routes = routes
        self.middleware = middleware
        self.fallback = fallback
        self.max_body = max_body
        self.connections: set[FastConnection] = set()
        self.stopping = False
        self.served = 0                     # requests answered here
        self.handed_over = 0                # connections given to aiohttp
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time
        self.sweeper = self.loop.call_later(1.0, self.sweep)

    def sweep(self) -> None:
        """Once a second: close the connections past their deadline (one timer for all of them, not
        two per request)."""
        now = self.now()
        for c in [c for c in self.connections if c.deadline < now]:
            c.expired()
        if not self.stopping:
            self.sweeper = self.loop.call_later(1.0, self.sweep)

    def __call__(self) -> FastConnection:
        return FastConnection(self)

    async def shutdown(self, timeout: float) -> None:
        """No new requests; idle connections closed now, busy ones once their answer is sent (with
        ``Connection: close``); after ``timeout`` the handlers still running are cancelled and their
        connections closed."""
        self.stopping = True
        self.sweeper.cancel()
        for c in list(self.connections):
            c.close_when_idle()
        busy = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        if busy:
            _done, pending = await asyncio.wait(busy, timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=timeout)
        for c in list(self.connections):
            c.abort()


@dataclass(slots=True)
class _Head:
    """A parsed request head whose body may still be on its way (not changed once made; not frozen, whose
    ``__init__`` cost a sixth of the head's parsing)."""

    handler: Handler
    method: str
    path: str
    headers: CIMultiDict[str]
    body_start: int
    total: int                          # bytes of head and body


class FastConnection(asyncio.Protocol):
    """One client connection while it asks only for the JSON routes (see the module's docstring)."""

    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.close_after = False            # the client asked for Connection: close, or the server stops
        self.paused_reading = False
        self.can_write: asyncio.Future[None] | None = None
        self.deadline = math.inf            # loop time after which the server's sweep closes it
        self.head: _Head | None = None      # parsed, its body not yet whole

    # -- asyncio's protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)    # uvloop's is not a subclass, but is one
        self.server.connections.add(self)
        if self.server.stopping:
            self.transport.close()
            return
        self._arm(KEEPALIVE_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None:
            if self.deadline == math.inf or len(self.buffer) == len(data):
                self._arm(REQUEST_TIMEOUT)  # a request begins: it has REQUEST_TIMEOUT to arrive whole
            self._next()
        if self.task is not None and len(self.buffer) > MAX_BUFFER and not self.paused_reading \
                and self.transport is not None:
            self.paused_reading = True      # pipelined requests pile up behind a busy handler: no more
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None                         # close: a half-closed client gets no more answers

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._disarm()
        self.transport = None
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_result(None)
        # a running handler is not cancelled (aiohttp's default too): a payment step runs to its end

    def pause_writing(self) -> None:
        if self.can_write is None or self.can_write.done():
            self.can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_result(None)

    # -- requests ----------------------------------------------------------------------------------
    def _next(self) -> None:
        """Take the next whole request in the buffer: answer it here, or give the connection to aiohttp.

        The head is parsed once: while its body arrives (in any number of pieces) only the length is
        looked at again."""
        if self.transport is None:
            return
        buf = self.buffer
        if not buf:
            self._arm(KEEPALIVE_TIMEOUT)
            return
        head = self.head or self._parse_head()
        if head is None:
            return                          # handed over, or the head is still on its way
        if len(buf) < head.total:
            self.head = head
            return self._waiting()          # the body is still on its way
        self.head = None
        body = bytes(buf[head.body_start:head.total])
        del buf[:head.total]
        self.deadline = math.inf            # a handler runs: no bound on it here (aiohttp sets none either)
        self.server.served += 1
        request = FastRequest(head.method, head.path, CIMultiDictProxy(head.headers), body, self.server.app)
        self.task = asyncio.get_running_loop().create_task(self._answer(request, head.handler))

    def _parse_head(self) -> _Head | None:
        """The request head at the start of the buffer, when it is whole and the plain case; else None,
        having handed the connection over or waiting for more of the head."""
        buf = self.buffer
        end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
        if end < 0:
            if len(buf) > MAX_HEAD or buf.count(b"\n") != buf.count(b"\r\n"):
                self._hand_over()           # too long, or a bare LF: aiohttp's limits and parser decide
            else:
                self._waiting()
            return None
        line = _REQUEST_LINE.match(buf, 0, end + 2)
        if line is None:
            return self._refuse()
        handler = self.server.routes.get((line.group(1), line.group(2)))
        head_start = line.end()
        if handler is None or not _HEADERS.fullmatch(buf, head_start, end + 2) \
                or buf.count(b"\r\n", head_start, end + 2) > MAX_HEADERS:
            return self._refuse()           # another route, odd headers, more of them than aiohttp takes
        headers: CIMultiDict[str] = CIMultiDict()
        if end > head_start:
            # as aiohttp's parser decodes them: UTF-8, other bytes kept as surrogates
            for field in buf[head_start:end].decode("utf-8", "surrogateescape").split("\r\n"):
                name, _, value = field.partition(":")
                headers.add(name, value.strip(" \t"))
        if "Transfer-Encoding" in headers or "Expect" in headers or "Upgrade" in headers:
            return self._refuse()           # a chunked body, 100-continue, an upgrade: aiohttp's
        lengths = headers.getall("Content-Length", ())
        if len(lengths) > 1 or (lengths and not (lengths[0].isdigit() and lengths[0].isascii()
                                                 and len(lengths[0]) <= 18)):
            return self._refuse()           # two lengths, or not a number int() takes: aiohttp's 400
        if not lengths and line.group(1) != b"GET":
            return self._refuse()           # a body without a length: aiohttp decides what it is
        length = int(lengths[0]) if lengths else 0
        if length > self.server.max_body:
            return self._refuse()           # aiohttp refuses it (413), reading no more than it must
        connection = headers.get("Connection")
        if connection is not None:
            tokens = {t.strip().lower() for t in connection.split(",")}
            if "upgrade" in tokens:
                return self._refuse()
            if "close" in tokens:
                self.close_after = True
        return _Head(handler, line.group(1).decode(), line.group(2).decode(), headers,
                     end + 4, end + 4 + length)

    def _refuse(self) -> _Head | None:
        """Not the plain case: aiohttp takes the connection (and answers this request as it would); no head."""
        self._hand_over()
        return None

    async def _answer(self, request: FastRequest, handler: Handler) -> None:
        close = self.close_after
        try:
            response = await self.server.middleware(request, handler)
            data = _serialise(response, close or self.server.stopping)
            if data is None:
                log.error("%s %s answered with %s, which the fast path does not send", request.method,
                          request.path, type(response).__name__)
                data = _serialise(_internal(), close or self.server.stopping)
                assert data is not None
        except asyncio.CancelledError:
            self.abort()
            raise
        except web.HTTPException as e:      # below 400 json_errors lets it through: a redirect, say
            data = _serialise(web.Response(status=e.status, reason=e.reason, headers=e.headers, text=e.text),
                              close or self.server.stopping)
            assert data is not None
        except Exception:                   # json_errors turns handlers' faults into answers: this is ours
            log.exception("internal error on %s %s", request.method, request.path)
            data = _serialise(_internal(), True)
            close = True
            assert data is not None
        transport = self.transport
        if transport is None or transport.is_closing():
            self.task = None
            return
        transport.write(data)
        if close or self.server.stopping:
            self.task = None
            transport.close()
            return
        if self.can_write is not None and not self.can_write.done():
            await self.can_write            # the client does not read: answer no more until it does
        self.task = None
        if self.paused_reading and self.transport is not None:
            self.paused_reading = False
            self.transport.resume_reading()
        self._next()

    # -- the connection's end, and the hand-over ----------------------------------------------------
    def _hand_over(self) -> None:
        """Give the connection, with what it sent from the first byte of the current request, to
        aiohttp's protocol, which serves it from here to its end."""
        transport = self.transport
        assert transport is not None and self.task is None
        self._disarm()
        self.server.connections.discard(self)
        self.transport = None
        if self.server.stopping:
            transport.close()
            return
        self.server.handed_over += 1
        protocol = self.server.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self.buffer = bytes(self.buffer), bytearray()
        if data:
            protocol.data_received(data)

    def close_when_idle(self) -> None:
        self.close_after = True
        if self.task is None and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _waiting(self) -> None:
        """Part of a request is here: it has REQUEST_TIMEOUT (from its first byte, or from the answer
        to the request before it) to arrive whole."""
        if self.deadline == math.inf:
            self._arm(REQUEST_TIMEOUT)

    def _arm(self, seconds: float) -> None:
        self.deadline = self.server.now() + seconds

    def _disarm(self) -> None:
        self.deadline = math.inf

    def expired(self) -> None:
        """Idle too long, or a request that did not arrive whole in time: closed (an answer being
        made is not cut off: there is no deadline while a handler runs)."""
        if self.task is None and self.transport is not None:
            self.transport.close()


def _internal() -> web.Response:
    from .http_service import error_response
    return error_response(500, "internal", "the service failed on this request; its log has the details")


def route_table(routes: Iterable[web.AbstractRouteDef]) -> dict[tuple[bytes, bytes], Handler]:
    """The (method, path) → handler table of the routes on plain paths (no ``{variable}``): those the
    fast path may answer. A route on a variable path, a class-based view or any method stays aiohttp's."""
    table: dict[tuple[bytes, bytes], Handler] = {}
    for r in routes:
        # the request line's own pattern leaves out "*", variable paths ("{") and paths not from the root
        if not isinstance(r, web.RouteDef) or isinstance(r.handler, type) \
                or not _REQUEST_LINE.fullmatch(f"{r.method} {r.path} HTTP/1.1\r\n".encode()):
            continue
        table[(r.method.encode(), r.path.encode())] = r.handler
    return table
