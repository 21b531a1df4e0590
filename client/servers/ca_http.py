"""The CA's HTTPS endpoints (aiohttp): registration, CA certificate, CRL, status, operator admin.

Public: ``GET /ca``, ``GET /crl`` (DER, application/pkix-crl), ``GET /crl.pem``,
``GET /certificates/{serial}``, ``POST /register``. Operator: ``POST /admin/persons``,
``POST /admin/revoke``, ``GET /admin/list`` with ``Authorization: Bearer <admin secret>`` (the
secret printed by ``semper ca init``; the CA keeps only its hash). docs/services.md has the bodies.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec
from aiohttp import web
from msgspec import Meta

from ..support.http_service import ApiError, blocking, make_app, read_json
from ..support.pki import pem
from ..support.shapes import Shape
from .ca import CertificationAuthority

MAX_CSR = 8 * 1024


class Registration(Shape, frozen=True):
    """``POST /register``: the registration id, the CSR (DER) and its MAC under the registration key."""

    codes = {"registration_id": "bad_registration_id"}
    registration_id: Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
    csr: Annotated[bytes, Meta(min_length=1, max_length=MAX_CSR)]
    mac: Annotated[bytes, Meta(min_length=1, max_length=32)]


class NewPerson(Shape, frozen=True):
    """``POST /admin/persons``: who may register, with the host names a server certificate may name."""

    name: str
    email: str | msgspec.UnsetType = msgspec.UNSET
    role: str = "person"
    hosts: Annotated[list[Annotated[str, Meta(min_length=1, max_length=253)]], Meta(max_length=16)] = []


class Revocation(Shape, frozen=True):
    """``POST /admin/revoke``."""

    serial: str
    reason: str = "unspecified"


T = TypeVar("T")


async def _call(fn: Callable[..., T], *args: Any) -> T:
    """Run a CA operation off the loop; a CaRefusal leaves as it is and becomes the JSON refusal with its
    own status and code (support/http_service.py)."""
    return await blocking(fn, *args)


def build_app(ca: CertificationAuthority) -> web.Application:
    routes = web.RouteTableDef()

    async def admin(request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme != "Bearer" or not secret:
            raise ApiError(401, "unauthorised", "operator endpoints need 'Authorization: Bearer <admin secret>'")
        if not await _call(ca.check_admin, secret.strip()):
            raise ApiError(403, "forbidden", "the admin secret is wrong")

    @routes.get("/ca")
    async def get_ca(request: web.Request) -> web.Response:
        der = await _call(ca.certificate)
        return web.json_response({"certificate": pem(der)})

    @routes.get("/crl")
    async def get_crl(request: web.Request) -> web.Response:
        der = await _call(ca.crl)
        return web.Response(body=der, content_type="application/pkix-crl")

    @routes.get("/crl.pem")
    async def get_crl_pem(request: web.Request) -> web.Response:
        der = await _call(ca.crl)
        return web.Response(text=pem(der, "X509 CRL"), content_type="application/x-pem-file")

    @routes.get("/certificates/{serial}")
    async def get_status(request: web.Request) -> web.Response:
        serial = request.match_info["serial"]
        if len(serial) > 64:
            raise ApiError(400, "bad_serial", "a serial number has at most 40 hex digits")
        return web.json_response(await _call(ca.status, serial))

    @routes.post("/register")
    async def post_register(request: web.Request) -> web.Response:
        body = await read_json(request, Registration)
        issued = await _call(ca.register, body.registration_id, body.csr, body.mac)
        return web.json_response({"serial": issued.serial, "certificate": pem(issued.certificate),
                                  "ca_certificate": pem(await _call(ca.certificate)), "repeated": issued.repeated})

    @routes.post("/admin/persons")
    async def post_person(request: web.Request) -> web.Response:
        await admin(request)
        body = await read_json(request, NewPerson)
        email = None if body.email is msgspec.UNSET else body.email
        reg_id, key = await _call(lambda: ca.add_person(body.name, email=email, role=body.role,
                                                        hosts=tuple(body.hosts)))
        return web.json_response({"registration_id": reg_id, "registration_key": key}, status=201)

    @routes.post("/admin/revoke")
    async def post_revoke(request: web.Request) -> web.Response:
        await admin(request)
        body = await read_json(request, Revocation)
        cert = await _call(ca.revoke, body.serial, body.reason)
        return web.json_response({"serial": cert.serial, "revoked_at": cert.revoked_at,
                                  "reason": cert.revocation_reason})

    @routes.get("/admin/list")
    async def get_list(request: web.Request) -> web.Response:
        await admin(request)
        return web.json_response(await _call(ca.listing))

    return make_app(list(routes))
