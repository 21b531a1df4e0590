"""JSON over HTTPS for the parties' services (aiohttp), and a runner that starts and stops one.

Why one module: every service (CA, bank, third party, shop, exchange mailbox) must answer the same
way, so a client can rely on it: JSON bodies; every refusal as ``{"error": code, "message": text}``
with a 4xx status; bad input (malformed JSON, wrong or missing fields, oversized bodies, unknown
paths) never reaches a handler as an exception that would turn into a 5xx. A handler refuses by
raising a :class:`SemperError`: this module's middleware is the one place that turns it into the
refusal, with the status and code its class (or, for refusals chosen where they are raised, the
instance) names. A 500 is left for the service's own faults and real bugs, and even then the body
is JSON and says nothing internal.

Handlers that block (database, token signatures) run in a thread pool through :func:`blocking`,
so one slow signature does not stall the other connections.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from semper.hardware.errors import SemperError

from . import fast_http, shapes

log = logging.getLogger("semper.services")

MAX_BODY = 64 * 1024          # bytes; a certification request is about 1 KiB
T = TypeVar("T")
S = TypeVar("S", bound=shapes.Shape)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(SemperError):
    """A refusal the handler words itself: HTTP status, a stable code, a sentence a person can act on
    (for what the service's own input checks find; the layers' errors carry their statuses by class)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return self.http_status


_JSON = msgspec.json.Encoder()


def json_response(data: Any, status: int = 200) -> web.Response:
    """``web.json_response`` written by msgspec: the same JSON (non-ASCII as UTF-8, not escaped) in a
    tenth of the time of Python's writer (docs/performance.md)."""
    return web.Response(body=_JSON.encode(data), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": code, "message": message}, status=status)


def refusal(request: web.Request, e: SemperError) -> web.Response:
    """The JSON answer for a SemperError a handler raised: its status and code, its one-line message.

    A 500 is the service's own fault (its card, token or database failed, or a bug): the log gets the
    details, the client only ``internal``."""
    if e.http_status == 500:
        log.error("%s %s failed: %s: %s", request.method, request.path, type(e).__name__, e, exc_info=e)
        return error_response(500, "internal", "the service failed on this request; its log has the details")
    return error_response(e.http_status, e.code, str(e))


_HTTP_CODES = {400: "bad_request", 401: "unauthorised", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 411: "length_required", 413: "body_too_large",
               415: "unsupported_media_type"}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every way a request can fail into a JSON body with the right status."""
    try:
        return await handler(request)
    except SemperError as e:
        return refusal(request, e)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app._client_max_size
        return error_response(413, "body_too_large", f"the request body is larger than {limit} bytes")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "http_error")
        text = {404: f"no such endpoint: {request.method} {request.path}",
                405: f"{request.method} is not allowed on {request.path}"}.get(e.status, e.reason)
        return error_response(e.status, code, text)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:        # the client hung up before its body was complete: nobody to answer
        log.info("%s %s: the client closed the connection before sending the whole body", request.method, request.path)
        return error_response(400, "truncated", "the connection closed before the whole request body arrived")
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(500, "internal", "the service failed on this request; its log has the details")


async def read_json(request: web.Request, shape: type[S], defaults: Mapping[str, str] | None = None) -> S:
    """The request body as ``shape`` (``support/shapes.py``: its fields, exact types and limits), or a 4xx.

    415 for another content type, 413 past the app's body limit (aiohttp), 400 for everything else
    with the code :func:`~semper.client.support.shapes.decode` gives (``malformed_json``,
    ``missing_field``, ``unknown_field``, ``wrong_type``, ``bad_base64``, ``bad_length``,
    ``bad_value``, or the shape's own) and a sentence naming the field. Not JSON includes what
    Python's own reader would take: NaN, Infinity, a lone UTF-16 surrogate (once a 500 further on).
    """
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
    raw = await request.read()          # aiohttp enforces client_max_size here (413)
    try:
        return shapes.decode(raw, shape, "the body", defaults)
    except shapes.ShapeError as e:
        raise ApiError(400, e.code, e.message) from None


POOL_THREADS = 4       # threads per service for its blocking calls (ServiceRunner)


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (database, token) off the event loop, in the running service's own pool.

    Why the loop's pool and not one for the process: services that share a process (the tests' and the
    demo's worlds, a shop with its exchange mailbox) must not starve each other — a mall whose threads
    all wait on a shop's answers would otherwise hold the threads that shop needs to answer. Why 4: the
    seller's blocking steps mostly wait on one PSAM and one SQLite writer, so more threads only contend
    for the interpreter (8 threads cost the shop about 6 % more CPU per purchase than 1, 2 or 4, in
    back-to-back bench pairs; docs/performance.md)."""
    return await asyncio.to_thread(fn, *args)


FAST_ROUTES = web.AppKey("semper_fast_routes", dict)


def make_app(routes: Iterable[web.AbstractRouteDef], *, max_body: int = MAX_BODY) -> web.Application:
    """The service's app: ``routes`` behind :func:`json_errors`, bodies up to ``max_body``.

    ``routes`` are its JSON API: those on plain paths are also served by the lean request path
    (``fast_http.py``) when :class:`ServiceRunner` serves the app; routes added later (the shop's
    web pages) are aiohttp's alone."""
    routes = list(routes)
    app = web.Application(middlewares=[json_errors], client_max_size=max_body)
    app.add_routes(routes)
    app[FAST_ROUTES] = fast_http.route_table(routes)
    return app


def fast_routes(app: web.Application) -> dict[tuple[bytes, bytes], fast_http.Handler]:
    """The routes the lean path may answer for ``app``: none when ``SEMPER_FAST_HTTP=0``, or when the
    app has more than :func:`json_errors` around its handlers (another middleware, a response signal),
    which that path would skip."""
    table: dict[tuple[bytes, bytes], fast_http.Handler] = app.get(FAST_ROUTES, {})
    if os.environ.get("SEMPER_FAST_HTTP", "1") == "0" or list(app.middlewares) != [json_errors] \
            or len(app.on_response_prepare):
        return {}
    return table


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (the default), else asyncio's.

    Why: a service's CPU per request was mostly the event loop and asyncio's TLS layer, which are
    Python; uvloop does both in C (libuv and its own TLS protocol), with the same asyncio API
    (docs/performance.md). ``SEMPER_EVENT_LOOP=asyncio`` chooses the standard loop.
    """
    if os.environ.get("SEMPER_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@dataclass
class ServiceRunner:
    """An aiohttp app on a loopback port in its own thread: started and stopped with bounded waits.

    ``port=0`` asks the kernel for a free port; :attr:`url` says which one it got. Used by tests
    and by ``semper serve`` (which then waits for a signal). ``sock``: serve a listening socket made
    elsewhere instead (a worker process serving the socket its parent bound, ``support/prefork.py``).
    An app made by :func:`make_app` is served with the lean request path in front (``fast_http.py``):
    connections start there and are handed to aiohttp at the first request it does not take.
    """

    app: web.Application
    host: str = "127.0.0.1"
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    sock: socket.socket | None = None

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._fast: fast_http.FastServer | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ServiceRunner:
        self._thread = threading.Thread(target=self._run, name="semper-service", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the service did not start listening within {timeout:.0f} s")
        if self._error is not None:
            raise OSError(f"cannot listen on {self.host}:{self.port}: {self._error}") from self._error
        return self

    def _run(self) -> None:
        loop = new_event_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="semper-svc"))
        self._loop = loop                   # the pool is the service's own (blocking); closing the loop ends it
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as e:          # report bind errors to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        routes = fast_routes(self.app)
        if routes and self._runner.server is not None:
            await self._listen_fast(routes, self._runner.server)
            return
        site: web.BaseSite
        if self.sock is not None:
            site = web.SockSite(self._runner, self.sock, ssl_context=self.ssl_context)
            self.host, self.port = self.sock.getsockname()[:2]
        else:
            site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None)       # an asyncio.Server's; aiohttp types it as AbstractServer
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def _listen_fast(self, routes: fast_http.Routes, fallback: web.Server) -> None:
        """Listen with the lean path in front (``fast_http.py``); aiohttp's server takes the rest."""
        self._fast = fast_http.FastServer(self.app, routes, json_errors, fallback, self.app._client_max_size)
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            self._server = await loop.create_server(self._fast, sock=self.sock, ssl=self.ssl_context, backlog=128)
            self.host, self.port = self.sock.getsockname()[:2]
        else:
            self._server = await loop.create_server(self._fast, self.host, self.port, ssl=self.ssl_context,
                                                    backlog=128, reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _cleanup(self) -> None:
        """Stop listening, let the requests under way finish (bounded by the runner's 1 s), then
        aiohttp's connections and the app's cleanup."""
        if self._server is not None:
            self._server.close()
        if self._fast is not None:
            await self._fast.shutdown(1.0)
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        if self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._cleanup(), loop)
            try:
                fut.result(timeout)
            except Exception:
                log.exception("service shutdown")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def __enter__(self) -> ServiceRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
