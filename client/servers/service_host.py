"""Where a shop (or the mall) offers its commerce services for download: ``GET /services[/{name}]``.

The folder holds ``NAME.json`` (the service document, as its author wrote it) and ``NAME.cert``
(the certifier's service certificate, DER), put there by the operator (``semper shop service add``
or by hand). The host vouches for nothing: the client checks the certificate, the certifier's
revocation list and that the document is what was certified (``commerce/services/download.py``).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from ..commerce.services.document import valid_name
from ..support.http_service import ApiError

MAX_DOCUMENT = 64 * 1024


def listing(folder: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = json.loads(path.read_bytes()[:MAX_DOCUMENT])
        except ValueError:
            continue
        if isinstance(doc, dict) and valid_name(path.stem):
            out.append({"name": path.stem, "title": doc.get("title"), "version": doc.get("version"),
                        "certified": path.with_suffix(".cert").exists()})
    return out


def offered(folder: Path, name: str) -> dict[str, Any]:
    """``{document, certificate}`` (the certificate base64 DER, or null when the service has none)."""
    if not valid_name(name):
        raise ApiError(400, "bad_service_name", "a service name is lower-case letters, digits and '-'")
    path = folder / f"{name}.json"
    try:
        raw = path.read_bytes()
    except OSError:
        raise ApiError(404, "unknown_service", f"this shop offers no service {name!r}") from None
    if len(raw) > MAX_DOCUMENT:
        raise ApiError(500, "internal", f"the service {name!r} is too large to offer")
    cert = path.with_suffix(".cert")
    return {"document": json.loads(raw),
            "certificate": base64.b64encode(cert.read_bytes()).decode() if cert.exists() else None}


def mount_services(app: web.Application, folder: Path) -> None:
    async def services(request: web.Request) -> web.Response:
        return web.json_response({"services": listing(folder)})

    async def service(request: web.Request) -> web.Response:
        return web.json_response(offered(folder, request.match_info["name"]))

    app.router.add_get("/services", services)
    app.router.add_get("/services/{name}", service)
