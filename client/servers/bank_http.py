"""The bank's HTTPS endpoints: ``GET /info`` and ``POST /<operation>`` for every operation.

Every POST body is a signed request (``{"body", "certificate", "signature"}``); every answer to it
is the bank's signed answer, every refusal ``{"error", "message"}`` with a 4xx status and no change
in the ledger (the operation's transaction was rolled back). Operations and their parameters:
docs/payments.md.
"""
from __future__ import annotations

from aiohttp import web

from ..payment.wire import SignedJson
from ..support.db import DatabaseError
from ..support.http_service import ApiError, blocking, make_app, read_json
from .bank import Bank

MAX_BANK_BODY = 16 * 1024 * 1024        # a full PSAM batch of 5000 proofs is about 2 MB


def build_app(bank: Bank) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/info")
    async def info(request: web.Request) -> web.Response:
        return web.json_response(bank.info())

    @routes.post("/{op:[a-z]+/[a-z_]+}")
    async def operation(request: web.Request) -> web.Response:
        op = request.match_info["op"]
        if op not in bank.ops:
            raise ApiError(404, "unknown_operation", f"there is no operation {op!r}")
        envelope = await read_json(request, SignedJson)
        try:                            # a BankRefusal leaves as it is: its own status and code
            answer = await blocking(bank.handle, op, envelope)
        except DatabaseError as e:      # the client's next step, not only what failed
            raise ApiError(503, "busy",
                           f"the bank's database is busy; retry with the same idempotency key ({e})") from None
        return web.json_response(answer)

    return make_app(list(routes), max_body=MAX_BANK_BODY)
