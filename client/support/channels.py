"""Secure channels between the parties: TLS on both ends, the semper CA root pinned by clients.

Why pinning: a semper client trusts exactly one root, the semper CA's, and nothing from the
system store; a certificate for ``127.0.0.1`` from any other CA is refused. Servers present a
certificate that CA issued (role ``server``, SAN with their IP addresses and host names).

The client is synchronous (stdlib ``http.client``) because the CLI is: one request, one answer,
bounded by a timeout. Every failure arrives as a :class:`ChannelError` subclass with a message a
person can act on: unreachable, TLS refused, or the service's own JSON refusal.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MAX_RESPONSE = 4 * 1024 * 1024
DEFAULT_TIMEOUT = 15.0


class ChannelError(Exception):
    """The exchange with a service did not happen or was refused."""

    user_facing = True


class UnreachableError(ChannelError):
    """Nothing answered (refused, timed out, name unknown): nothing was sent, nothing changed there."""


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


class JsonClient:
    """Requests to one service: HTTPS to ``base_url``, root pinned, JSON in and out, bounded time."""

    def __init__(self, base_url: str, root: str | bytes | Path, *, timeout: float = DEFAULT_TIMEOUT,
                 name: str = "the service") -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ChannelError(f"{base_url!r} is not an https:// URL; semper services speak only HTTPS")
        self.host = parts.hostname
        try:
            self.port = parts.port or 443
        except ValueError:
            raise ChannelError(f"{base_url!r} has a bad port number") from None
        self.prefix = parts.path.rstrip("/")
        self.context = client_context(root)
        self.timeout = timeout
        self.name = name
        self.base_url = base_url.rstrip("/")

    def get(self, path: str) -> dict[str, Any]:
        return self._json(*self.request("GET", path))

    def get_bytes(self, path: str) -> bytes:
        status, _ctype, body = self.request("GET", path)
        if status >= 400:
            self._json(status, "application/json", body)
        return body

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode()
        return self._json(*self.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})}))

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, str, bytes]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout)
        where = f"{self.name} at {self.base_url}"
        try:
            conn.request(method, self.prefix + path, body=data, headers=headers or {})
            resp = conn.getresponse()
            body = resp.read(MAX_RESPONSE + 1)
            if len(body) > MAX_RESPONSE:
                raise ChannelError(f"{where} sent an answer larger than {MAX_RESPONSE} bytes; not reading it")
            return resp.status, resp.getheader("Content-Type", ""), body
        except ssl.SSLCertVerificationError as e:
            raise TlsError(f"{where} presented a certificate the pinned semper CA root does not vouch for "
                           f"({e.verify_message}); check --ca-root or the server's certificate") from None
        except ssl.SSLError as e:
            raise TlsError(f"the TLS handshake with {where} failed: {e.reason or e}") from None
        except (ConnectionRefusedError, socket.gaierror) as e:
            raise UnreachableError(f"{where} is unreachable ({e.strerror or e}); is the service running?") from None
        except TimeoutError:
            raise UnreachableError(f"{where} did not answer within {self.timeout:.0f} s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            raise UnreachableError(f"the connection to {where} failed: {e}") from None
        finally:
            conn.close()

    def _json(self, status: int, ctype: str, body: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(body) if body else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            obj = None
        if not isinstance(obj, dict):
            raise ChannelError(f"{self.name} at {self.base_url} answered HTTP {status} with a body that is not "
                               f"a JSON object")
        if status >= 400:
            raise ServiceError(status, str(obj.get("error", "http_error")), str(obj.get("message", "")), self.name)
        return obj
