"""The third party's HTTPS endpoints (aiohttp).

``POST /resolve``, ``/abort``, ``/complaint``, ``/status`` take ``{"request": base64 CMS}`` (a
``ttp-request`` statement signed by a party) and answer ``200 {"answer": base64 CMS}`` — a signed
``decision`` statement, also when the answer is a refusal, so that a refusal is evidence too.
``GET /escrow-key`` is T's signed escrow-key statement, ``GET /certificate`` its certificate,
``POST /timestamp`` its RFC 3161 time-stamp authority (``application/timestamp-query`` in,
``application/timestamp-reply`` out), ``GET /stats`` the request counters (how tests and the bench
see that an optimistic run did not involve T at all).
"""
from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Annotated

from aiohttp import web
from msgspec import Meta

from ..support.http_service import ApiError, blocking, make_app, read_json
from ..support.pki import pem
from ..support.shapes import Shape
from ..support.tsa import TimeStampAuthority
from .ttp import MAX_REQUEST, ThirdParty

MAX_TSQ = 8 * 1024


class TtpCall(Shape, frozen=True):
    """``POST /resolve`` (``/abort``, ``/complaint``, ``/status``): a signed ``ttp-request``, DER as base64.
    Its size is the third party's to judge (a signed refusal: evidence), not this shape's."""

    request: Annotated[bytes, Meta(min_length=1)]


def build_app(ttp: ThirdParty, *, escrow_statement: bytes | None = None, tsa: TimeStampAuthority | None = None
              ) -> web.Application:
    routes = web.RouteTableDef()
    counted = {"timestamp": 0}

    def handler(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            body = await read_json(request, TtpCall)
            answer = await blocking(ttp.handle, kind, body.request)
            return web.json_response({"answer": base64.b64encode(answer).decode()})
        return handle

    for kind in ("resolve", "abort", "complaint", "status"):
        routes.post(f"/{kind}")(handler(kind))

    @routes.get("/escrow-key")
    async def get_escrow(request: web.Request) -> web.Response:
        if escrow_statement is None:
            raise ApiError(404, "no_escrow", "this third party holds no escrow key")
        return web.json_response({"statement": base64.b64encode(escrow_statement).decode()})

    @routes.get("/certificate")
    async def get_certificate(request: web.Request) -> web.Response:
        from cryptography.hazmat.primitives.serialization import Encoding
        return web.json_response({"certificate": pem(ttp.certificate.public_bytes(Encoding.DER))})

    @routes.post("/timestamp")
    async def post_timestamp(request: web.Request) -> web.Response:
        if tsa is None:
            raise ApiError(404, "no_tsa", "this third party runs no time-stamping authority")
        if request.content_type != "application/timestamp-query":
            raise ApiError(415, "unsupported_media_type", "send a DER TimeStampReq as application/timestamp-query")
        data = await request.read()
        if len(data) > MAX_TSQ:
            raise ApiError(413, "body_too_large", f"a time-stamp request has at most {MAX_TSQ} bytes")
        counted["timestamp"] += 1
        return web.Response(body=await blocking(tsa.respond, data), content_type="application/timestamp-reply")

    @routes.get("/stats")
    async def get_stats(request: web.Request) -> web.Response:
        stats = await blocking(ttp.stats)
        stats["timestamps"] = counted["timestamp"]
        return web.json_response(stats)

    return make_app(list(routes), max_body=MAX_REQUEST * 4 // 3 + 64 * 1024)    # base64 of a request, and the JSON
