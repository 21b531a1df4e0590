"""The certifier's HTTPS endpoints (``semper serve certifier``).

Public: ``GET /certifier`` (its certificate, PEM), ``GET /revocations`` (the signed revocation
list, DER). Operator, with ``Authorization: Bearer <admin secret>``: ``POST /certify``
``{document, permits, days}`` -> ``{serial, certificate}`` (base64 DER), ``POST /revoke``
``{serial, reason}``, ``GET /admin/list``.
"""
from __future__ import annotations

import base64
import hmac
from typing import Annotated, Any

import msgspec
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from ..commerce.services.permits import Permit
from ..support.http_service import ApiError, blocking, make_app, read_json
from ..support.shapes import Shape
from .certifier import Certifier


class CertifyRequest(Shape, frozen=True):
    document: dict[str, Any]
    permits: Permit
    days: Annotated[int, msgspec.Meta(ge=1, le=3660)] = 90


class RevokeRequest(Shape, frozen=True):
    serial: Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Fa-f]{32}$")]
    reason: Annotated[str, msgspec.Meta(max_length=200)] = "unspecified"


def build_app(certifier: Certifier, admin_secret: str) -> web.Application:
    routes = web.RouteTableDef()

    def admin(request: web.Request) -> None:
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not secret:
            raise ApiError(401, "unauthorised", "operator endpoints need 'Authorization: Bearer <admin secret>'")
        if not hmac.compare_digest(secret.strip().encode(), admin_secret.encode()):
            raise ApiError(403, "forbidden", "the admin secret is wrong")

    @routes.get("/certifier")
    async def get_certificate(request: web.Request) -> web.Response:
        cert = certifier.identity.certificate.public_bytes(Encoding.PEM).decode()
        return web.json_response({"certificate": cert})

    @routes.get("/revocations")
    async def get_revocations(request: web.Request) -> web.Response:
        der = await blocking(certifier.revocations)
        return web.Response(body=der, content_type="application/cms")

    @routes.post("/certify")
    async def post_certify(request: web.Request) -> web.Response:
        admin(request)
        body = await read_json(request, CertifyRequest)
        der = await blocking(lambda: certifier.certify(body.document, body.permits, days=body.days))
        return web.json_response({"certificate": base64.b64encode(der).decode()}, status=201)

    @routes.post("/revoke")
    async def post_revoke(request: web.Request) -> web.Response:
        admin(request)
        body = await read_json(request, RevokeRequest)
        return web.json_response(await blocking(certifier.revoke, body.serial, body.reason))

    @routes.get("/admin/list")
    async def get_list(request: web.Request) -> web.Response:
        admin(request)
        return web.json_response(await blocking(certifier.listing))

    return make_app(list(routes))
