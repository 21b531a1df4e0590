"""The buyer's client for a shop: JSON over one kept-alive HTTPS connection, pinned to the CA root.

Why not ``channels.JsonClient``: a purchase is six to eight requests in a row; a new TLS handshake
for each would cost more than the purchase's cryptography. This client keeps one connection, opens
a new one when the shop closed it, and bounds every request by a timeout. Errors become
:class:`~client.commerce.errors.SellerRefused` (the shop said no, in its words) or
:class:`~client.commerce.errors.ServiceUnavailable` (nothing answered).
"""
from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

from ..support.channels import client_context
from .errors import SellerRefused, ServiceUnavailable

MAX_ANSWER = 8 * 1024 * 1024


class ShopClient:
    def __init__(self, url: str, root_pem: str, *, timeout: float = 15.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ServiceUnavailable(f"{url!r} is not an https:// URL; shops speak only HTTPS")
        self.url = url.rstrip("/")
        self.host, self.port = parts.hostname, parts.port or 443
        self.context = client_context(root_pem)
        self.timeout = timeout
        self._conn: http.client.HTTPSConnection | None = None
        self._lock = threading.Lock()
        self.requests = 0

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        with self._lock:
            for attempt in (1, 2):                 # a kept-alive connection the shop closed: open a new one once
                conn = self._connection()
                try:
                    conn.request(method, path, body=data, headers=headers)
                    resp = conn.getresponse()
                    raw = resp.read(MAX_ANSWER + 1)
                    status = resp.status
                    break
                except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
                    # the link was cut (mid-handshake or mid-answer): a dropped connection, not a failed check
                    conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise ServiceUnavailable(f"the shop at {self.url} did not answer ({e})") from None
                except ssl.SSLError as e:
                    self._conn = None
                    raise ServiceUnavailable(f"the shop at {self.url} failed the TLS check ({e}); it is not the shop "
                                             "the CA vouches for") from None
                except (ConnectionError, http.client.HTTPException, OSError) as e:
                    conn.close()
                    self._conn = None
                    if attempt == 2 or method != "GET" and not isinstance(e, (http.client.RemoteDisconnected,
                                                                              BrokenPipeError,
                                                                              ConnectionResetError)):
                        raise ServiceUnavailable(f"the shop at {self.url} did not answer ({e})") from None
            self.requests += 1
        if len(raw) > MAX_ANSWER:
            raise ServiceUnavailable("the shop's answer is too large; not reading it")
        try:
            obj = json.loads(raw) if raw else {}
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise ServiceUnavailable(f"the shop answered HTTP {status} without a JSON object")
        if status >= 400:
            raise SellerRefused(f"the shop refused: {obj.get('message') or obj.get('error') or status}")
        return obj

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: Any, what: str, limit: int = MAX_ANSWER) -> bytes:
    if not isinstance(text, str):
        raise SellerRefused(f"the shop's {what} is missing")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise SellerRefused(f"the shop's {what} is not base64") from None
    if len(raw) > limit:
        raise SellerRefused(f"the shop's {what} is too large")
    return raw


class ShopPayeeLink:
    """The payment manager's payee link for one deal: envelopes to ``POST /deals/pay``."""

    def __init__(self, client: ShopClient, deal_id: str) -> None:
        self.client, self.deal_id = client, deal_id
        self.confirmation: str | None = None          # the seller's signed confirmation, sent with the last answer
        self.delivery: dict[str, Any] | None = None    # and its delivery answer, when it delivers at once

    def send(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        answer = self.client.post("/deals/pay", {"deal": self.deal_id, "envelope": envelope})
        if isinstance(answer.get("confirmation"), str):
            self.confirmation = answer["confirmation"]
        if answer.get("shipped") is True:
            self.delivery = {k: answer.get(k) for k in ("shipped", "delivery", "content")}
        reply = answer.get("envelope")
        return reply if isinstance(reply, dict) else None
