"""Secure channels between the parties: TLS on both ends, the semper CA root pinned by clients.

Why pinning: a semper client trusts exactly one root, the semper CA's, and nothing from the
system store; a certificate for ``127.0.0.1`` from any other CA is refused. Servers present a
certificate that CA issued (role ``server``, SAN with their IP addresses and host names).

One HTTP client for every party (httpx): :class:`JsonClient` for the synchronous callers (the CLI,
the buyer's client, the bank client) and :class:`AsyncJsonClient` for the event-loop ones (the
exchange parties). Both keep connections alive in a pool (a purchase is six to eight requests in a
row; a TLS handshake for each would cost more than its cryptography) and bound every request.
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
import ssl
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from semper.hardware.errors import SemperError

MAX_RESPONSE = 8 * 1024 * 1024
DEFAULT_TIMEOUT = 15.0
POOL = httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=30.0)
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


def _failure(e: Exception, where: str, timeout: float) -> ChannelError:
    """What an httpx failure means for the caller (see the module docstring)."""
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return TlsError(f"{where} presented a certificate the pinned semper CA root does not vouch for "
                        f"({cause.verify_message}); check --ca-root or the server's certificate")
    if isinstance(cause, ssl.SSLError) and not isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) \
            and isinstance(e, httpx.ConnectError):
        return TlsError(f"the TLS handshake with {where} failed: {cause.reason or cause}")
    if isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) and isinstance(e, httpx.ConnectError):
        return UnreachableError(f"{where} did not answer: the connection was cut during the TLS handshake")
    if isinstance(e, httpx.ConnectTimeout):
        return UnreachableError(f"{where} did not answer within {timeout:.0f} s")
    if isinstance(e, (httpx.ConnectError, httpx.UnsupportedProtocol)):
        return UnreachableError(f"{where} is unreachable ({_reason(e)}); is the service running?")
    if isinstance(e, httpx.TimeoutException):
        return AnswerLost(f"{where} did not answer within {timeout:.0f} s; the request may have been carried out")
    return AnswerLost(f"the connection to {where} broke ({_reason(e)}); the request may have been carried out",
                      closed=isinstance(e, httpx.RemoteProtocolError))


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


class JsonClient(_Base):
    """Requests to one service (``base_url``, or full URLs with ``base_url=None``): HTTPS, root pinned,
    JSON in and out, connections kept alive, every request bounded by ``timeout``. Thread-safe."""

    def __init__(self, base_url: str | None, root: str | bytes | Path, *, timeout: float = DEFAULT_TIMEOUT,
                 name: str = "the service") -> None:
        super().__init__(base_url, root, timeout, name)
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    def _client(self) -> httpx.Client:
        """The pool, made again after :meth:`close` (closing drops the connections, not the client)."""
        with self._lock:
            if self._http is None or self._http.is_closed:
                self._http = httpx.Client(verify=self.context, timeout=self.timeout, limits=POOL, trust_env=False,
                                          headers=HEADERS, cookies=_no_cookies())
            return self._http

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
        url = self.url(path)
        try:
            with self._client().stream(method, url, content=data, headers=headers or {}) as resp:
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE:
                        raise ChannelError(f"{self.where(url)} sent an answer larger than {MAX_RESPONSE} bytes; "
                                           "not reading it")
                self.requests += 1
                return resp.status_code, resp.headers.get("Content-Type", ""), body
        except httpx.HTTPError as e:
            raise _failure(e, self.where(url), self.timeout) from None

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def __enter__(self) -> JsonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
