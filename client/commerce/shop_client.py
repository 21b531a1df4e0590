"""The buyer's client for a shop: JSON over kept-alive HTTPS connections, pinned to the CA root.

A purchase is six to eight requests in a row, so the connection is kept (``channels.JsonClient``).
Errors become :class:`~client.commerce.errors.SellerRefused` (the shop said no, in its words) or
:class:`~client.commerce.errors.ServiceUnavailable` (nothing answered, or not the shop the CA
vouches for). The shop answers a retransmitted request as it answered the first, so a request whose
kept-alive connection the shop had closed is sent once more.
"""
from __future__ import annotations

import base64
from typing import Any

from ..support.channels import AnswerLost, ChannelError, JsonClient, ServiceError, TlsError, UnreachableError
from .errors import SellerRefused, ServiceUnavailable

MAX_ANSWER = 8 * 1024 * 1024


class ShopClient:
    def __init__(self, url: str, root_pem: str, *, timeout: float = 15.0) -> None:
        try:
            self.http = JsonClient(url, root_pem, timeout=timeout, name="the shop")
        except ChannelError as e:
            raise ServiceUnavailable(str(e).replace("semper services", "shops")) from None
        self.url = self.http.base_url

    @property
    def requests(self) -> int:
        return self.http.requests

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        for attempt in (1, 2):
            try:
                return self.http.post(path, body) if method == "POST" and body is not None else self.http.get(path)
            except ServiceError as e:
                raise SellerRefused(f"the shop refused: {e.message or e.code or e.status}", e.code) from None
            except TlsError as e:
                raise ServiceUnavailable(f"{e}; it is not the shop the CA vouches for") from None
            except AnswerLost as e:
                if attempt == 2 or not (e.closed or method == "GET"):
                    raise ServiceUnavailable(f"the shop at {self.url} did not answer ({e})") from None
            except UnreachableError as e:
                if attempt == 2:
                    raise ServiceUnavailable(str(e)) from None
            except ChannelError as e:
                raise ServiceUnavailable(str(e)) from None
        raise AssertionError("unreachable")

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
        self.delivery: dict[str, Any] | None = None    # and its delivery answer, when it delivers at once (its note is
        # then the confirmation too when it states the payment, and no confirmation comes: blocks.fetch_confirmation)

    def send(self, envelope: dict[str, Any]) -> dict[str, Any] | None:
        answer = self.client.post("/deals/pay", {"deal": self.deal_id, "envelope": envelope})
        if isinstance(answer.get("confirmation"), str):
            self.confirmation = answer["confirmation"]
        if answer.get("shipped") is True:
            self.delivery = {k: answer.get(k) for k in ("shipped", "delivery", "content")}
        reply = answer.get("envelope")
        return reply if isinstance(reply, dict) else None
