"""The agent's loopback endpoint and its queue of deals: where a page may ask, and nothing more.

Why each check (docs/web.md has the whole threat model):

* **Host** must be this agent's own loopback address and port (``127.0.0.1:PORT``, ``localhost:PORT``,
  ``[::1]:PORT``): a page on a rebound DNS name reaches the port with its own name in Host and is
  refused (421), so DNS rebinding gets nothing.
* **Origin** must be an https origin, the very shop the request names (a page may hand over purchases
  from its own shop only), and one the user allowed: on the command line (``--allow``), or by
  answering the agent's first-contact question in its terminal. ``null`` (file://, sandboxed frames),
  plain http and other sites are refused (403), and CORS lets no other page read an answer.
* **The per-start secret** (``Authorization: Bearer``, in a 0600 file beside the agent) stands for
  the user's own tools: ``semper agent open`` (the ``web+semper:`` link handler) carries it.
* **Rate**: a token bucket per origin and a short queue; a flood gets 429, and never more than a few
  TINGUIN screens, each of which the user may decline.
* **The deal** runs exactly as ``semper buy`` runs it (``commerce.app.workflow_for``): the agent asks the
  shop for the checkout's items, the workflow asks it for a signed offer with a fresh nonce, verifies it
  and validates the page's form against the signed offer's form spec (a form the offer does not allow is
  refused before anything is signed), and every decision, PIN and signature goes through the TINGUIN.

The page learns a job id, then the outcome: the deal id, satisfied or not, and a link to its delivery
(the shop's page for that deal, keyed by the digest of the buyer's order). Never the PIN, the card's
data, the balance or the evidence.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from semper.hardware.errors import SemperError

from ..commerce.app import Purchase, workflow_for
from ..commerce.deal import WORKFLOWS
from ..commerce.errors import CommerceError, ServiceUnavailable
from ..commerce.setup import BuyerConfig
from ..commerce.workflows import DealResult
from ..support.channels import ChannelError, JsonClient, ServiceError
from ..support.http_service import ApiError, ServiceRunner, json_errors, read_json, refusal
from ..tinguin.api import TrustedUI
from .handoff import Handoff, origin_of

log = logging.getLogger("semper.agent")

DEFAULT_PORT = 8470
BURST = 3                    # hand-offs one origin may make at once ...
EVERY = 20.0                 # ... and then one per this many seconds
QUEUE = 2                    # deals waiting or running at a time (one TINGUIN, one card)
MAX_JOBS = 200               # finished jobs remembered for their pages
Runner = Callable[[Callable[[TrustedUI], DealResult]], DealResult]
_JOB = re.compile(r"^[A-Za-z0-9_-]{22}$")


@dataclass
class Job:
    """One hand-off: what the page asked, and what it may learn."""

    id: str
    origin: str | None                 # the page's origin; None for a local tool with the secret
    request: Handoff
    shop: str
    first_contact: bool = False
    status: str = "waiting"            # waiting, running, done, refused
    outcome: str | None = None         # satisfied, cancelled, failed, dispute
    deal: str | None = None
    delivery: str | None = None
    reason: str = ""                   # for the agent's terminal and a local tool, never for a page

    def public(self) -> dict[str, Any]:
        return {"job": self.id, "status": self.status, "outcome": self.outcome, "deal": self.deal,
                "delivery": self.delivery}


@dataclass
class Bucket:
    tokens: float
    burst: int
    every: float
    at: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.every)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Agent:
    """The buyer's agent: ``app()`` is its endpoint, ``serve()`` runs the deals one at a time.

    ``config``: the buyer's client configuration (its shop URL is replaced by each request's shop);
    ``card``: opens the buyer's card (called in the TINGUIN's worker thread); ``runner``: runs a workflow
    in the TINGUIN (interactive, or its scripted user); ``confirm``: asks the user about a shop origin
    it has not allowed yet (None: such requests are refused).
    """

    def __init__(self, config: BuyerConfig, card: Callable[[], Any], runner: Runner, *, allowed: tuple[str, ...] = (),
                 confirm: Callable[[str], bool] | None = None, burst: int = BURST, every: float = EVERY,
                 queue_limit: int = QUEUE, say: Callable[[str], None] | None = None) -> None:
        self.config, self.card, self.runner, self.confirm = config, card, runner, confirm
        self.allowed: set[str] = set()
        for a in allowed:
            origin = origin_of(a)
            if origin is None:
                raise ValueError(f"{a!r} is not an https origin (https://host[:port])")
            self.allowed.add(origin)
        self.burst, self.every, self.queue_limit = burst, every, queue_limit
        self.say = say or (lambda line: log.info("%s", line))
        self.secret = secrets.token_urlsafe(32)
        self.port = 0
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.queue: queue.Queue[Job] = queue.Queue()
        self.pending = 0
        self.buckets: dict[str, Bucket] = {}
        self.lock = threading.Lock()
        self.refusals: list[tuple[str, str]] = []         # (code, what was refused): the terminal's and tests' view
        self.runner_service: ServiceRunner | None = None

    # ---- the endpoint ------------------------------------------------------------------------------
    def hosts(self) -> set[str]:
        return {f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}"}

    def may_ask(self, origin: str | None) -> bool:
        """Whether a page of ``origin`` may ask at all (allowed, or the user can be asked about it)."""
        return origin is not None and origin_of(origin) == origin and (origin in self.allowed
                                                                       or self.confirm is not None)

    def _local(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), self.secret.encode())

    def _refuse(self, status: int, code: str, message: str, what: str) -> ApiError:
        with self.lock:
            self.refusals.append((code, what))
            del self.refusals[:-100]
        self.say(f"refused {what}: {message}")
        return ApiError(status, code, message)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        try:
            if request.host not in self.hosts():
                raise self._refuse(421, "misdirected", "this agent answers only requests addressed to 127.0.0.1 or "
                                   "localhost on its own port (a rebound DNS name is refused)",
                                   f"a request for Host {request.host[:80]!r} (origin {str(origin)[:80]!r})")
            response = await handler(request)
        except SemperError as e:
            response = refusal(request, e)
        if self.may_ask(origin) and request.host in self.hosts():
            response.headers["Access-Control-Allow-Origin"] = str(origin)
            response.headers["Vary"] = "Origin"
        return response

    async def _preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if not self.may_ask(origin):
            raise self._refuse(403, "forbidden_origin", "this agent takes hand-offs only from https shop pages the "
                               "user allowed", f"a preflight from {str(origin)[:80]!r}")
        headers = {"Access-Control-Allow-Methods": "POST, GET", "Access-Control-Allow-Headers": "Content-Type",
                   "Access-Control-Max-Age": "600"}
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return web.Response(status=204, headers=headers)

    async def _purchase(self, request: web.Request) -> web.Response:
        local = self._local(request)
        origin = request.headers.get("Origin")
        if not local:
            if origin is None:
                raise self._refuse(403, "no_origin", "a page's request names its origin; a local tool sends the "
                                   "agent's secret (semper agent open)", "a hand-off without origin or secret")
            if origin_of(origin) != origin:
                raise self._refuse(403, "forbidden_origin", f"pages from {origin[:80]!r} cannot hand purchases to "
                                   "SEMPER: only https shop pages can (not file://, not plain http)",
                                   f"a hand-off from {origin[:80]!r}")
        first = not local and origin not in self.allowed
        if first and self.confirm is None:
            raise self._refuse(403, "first_contact", f"SEMPER does not know {origin} yet: the user allows a shop "
                               f"once, at the agent (semper agent --allow {origin})", f"a first hand-off from {origin}")
        try:
            body = await read_json(request, Handoff)
        except ApiError as e:
            raise self._refuse(e.status, e.code, e.message, f"a hand-off from {origin or 'a local tool'} that is not "
                               "a purchase request") from None
        shop = origin_of(body.shop)
        if shop is None:
            raise self._refuse(400, "bad_shop", "the shop must be an https origin (https://host[:port])",
                               f"a hand-off naming the shop {body.shop[:80]!r}")
        if not local and shop != origin:
            raise self._refuse(403, "not_the_shop", "a page may hand over purchases only from its own shop",
                               f"a hand-off from {origin} for the shop {shop}")
        key = origin or "local"
        with self.lock:
            bucket = self.buckets.setdefault(key, Bucket(self.burst, self.burst, self.every))
            limited = not bucket.take()
            busy = not limited and self.pending >= self.queue_limit
            if not (limited or busy):
                job = Job(secrets.token_urlsafe(16), None if local else origin, body, shop, first_contact=first)
                self.pending += 1
                self.jobs[job.id] = job
                while len(self.jobs) > MAX_JOBS:
                    self.jobs.popitem(last=False)
        if limited:
            raise self._refuse(429, "too_many", "too many hand-offs from this page; wait a little",
                               f"a hand-off from {key} (rate)")
        if busy:
            raise self._refuse(429, "busy", "SEMPER is busy with other purchases; try again when they are done",
                               f"a hand-off from {key} (queue full)")
        self.say(f"hand-off from {key}: offer {body.offer} at {shop}; the TINGUIN will show the signed offer")
        self.queue.put(job)
        return web.json_response(job.public(), status=202)

    async def _status(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job"]
        job = self.jobs.get(job_id) if _JOB.match(job_id) else None
        if job is None or not (self._local(request) or (job.origin is not None
                                                        and request.headers.get("Origin") == job.origin)):
            raise ApiError(404, "not_found", "no such purchase here")
        answer = job.public()
        if self._local(request):
            answer["reason"] = job.reason
        return web.json_response(answer)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors, self._guard], client_max_size=16 * 1024)
        app.add_routes([web.post("/v1/purchases", self._purchase), web.options("/v1/purchases", self._preflight),
                        web.get("/v1/purchases/{job}", self._status),
                        web.options("/v1/purchases/{job}", self._preflight)])
        return app

    def start(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> str:
        """Listen on loopback only; returns the agent's URL."""
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the agent listens on loopback only (127.0.0.1 or ::1)")
        self.runner_service = ServiceRunner(self.app(), host, port).start()
        self.port = self.runner_service.port
        return self.runner_service.url

    def stop(self) -> None:
        if self.runner_service is not None:
            self.runner_service.stop()

    # ---- the deals ---------------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        """Run the handed-off deals one after the other until ``stop`` is set (the TINGUIN's thread: in a
        terminal, the main thread)."""
        while not stop.is_set():
            try:
                job = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.run(job)
            finally:
                with self.lock:
                    self.pending -= 1

    def checkout(self, shop: str, offer: str) -> tuple[str, list[tuple[str, int]]]:
        """The workflow and items of the page's offer id, from the shop itself (over its CA-checked TLS)."""
        try:
            with JsonClient(shop, self.config.ca_root_pem, name="the shop", timeout=15.0) as client:
                data = client.get(f"/checkouts/{offer}")
        except ServiceError as e:
            raise CommerceError(f"the shop does not know the offer {offer}: {e.message or e.code}") from None
        except ChannelError as e:
            raise ServiceUnavailable(f"{e}; it is not a shop the CA vouches for, or it did not answer") from None
        try:
            workflow = str(data["workflow"])
            items = [(str(i["sku"]), int(i["quantity"])) for i in data["items"]]
        except (KeyError, TypeError, ValueError) as e:
            raise CommerceError(f"the shop's answer for offer {offer} is malformed ({e})") from None
        if workflow not in WORKFLOWS or not items:
            raise CommerceError(f"the shop's offer {offer} names no workflow and items this client knows")
        return workflow, items

    def run(self, job: Job) -> None:
        job.status = "running"
        try:
            if job.first_contact and job.origin not in self.allowed:
                assert self.confirm is not None and job.origin is not None
                if not self.confirm(job.origin):
                    job.status, job.reason = "refused", f"you did not allow {job.origin} to hand you purchases"
                    self.say(job.reason)
                    return
                self.allowed.add(job.origin)
            workflow, items = self.checkout(job.shop, job.request.offer)
            cfg = replace(self.config, shop_url=job.shop)
            purchase = Purchase(workflow, items, dict(job.request.form))
            result = self.runner(workflow_for(cfg, self.card, purchase))
        except SemperError as e:
            job.status, job.reason = "refused", str(e)
            self.say(f"hand-off {job.id} refused: {e}")
            return
        job.deal, job.outcome, job.reason = result.deal_id, result.status.value, result.summary
        order = result.documents.get("order")
        if result.ok and order and result.deal_id and workflow != "contract":
            job.delivery = f"{job.shop}/delivery/{result.deal_id}?order={hashlib.sha256(order).hexdigest()}"
        job.status = "done"
        self.say(f"deal {result.deal_id}: {result.status.value}: {result.summary}")
