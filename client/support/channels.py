"""Secure channels between the parties: TLS on both ends, the semper CA root pinned by clients.

Why pinning: a semper client trusts exactly one root, the semper CA's, and nothing from the
system store; a certificate for ``127.0.0.1`` from any other CA is refused. Servers present a
certificate that CA issued (role ``server``, SAN with their IP addresses and host names).

Two HTTP clients: :class:`JsonClient` for the synchronous callers (the CLI, the buyer's client, the
bank client), a lean HTTP/1.1 client on the standard library's sockets and ``ssl``, and
:class:`AsyncJsonClient` (httpx) for the event-loop ones (the exchange parties). Both keep
connections alive in a pool (a purchase is six to eight requests in a row; a TLS handshake for each
would cost more than its cryptography) and bound every request. Why not httpx for the synchronous
one: its layers (httpx, httpcore, h11) were about a third of a buyer's CPU in ``semper bench
throughput``, for what is one write and one read of a few hundred bytes (docs/performance.md).
Every failure arrives as a :class:`ChannelError` subclass that says what a caller may do next:

* :class:`UnreachableError`: no connection was made, so nothing was sent: safe to send again;
* :class:`AnswerLost`: the request may have arrived, its answer did not: send again only what is
  idempotent (an idempotency key, a GET);
* :class:`TlsError`: the peer is not who the pinned root vouches for: never retried;
* :class:`ServiceError`: the service answered with its own JSON refusal.
"""
from __future__ import annotations

import http.cookiejar
import json
import re
import select
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

import httpx

from semper.hardware.errors import SemperError

from .db import commit_held_groups

MAX_RESPONSE = 8 * 1024 * 1024
DEFAULT_TIMEOUT = 15.0
MAX_IDLE = 16                 # idle kept-alive connections a client keeps
KEEPALIVE_EXPIRY = 30.0       # seconds an idle connection is kept (the services close theirs after 75)
POOL = httpx.Limits(max_connections=64, max_keepalive_connections=MAX_IDLE, keepalive_expiry=KEEPALIVE_EXPIRY)
# What every semper client sends besides the request itself: one User-Agent for all (not the library and
# its version), and no cookies ever (a cookie a server sets and reads back would link a user's deals,
# anonymous ones included: issue 18). No client certificate is ever loaded (client_context).
HEADERS = {"User-Agent": "semper"}


def _no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing: every Set-Cookie is dropped, so nothing is ever sent back."""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class ChannelError(SemperError):
    """The exchange with a service did not happen or was refused. A service that met it calling
    another one answers 502 (the other one failed it)."""

    http_status = 502
    code = "upstream_failed"


class UnreachableError(ChannelError):
    """Nothing answered (refused, timed out, name unknown): nothing was sent, nothing changed there."""


class AnswerLost(ChannelError):
    """The connection broke or timed out after the request went out: it may have been carried out.
    ``closed``: the server closed the connection without answering (a kept-alive connection it had
    already given up: services that answer retransmissions alike may be asked once more)."""

    def __init__(self, message: str, closed: bool = False) -> None:
        super().__init__(message)
        self.closed = closed


class TlsError(ChannelError):
    """The TLS handshake failed: usually a server certificate that is not from the pinned CA."""


class ServiceError(ChannelError):
    """The service answered with an error: HTTP status, its code and its message."""

    def __init__(self, status: int, code: str, message: str, service: str) -> None:
        super().__init__(f"{service} refused: {message} ({code})")
        self.status = status
        self.code = code
        self.message = message


def _load_pem(root: str | bytes | Path) -> str:
    if isinstance(root, Path):
        try:
            return root.read_text()
        except OSError as e:
            raise ChannelError(f"cannot read the CA root {root}: {e.strerror}") from None
    return root.decode() if isinstance(root, bytes) else root


def client_context(root: str | bytes | Path) -> ssl.SSLContext:
    """A TLS client context that trusts only ``root`` (PEM text, bytes, or a file) and checks names."""
    pem = _load_pem(root)
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ChannelError("the CA root must be a PEM certificate (-----BEGIN CERTIFICATE-----)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cadata=pem)
    except ssl.SSLError as e:
        raise ChannelError(f"the CA root is not a usable certificate: {e.reason}") from None
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(cert_chain: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context from a PEM chain (leaf first, then the CA) and its PEM private key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_chain), str(key))
    except (OSError, ssl.SSLError) as e:
        raise ChannelError(f"cannot load the TLS certificate {cert_chain} and key {key}: {e}") from None
    return ctx


def _https_url(base_url: str, what: str = "semper services") -> str:
    parts = urlsplit(base_url)
    if parts.scheme != "https" or not parts.hostname:
        raise ChannelError(f"{base_url!r} is not an https:// URL; {what} speak only HTTPS")
    try:
        _ = parts.port                      # urllib checks the port only when it is read
    except ValueError:
        raise ChannelError(f"{base_url!r} has a bad port number") from None
    return base_url.rstrip("/")


def _untrusted(where: str, cause: ssl.SSLCertVerificationError) -> TlsError:
    return TlsError(f"{where} presented a certificate the pinned semper CA root does not vouch for "
                    f"({cause.verify_message}); check --ca-root or the server's certificate")


def _handshake_failed(where: str, cause: ssl.SSLError) -> TlsError:
    return TlsError(f"the TLS handshake with {where} failed: {cause.reason or cause}")


def _handshake_cut(where: str) -> UnreachableError:
    return UnreachableError(f"{where} did not answer: the connection was cut during the TLS handshake")


def _no_connection(where: str, timeout: float) -> UnreachableError:
    return UnreachableError(f"{where} did not answer within {timeout:.0f} s")


def _unreachable(where: str, reason: str) -> UnreachableError:
    return UnreachableError(f"{where} is unreachable ({reason}); is the service running?")


def _no_answer(where: str, timeout: float) -> AnswerLost:
    return AnswerLost(f"{where} did not answer within {timeout:.0f} s; the request may have been carried out")


def _broke(where: str, reason: str, closed: bool) -> AnswerLost:
    return AnswerLost(f"the connection to {where} broke ({reason}); the request may have been carried out",
                      closed=closed)


def _failure(e: Exception, where: str, timeout: float) -> ChannelError:
    """What an httpx failure means for the caller (see the module docstring)."""
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return _untrusted(where, cause)
    if isinstance(cause, ssl.SSLError) and not isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) \
            and isinstance(e, httpx.ConnectError):
        return _handshake_failed(where, cause)
    if isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) and isinstance(e, httpx.ConnectError):
        return _handshake_cut(where)
    if isinstance(e, httpx.ConnectTimeout):
        return _no_connection(where, timeout)
    if isinstance(e, (httpx.ConnectError, httpx.UnsupportedProtocol)):
        return _unreachable(where, _reason(e))
    if isinstance(e, httpx.TimeoutException):
        return _no_answer(where, timeout)
    return _broke(where, _reason(e), isinstance(e, httpx.RemoteProtocolError))


def _connect_failure(e: OSError, where: str, timeout: float) -> ChannelError:
    """What a failure to connect (TCP, then the TLS handshake) means for the caller: the same errors,
    and the same words, as :func:`_failure` gives for httpx's."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return _untrusted(where, e)
    if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return _handshake_cut(where)
    if isinstance(e, ssl.SSLError):
        return _handshake_failed(where, e)
    if isinstance(e, TimeoutError):
        return _no_connection(where, timeout)
    return _unreachable(where, e.strerror or str(e) or type(e).__name__)


def _reason(e: BaseException) -> str:
    inner = e.__cause__ or e.__context__
    text = str(e) or (str(inner) if inner is not None else "") or type(e).__name__
    return getattr(inner, "strerror", None) or text


def _decode(status: int, body: bytes, name: str, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(body) if body else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    if not isinstance(obj, dict):
        raise ChannelError(f"{where} answered HTTP {status} with a body that is not a JSON object")
    if status >= 400:
        raise ServiceError(status, str(obj.get("error", "http_error")), str(obj.get("message", "")), name)
    return obj


def _encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class _Base:
    def __init__(self, base_url: str | None, root: str | bytes | Path, timeout: float, name: str) -> None:
        self.base_url = _https_url(base_url) if base_url is not None else ""
        self.context = client_context(root)
        self.timeout = timeout
        self.name = name
        self.requests = 0

    def where(self, url: str) -> str:
        if self.base_url:
            return f"{self.name} at {self.base_url}"
        p = urlsplit(url)
        return f"{self.name} at {p.scheme}://{p.netloc}"

    def url(self, path: str) -> str:
        if self.base_url:
            return self.base_url + path
        return _https_url(path, "peers")


class _Lost(ChannelError):
    """The connection broke while the answer was awaited (internal, made an :class:`AnswerLost` before a
    caller sees it): why, and whether the server closed it."""

    def __init__(self, reason: str, closed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.closed = closed


def _readable(sock: ssl.SSLSocket) -> bool:
    """Whether anything (the peer's close, its close_notify, stray bytes) waits on an idle connection."""
    if sock.pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _Connection:
    """One kept-alive HTTP/1.1 connection over TLS: a request is one write, its answer read whole."""

    __slots__ = ("sock", "buf", "idle_since", "deadline", "generation")

    def __init__(self, sock: ssl.SSLSocket, generation: int = 0) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.idle_since = 0.0
        self.deadline = float("inf")        # the request's end (time.monotonic()): every read waits until it at most
        self.generation = generation        # JsonClient.close() since it was made: not kept after one

    def _recv(self) -> bytes:
        """Bytes from the server, waiting no longer than the request's deadline (a server trickling its
        answer a byte at a time is bounded by the whole request's timeout, not by each read's)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's time is up")
        self.sock.settimeout(left)
        return self.sock.recv(65536)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def stale(self) -> bool:
        """Not reusable: the server closed it while it was idle (or sent something nobody asked for)."""
        try:
            return bool(self.buf) or _readable(self.sock)
        except (OSError, ValueError):
            return True

    def send(self, data: bytes) -> tuple[int, OSError] | None:
        """Write the request; None, or how many bytes went out before the write failed, and why."""
        view = memoryview(data)
        sent = 0
        try:
            if self.deadline < float("inf"):
                self.sock.settimeout(max(0.001, self.deadline - time.monotonic()))
            while sent < len(data):
                sent += self.sock.send(view[sent:])
        except OSError as e:
            return sent, e
        return None

    def _fill(self, what: str) -> None:
        chunk = self._recv()
        if not chunk:
            # ``closed``: the server ended the connection (as httpx said it): the shop's client sends a request
            # again then, which the shop answers as it answered it (a malformed answer is not ``closed``)
            raise _Lost(f"the server closed the connection {what}", closed=True)
        self.buf += chunk

    def _line(self) -> bytes:
        buf = self.buf
        while (end := buf.find(b"\r\n")) < 0:
            if len(buf) > 8192:
                raise _Lost("the answer has a line longer than 8192 bytes", closed=False)
            self._fill("in the middle of its answer")
        line = bytes(buf[:end])
        del buf[:end + 2]
        return line

    def answer(self, method: str, where: str) -> tuple[int, str, bytes, bool]:
        """Read one answer: its status, Content-Type, body, and whether the connection may serve another."""
        buf = self.buf
        interim = 0
        while True:
            while (end := buf.find(b"\r\n\r\n")) < 0:
                if len(buf) > MAX_HEAD:
                    raise _Lost(f"the answer's head is longer than {MAX_HEAD} bytes", closed=False)
                # closed before any byte of an answer: the only case where the server surely sent none
                self._fill("without an answer" if not buf and not interim else "in the middle of its answer")
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[:end + 4]
            first = lines[0]
            if len(first) < 12 or not first.startswith(b"HTTP/1.") or first[8:9] != b" " \
                    or not first[9:12].isdigit() or first[12:13] not in (b"", b" "):
                raise _Lost(f"the answer does not start with an HTTP/1 status line: {first[:40]!r}", closed=False)
            status = int(first[9:12])
            if 100 <= status < 200 and status != 101:
                interim += 1                        # an interim answer (100 Continue, 103): the real one follows
                if interim > MAX_INTERIM:
                    raise _Lost(f"the server sent more than {MAX_INTERIM} interim answers", closed=False)
                continue
            break
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise _Lost(f"the answer has a malformed header line: {line[:40]!r}", closed=False)
            name = name.lower()
            if name in _FIELDS:
                value = value.strip()
                fields[name] = fields[name] + b", " + value if name in fields else value
        keep = first.startswith(b"HTTP/1.1") and status != 101 \
            and b"close" not in fields.get(b"connection", b"").lower()
        codings = fields.get(b"transfer-encoding")
        if codings is not None and b"content-length" in fields:
            keep = False                            # both framings: read as chunked, then not trusted again
        if method == "HEAD" or status < 200 or status in (204, 304):
            body = b""
        elif codings is not None:
            if codings.split(b",")[-1].strip().lower() != b"chunked":
                raise _Lost(f"the answer's transfer coding is not chunked: {codings[:40]!r}", closed=False)
            body = self._chunked(where)
        elif (length := fields.get(b"content-length")) is not None:
            values = {v.strip() for v in length.split(b",")}    # the same value repeated is one (RFC 9110 8.6)
            length = values.pop() if len(values) == 1 else b""
            if not length.isdigit() or len(length) > 18:
                raise _Lost(f"the answer has a bad Content-Length: {fields[b'content-length'][:40]!r}", closed=False)
            n = int(length)
            if n > MAX_RESPONSE:
                raise _too_large(where)
            while len(buf) < n:
                self._fill("in the middle of its answer")
            body = bytes(buf[:n])
            del buf[:n]
        else:                                       # the body ends where the connection does
            while True:
                chunk = self._recv()
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_RESPONSE:
                    raise _too_large(where)
            body, keep = bytes(buf), False
            del buf[:]
        coding = fields.get(b"content-encoding", b"").strip().lower()
        if coding and coding != b"identity":
            body = _decompress(coding, body, where)
        return status, fields.get(b"content-type", b"").decode("latin-1"), body, keep and not buf

    def _chunked(self, where: str) -> bytes:
        body = bytearray()
        buf = self.buf
        while True:
            size_text = self._line().partition(b";")[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise _Lost(f"the answer has a bad chunk size: {size_text[:40]!r}", closed=False)
            size = int(size_text, 16)
            if size == 0:
                trailer = 0
                while line := self._line():         # trailer fields, up to the empty line
                    trailer += len(line) + 2
                    if trailer > MAX_HEAD:
                        raise _Lost(f"the answer's trailer is longer than {MAX_HEAD} bytes", closed=False)
                return bytes(body)
            if len(body) + size > MAX_RESPONSE:
                raise _too_large(where)
            while len(buf) < size + 2:
                self._fill("in the middle of its answer")
            if buf[size:size + 2] != b"\r\n":
                raise _Lost("the answer's chunk does not end where its size says", closed=False)
            body += buf[:size]
            del buf[:size + 2]


# the answer's header fields the client reads (the others are skipped)
_FIELDS = frozenset((b"content-length", b"transfer-encoding", b"connection", b"content-type", b"content-encoding"))
MAX_HEAD = 64 * 1024                  # bytes of status line and headers in an answer
MAX_INTERIM = 8                       # interim answers (100 Continue, 103) before the real one
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
# what the request line takes as it is; anything else in a path is percent-encoded
_PLAIN_TARGET = re.compile(r"/[!$&'()*+,\-./0-9:;=?@A-Z_a-z~%]*")


def _too_large(where: str) -> ChannelError:
    return ChannelError(f"{where} sent an answer larger than {MAX_RESPONSE} bytes; not reading it")


def _decompress(coding: bytes, body: bytes, where: str) -> bytes:
    """A body in a Content-Encoding the client never asks for (it sends no Accept-Encoding), decoded if
    it is gzip or deflate, as httpx would; anything else is returned as it came."""
    if coding not in (b"gzip", b"x-gzip", b"deflate"):
        return body
    d = zlib.decompressobj(wbits=47 if coding != b"deflate" else 15)
    try:
        out = d.decompress(body, MAX_RESPONSE + 1)
    except zlib.error:
        if coding != b"deflate":
            raise _Lost(f"the answer's {coding.decode()} body does not decompress", closed=False) from None
        out = _raw_inflate(body)
    if len(out) > MAX_RESPONSE:
        raise _too_large(where)
    return out


def _raw_inflate(body: bytes) -> bytes:
    try:
        return zlib.decompressobj(wbits=-15).decompress(body, MAX_RESPONSE + 1)
    except zlib.error:
        raise _Lost("the answer's deflate body does not decompress", closed=False) from None


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where requests for a base URL go: the host and port to connect to, the Host header, the path prefix."""

    host: str
    port: int
    host_header: str
    prefix: str

    @staticmethod
    def of(parts: SplitResult) -> _Origin:
        host = parts.hostname or ""
        port = parts.port or 443
        shown = host if host.isascii() else host.encode("idna").decode()
        if ":" in shown:
            shown = f"[{shown}]"                    # an IPv6 literal
        prefix = parts.path.rstrip("/")
        return _Origin(host, port, shown if port == 443 else f"{shown}:{port}", _target(prefix, "") if prefix else "")


def _target(path: str, query: str) -> str:
    target = (path or "/") + (f"?{query}" if query else "")
    if _PLAIN_TARGET.fullmatch(target):
        return target
    return quote(target, safe="/?&=:;@!$'()*+,~%[]")


class JsonClient(_Base):
    """Requests to one service (``base_url``, or full URLs with ``base_url=None``): HTTPS, root pinned,
    JSON in and out, connections kept alive, every request bounded by ``timeout``. Thread-safe.

    The HTTP/1.1 is this class's own, on the standard library's ``socket`` and ``ssl``: a request is
    one write, its answer one read or a few. The connections are kept per host and port, at most
    :data:`MAX_IDLE` idle ones for :data:`KEEPALIVE_EXPIRY` seconds; each is one thread's at a time.
    Sent again, transparently, is only a request none of whose bytes went out: a kept-alive
    connection found closed before sending is dropped for another, and a write on one that fails
    before its first byte is tried once more on a new connection. Once a byte went out, a failure is
    :class:`AnswerLost` (``closed`` when the server closed the connection): a payment is never sent
    twice here; the callers that know a request is safe to repeat do it themselves."""

    def __init__(self, base_url: str | None, root: str | bytes | Path, *, timeout: float = DEFAULT_TIMEOUT,
                 name: str = "the service") -> None:
        super().__init__(base_url, root, timeout, name)
        self._origin = _Origin.of(urlsplit(self.base_url)) if self.base_url else None
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._idle_count = 0
        self._generation = 0

    def get(self, path: str) -> dict[str, Any]:
        status, _ctype, body = self.request("GET", path)
        return _decode(status, body, self.name, self.where(self.url(path)))

    def get_bytes(self, path: str) -> bytes:
        status, _ctype, body = self.request("GET", path)
        if status >= 400:
            _decode(status, body, self.name, self.where(self.url(path)))
        return body

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        status, _ctype, raw = self.request("POST", path, _encode(body),
                                           {"Content-Type": "application/json", **(headers or {})})
        return _decode(status, raw, self.name, self.where(self.url(path)))

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, str, bytes]:
        # a thread holding a commit group of a database (the shop's event loop: a late proof cleared at the
        # acquirer) commits it before it waits on the network: the group holds its file's write lock
        commit_held_groups()
        url = self.url(path)
        where = self.where(url)
        origin = self._origin
        if origin is not None and path.startswith("/") and _PLAIN_TARGET.fullmatch(path):
            target = origin.prefix + path
        else:
            parts = urlsplit(url)
            try:
                origin = _Origin.of(parts)
            except ValueError:
                raise ChannelError(f"{url!r} is not a usable URL") from None
            target = _target(parts.path, parts.query)
        payload = _request_head(method, target, origin.host_header, data, headers)
        if data:
            payload += data
        key = (origin.host, origin.port)
        deadline = time.monotonic() + self.timeout
        conn = self._take(key)
        reused = conn is not None
        if conn is None:
            conn = self._connect(origin, where)
        try:
            conn.deadline = deadline
            failed = conn.send(payload)
            if failed is not None and reused and failed[0] == 0:
                conn.close()                        # the server had dropped it while idle: nothing went out
                conn = self._connect(origin, where)
                conn.deadline = deadline
                failed = conn.send(payload)
            if failed is not None and failed[0] == 0 and not isinstance(failed[1], TimeoutError):
                # a new connection the server dropped before a byte of the request went out: not carried out
                raise _unreachable(where, f"the server closed the connection before the request was sent "
                                          f"({_reason(failed[1])})")
            if failed is not None and isinstance(failed[1], TimeoutError):
                raise _no_answer(where, self.timeout)
            # a write that failed may still have its answer (a server refusing a body too large answers
            # before it has read it all, then closes), as httpx reads it: read what came
            try:
                status, ctype, body, keep = conn.answer(method, where)
            except TimeoutError:
                raise _no_answer(where, self.timeout) from None
            except _Lost as e:
                raise _broke(where, e.reason, e.closed) from None
            except OSError as e:
                raise _broke(where, e.strerror or str(e) or type(e).__name__, False) from None
        except BaseException:
            conn.close()
            raise
        if keep:
            self._give(key, conn)
        else:
            conn.close()
        self.requests += 1
        return status, ctype, body

    def _connect(self, origin: _Origin, where: str) -> _Connection:
        try:
            sock = socket.create_connection((origin.host, origin.port), timeout=self.timeout)
        except OSError as e:
            raise _connect_failure(e, where, self.timeout) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return _Connection(self.context.wrap_socket(sock, server_hostname=origin.host), self._generation)
        except OSError as e:
            sock.close()
            raise _connect_failure(e, where, self.timeout) from None

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        """An idle connection to ``key`` that is still open (the most recently used first), or None."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                conn = idle.pop()
                self._idle_count -= 1
            if time.monotonic() - conn.idle_since < KEEPALIVE_EXPIRY and not conn.stale():
                return conn
            conn.close()

    def _give(self, key: tuple[str, int], conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        conn.deadline = float("inf")
        with self._lock:
            if self._idle_count < MAX_IDLE and conn.generation == self._generation:
                self._idle.setdefault(key, []).append(conn)
                self._idle_count += 1
                return
        conn.close()

    @property
    def idle_connections(self) -> int:
        """Kept-alive connections waiting for a request (none after :meth:`close`)."""
        with self._lock:
            return self._idle_count

    def close(self) -> None:
        """Close the idle connections (the client stays usable: the next request opens a new one)."""
        with self._lock:
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
            self._idle_count = 0
            self._generation += 1               # a connection in use now is closed when its request ends
        for conn in idle:
            conn.close()

    def __enter__(self) -> JsonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _request_head(method: str, target: str, host: str, data: bytes | None, headers: dict[str, str] | None) -> bytes:
    """The request line and headers: Host, this client's own (User-Agent, Accept), the caller's, the length."""
    if not _TOKEN.fullmatch(method):
        raise ChannelError(f"{method!r} is not an HTTP method")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    given = {k.lower() for k in headers} if headers else set()
    lines += [f"{k}: {v}" for k, v in _DEFAULT_HEADERS if k.lower() not in given]
    if headers:
        for k, v in headers.items():
            if not _TOKEN.fullmatch(k) or k.lower() in _OWN_HEADERS or _CONTROL.search(v):
                raise ChannelError(f"the header {k!r} cannot be sent (this client frames its requests itself)")
            lines.append(f"{k}: {v}")
    if data is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(data or b'')}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    except UnicodeEncodeError:
        raise ChannelError("a request header or path is not ASCII") from None


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")      # in a header value: nothing but tab of the controls
_OWN_HEADERS = frozenset(("host", "content-length", "transfer-encoding", "connection"))
_DEFAULT_HEADERS = (*HEADERS.items(), ("Accept", "*/*"))


class AsyncJsonClient(_Base):
    """The same for code on an event loop (the exchange parties); one pool per client."""

    def __init__(self, base_url: str | None, root: str | bytes | Path, *, timeout: float = DEFAULT_TIMEOUT,
                 name: str = "the peer") -> None:
        super().__init__(base_url, root, timeout, name)
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None or self._http.is_closed:
            self._http = httpx.AsyncClient(verify=self.context, timeout=self.timeout, limits=POOL, trust_env=False,
                                           headers=HEADERS, cookies=_no_cookies())
        return self._http

    async def post_raw(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST JSON; the status and the answer's JSON object (a refusal is returned, not raised)."""
        url = self.url(path)
        try:
            resp = await self._client().post(url, content=_encode(body), headers={"Content-Type": "application/json"})
        except httpx.HTTPError as e:
            raise _failure(e, self.where(url), self.timeout) from None
        self.requests += 1
        data = resp.content[:MAX_RESPONSE + 1]
        try:
            obj = json.loads(data) if data else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            obj = None
        if not isinstance(obj, dict):
            return resp.status_code, {"error": "not_json", "message": data[:200].decode("utf-8", "replace")}
        return resp.status_code, obj

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, obj = await self.post_raw(path, body)
        if status >= 400:
            raise ServiceError(status, str(obj.get("error", "http_error")), str(obj.get("message", "")), self.name)
        return obj

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
