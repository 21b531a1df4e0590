"""``semper serve shop`` over HTTPS: the shop's JSON endpoints, and its exchange party beside them.

Endpoints (all JSON; refusals ``{"error", "message"}`` with a 4xx status, as every semper service; the
status is the raised error's class's: 400 a request the shop cannot take, 404 an unknown deal, 409 a
request that does not fit the deal's state, 422 a refused payment, 503 no room now):

==========================  =================================================  ==================================
endpoint                    body                                               answer
==========================  =================================================  ==================================
``GET /catalogue``                                                             seller, items, payment modules
``POST /deals``             workflow, items [{sku, quantity}], nonce,          deal, offer (b64 signed offer),
                            anonymous                                          offer_tag (hex); nothing is stored
``POST /offer``             workflow (mail-order), items [{sku, quantity}],    offer (b64 signed standing offer),
                            anonymous                                          offer_tag (hex); nothing is stored
``POST /deals/order``       deal, order (b64: signed order, or canonical JSON  next: payment (terms, accept) |
                            when anonymous), offer and offer_tag (as           exchange | delivery; with an
                            ``/deals`` gave them), mailbox (exchanges),        envelope taken, the payee's
                            envelope (optional: the payer's first payment      answer as ``/deals/pay``'s
                            message, for a module that may start early)
``POST /deals/pay``         deal, envelope (payment manager message)           envelope (the payee's answer); with
                                                                               the last one, the confirmation and
                                                                               (mail order) the delivery as below
``POST /deals/confirm``     deal                                               confirmation (b64 signed: the
                                                                               delivery note when it states the
                                                                               payment)
``POST /deals/delivery``    deal                                               delivery (b64 signed) and content
                                                                               (b64), or shipped: false
``POST /admin/clear``       (Authorization: Bearer <admin secret>)            the acquirer's clearing answer
``GET /stats``                                                                 counters, ``db`` (its database work),
                                                                               ``card_steps`` (where card steps ran)
==========================  =================================================  ==================================

A mail order takes a *standing offer* (docs/commerce.md, "Standing offers"): ``POST /offer`` gives the
offer this shop makes to anyone for these items now, no deal, no nonce, signed once per kind of purchase
and kept (``Shop.standing_offer``); the buyer's client keeps it while it is valid and orders on it with a
deal id of its own making (32 hex digits) in ``POST /deals/order``. The other workflows ask ``POST /deals``.

The offer is stateless (docs/commerce.md, "The stateless offer"): ``POST /deals`` signs it and writes
nothing; the order carries it back with its tag, and the shop writes the deal with the order. An order
without them for a deal the shop has not written is ``unknown_deal`` (404); an offer that is not this
shop's as it signed it (another shop's, altered, a forged tag) is ``bad_offer`` (400), an expired one
``offer_expired`` (400). An order for a deal already written goes on from its row (the same order again:
the same answer; another: 409).

Information and contract deals are fair exchanges: after the order, the shop's exchange party
originates an exchange to the buyer's ``mailbox``; the buyer's client waits for its outcome there.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Annotated, Any
from urllib.parse import urlsplit

from aiohttp import web
from msgspec import Meta

from ..exchange.party import Party
from ..payment.errors import PaymentError
from ..payment.modules.purse import PurseModule
from ..support.http_service import ApiError, blocking, json_response, make_app, read_json
from ..support.shapes import Shape
from .shop import NoRoom, OrderChecks, Shop
from .shop_web import mount as mount_web

log = logging.getLogger("semper.shop")
ADMIT_WAIT = 10.0           # seconds a payment may wait for room at the PSAM before the shop says busy
ROOM_RETRY_FIRST = 0.005    # seconds before a payment waiting for room asks again, doubling each time...
ROOM_RETRY_MAX = 0.1        # ...up to this (room_retry_delays)
LOOP_STEP_BUDGET = 0.02     # seconds a local payment step may take on the event loop uncounted (LoopSteps)
SLOW_ALLOWANCE = 0.25       # seconds of the loop that steps over the budget may take within SLOW_WINDOW
SLOW_WINDOW = 5.0           # seconds over which SLOW_ALLOWANCE is counted (5 % of the loop's time)
POOL_AT_LEAST = 5.0         # after the allowance is spent, seconds the next steps go to the pool at least


# ---- the bodies (support/shapes.py); what the values mean is the Shop's to judge -----------------------
class Line(Shape, frozen=True):
    sku: str
    quantity: int


class NewDeal(Shape, frozen=True):
    workflow: str
    items: list[Line]
    nonce: str
    anonymous: bool = False


class StandingAsk(Shape, frozen=True):
    workflow: str
    items: list[Line]
    anonymous: bool = False


class Order(Shape, frozen=True):
    deal: str
    order: bytes                        # the signed order (DER), or canonical JSON when anonymous
    offer: bytes | None = None          # the signed offer as /deals gave it: the deal is made from it (stateless)
    offer_tag: Annotated[str, Meta(max_length=128)] = ""   # its tag, as /deals gave it (the shop's MAC of it)
    mailbox: str = ""                   # the buyer's exchange service (fair exchanges)
    envelope: dict[str, Any] | None = None   # the payer's first payment message (the card's hello), if early


class Payment(Shape, frozen=True):
    deal: str
    envelope: dict[str, Any]            # the payment manager's message: its modules read the body


class DealRef(Shape, frozen=True):
    deal: str


def step_on_loop(db: Any, steps: LoopSteps, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a card step on the running event loop, timed (:class:`LoopSteps`); with ``db``, its writes released
    into the loop's commit group (``Database.grouped``: one commit for the steps of a turn of the loop; every
    answer waits for it, :func:`_after_commit`). A step slower than :data:`LOOP_STEP_BUDGET` (its device, the
    disk) commits the group at once: the group is not held for the rest of the turn, whose other steps may be
    slow too, while other threads wait for its write lock (a failure there is the waiting answers' 503:
    ``Database.groups_lost``)."""
    started = time.perf_counter()
    try:
        if db is None:
            return fn(*args)
        with db.grouped(asyncio.get_running_loop().call_soon):
            return fn(*args)
    finally:
        took = time.perf_counter() - started
        if db is not None and took > LOOP_STEP_BUDGET and db.group_open():
            db.commit_group()
        pause = steps.took(took)
        if pause:
            log.warning("card payment steps over %.0f ms held the event loop for more than %.0f ms within %.0f s, "
                        "the last one %.0f ms (a slow PSAM, device or disk); the next ones run in the worker "
                        "pool for %.0f s", LOOP_STEP_BUDGET * 1000, SLOW_ALLOWANCE * 1000, SLOW_WINDOW,
                        took * 1000, pause)


def _after_commit(db: Any, handler: Any) -> Any:
    """``handler``, answering (its response or its refusal) only once the event loop's commit group, if one is
    open, has committed: what the answer says may rest on work released into it (the step's own, or one a
    remembered deal shows). If a group of the database was lost while the request was handled (here, or by
    one committed early: ``Database.commit_group``), its work may have been this request's: 503 instead."""
    async def settled(lost_before: int) -> None:
        if db.group_open():
            done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

            def heard(error: BaseException | None) -> None:
                if not done.done():
                    done.set_result(error)
            db.when_committed(heard)
            await done
        if db.groups_lost != lost_before:
            raise ApiError(503, "not_kept", "the shop could not write this step to its database, so it kept "
                           "nothing of it; send the request again")

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        lost_before = db.groups_lost
        try:
            response = await handler(request)
        except Exception:
            await settled(lost_before)          # a refusal, too, may rest on the group (a refused step's record)
            raise
        await settled(lost_before)
        return response
    return answer


def _e(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


async def _call(fn: Any, *args: Any) -> Any:
    """Run the shop's blocking step off the event loop; its CommerceError or PaymentError leaves as it is and
    becomes the refusal its class names (support/http_service.py)."""
    return await blocking(fn, *args)


class LoopSteps:
    """Whether the shop's local payment steps (``Shop.step_is_local``) run on its event loop now.

    Why it can change: a step on the loop holds every request of its worker while it waits for its
    device. The simulated PSAM answers in about a millisecond and a step's disk flushes take a few, so
    there the loop is the cheaper place (docs/performance.md, "Local payment steps on the event loop").
    A PSAM on a real smartcard takes tens to a hundred milliseconds a command, a PSAM device that
    restarts up to 15 s (``psam_device.CONNECT_WAIT``), and a proof the PSAM no longer holds is cleared at
    the acquirer over the network. So the steps that took longer than :data:`LOOP_STEP_BUDGET` (20 ms;
    the simulated PSAM's steps take about 3 ms at the median and 10 ms at the 99th percentile) may hold
    the loop for :data:`SLOW_ALLOWANCE` within :data:`SLOW_WINDOW` in all (5 % of its time, whoever makes
    them slow); the one that spends the allowance sends the next ones to the pool, where only their
    thread waits, for ten times as long as it took (at least :data:`POOL_AT_LEAST`); then one is tried
    on the loop again. Steps under the budget are not counted: a device whose every step takes just
    under 20 ms keeps the loop. And the step that spends the allowance holds the loop for as long as it
    takes (a restarting PSAM device: up to 15 s), as before: a step on the loop cannot be cut short.

    Why an allowance and not the first slow step: one step now and then takes 15-60 ms for reasons that
    do not last (the first orders of a cold worker, a collection of the interpreter's garbage, a database
    checkpoint). Sending every step to the pool for 5 s after each of those made the pool, not the loop,
    where many steps of a busy shop ran (in the bench: one 56 ms step, about half of a 10 s window), and
    the shop's CPU per purchase is about a sixth higher with every step in the pool (docs/performance.md,
    "One slow step no longer moves the card steps off the loop")."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pool_until = -math.inf
        self._slow: deque[tuple[float, float]] = deque()   # (when it ended, how long it took), in SLOW_WINDOW
        self._slow_total = 0.0
        # attempts of local steps run on the loop and in the pool, and how often the allowance was spent:
        # in GET /stats as card_steps, so a bench run says whether its steps ran where it assumes
        self.counts = {"on_loop": 0, "in_pool": 0, "sent_to_pool": 0}

    def on_loop(self) -> bool:
        return self._clock() >= self._pool_until

    def took(self, seconds: float) -> float:
        """Note a step's time on the loop; how long the next steps go to the pool for it (0: none)."""
        if seconds <= LOOP_STEP_BUDGET:
            return 0.0
        now = self._clock()
        slow = self._slow
        while slow and slow[0][0] <= now - SLOW_WINDOW:
            self._slow_total -= slow.popleft()[1]
        slow.append((now, seconds))
        self._slow_total += seconds
        if self._slow_total <= SLOW_ALLOWANCE:
            return 0.0
        slow.clear()
        self._slow_total = 0.0
        self.counts["sent_to_pool"] += 1
        pause = max(POOL_AT_LEAST, 10 * seconds)
        self._pool_until = now + pause
        return pause


LOOP_STEPS = web.AppKey("semper_loop_steps", LoopSteps)    # the app's LoopSteps (tests read it)


def room_retry_delays() -> Iterator[float]:
    """How long a payment waiting for room at the PSAM sleeps before each next attempt: 5 ms, doubling, up
    to 100 ms. Why not 5 ms throughout: each attempt is about 40 µs of the event loop, so a few hundred
    waiting requests (anonymous orders while the PSAM is full) took the whole loop for their 10 s (review of
    2026-12-07); backing off, each asks at most about a hundred times in :data:`ADMIT_WAIT`, and one that
    came when room was about to free still gets it within milliseconds."""
    delay = ROOM_RETRY_FIRST
    while True:
        yield delay
        delay = min(delay * 2, ROOM_RETRY_MAX)


def _settle(shop: Shop, deal: str, envelope: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Room at the payment's device, the payment step and, once it completes the payment, the
    confirmation and the delivery note, in one trip to the worker pool (none when the step is local:
    ``Shop.step_is_local``), their archive entries written
    in one transaction before the answer goes (docs/performance.md). No room: (None, why), before
    anything was asked of the device."""
    try:
        shop.admit(deal, envelope)
    except PaymentError as e:
        return None, str(e)
    with shop.batch():
        return shop.pay_and_deliver(deal, envelope), ""


def _order_settle(shop: Shop, body: Order, checks: OrderChecks) -> tuple[dict[str, Any] | None, str]:
    """An order with the payer's first payment message, in one trip to the worker pool or none (the device
    is asked; see ``_settle``): the order's answer, or (None, why) when the device has no room now, before anything was
    asked of it or written. ``checks``: the same for every attempt of one request, so the order's
    signature and its offer are checked once however long it waits for room."""
    try:
        with shop.batch():
            return shop.order(body.deal, body.order, body.envelope, body.offer, body.offer_tag, checks), ""
    except NoRoom as e:
        return None, str(e)


def _paid_answer(done: dict[str, Any]) -> dict[str, Any]:
    """A payment step's outcome as JSON: the payee's envelope and, once the payment is complete, the
    signed confirmation and (mail order, registration) the delivery note. When the note is the confirmation
    (it states the payment: ``Shop.confirmation_of``), it is sent once, as ``delivery``, and there is no
    ``confirmation``: the buyer's client finds the payment in the note (``blocks.fetch_confirmation``)."""
    answer = {k: v for k, v in done.items() if k not in ("confirmation", "delivery", "content")}
    if "confirmation" in done:      # the payment is complete: the signed confirmation comes with it
        if done.get("delivery") is None or done["confirmation"] != done["delivery"]:
            answer["confirmation"] = _e(done["confirmation"])
        if "delivery" in done:      # and the delivery note, which the buyer would ask for next anyway
            answer.update(shipped=True, delivery=_e(done["delivery"]), content=_e(done["content"]))
    return answer


def build_app(shop: Shop, make_party: Callable[[], Party] | None = None, admin_secret: str | None = None,
              worker: str = "0", recovers: Callable[[str], bool] | None = None,
              group_commits: bool = True) -> web.Application:
    """``make_party`` is called when the service starts, in its thread (the party's archive lives there).

    ``worker`` names this process among the shop's workers (``"0"`` when it runs alone): the exchanges it
    starts are recorded as its own, and when it starts it finishes those a process of the same name left
    open when it died (and those of any worker ``recovers`` accepts), through the exchange layer's
    recovery (``Party.recover``).

    ``group_commits``: the card steps the event loop takes in one turn share one commit (``Database.grouped``;
    SQLite only). A shop of several worker processes on one SQLite file leaves it off: a group holds the
    file's write lock across the steps of its turn, device waits included, and the other workers' event
    loops would wait on it (review of 2026-12-07)."""
    routes = web.RouteTableDef()
    tasks: set[asyncio.Task[Any]] = set()
    steps = LoopSteps()

    db = shop.store.db if group_commits and shop.store.db.backend == "sqlite" else None    # None: no groups
    if db is not None:
        db.on_group_lost(shop.store.forget_all)

    async def _here(fn: Any, *args: Any) -> Any:
        """Run the shop's step on the event loop (:func:`step_on_loop`)."""
        return step_on_loop(db, steps, fn, *args)

    def _runner(envelope: Any) -> Callable[..., Any]:
        """Where a payment step runs: on the loop when it is local work and local steps are quick now."""
        if not shop.step_is_local(envelope):
            return _call
        if steps.on_loop():
            steps.counts["on_loop"] += 1
            return _here
        steps.counts["in_pool"] += 1
        return _call

    box: dict[str, Party] = {}
    mine = recovers or (lambda owner: owner == worker)

    @routes.get("/catalogue")
    async def catalogue(request: web.Request) -> web.Response:
        return json_response(shop.view())

    @routes.post("/deals")
    async def deals(request: web.Request) -> web.Response:
        body = await read_json(request, NewDeal)
        items = [(i.sku, i.quantity) for i in body.items]
        # on the event loop, not the pool: a token signature and its tag cost less than the thread hop
        # would (docs/performance.md); nothing is written (the offer is stateless: the deal is first
        # written with its order, from the offer sent back; docs/commerce.md "The stateless offer")
        deal_id, der, tag = shop.new_deal(body.workflow, items, body.nonce, body.anonymous)
        return json_response({"deal": deal_id, "offer": _e(der), "offer_tag": tag})

    @routes.post("/offer")
    async def standing(request: web.Request) -> web.Response:
        body = await read_json(request, StandingAsk)
        # on the event loop: most answers are bytes signed before (a signature now and then, as /deals's);
        # a POST with a JSON body, not a GET with a query: the lean request path takes it (fast_http)
        der, tag = shop.standing_offer(body.workflow, [(i.sku, i.quantity) for i in body.items], body.anonymous)
        return json_response({"offer": _e(der), "offer_tag": tag})

    @routes.post("/deals/order")
    async def order(request: web.Request) -> web.Response:
        body = await read_json(request, Order)
        deal = body.deal
        if body.envelope is not None:               # the card's hello with it: the PSAM is asked (on the loop
                                                    # when the step is local: Shop.step_is_local; else the pool)
            checks = OrderChecks()                  # made once, however often it waits for room
            # where it runs is chosen at each attempt: a slow step meanwhile sends the waiting ones to the pool
            answer = _paid_answer(await _waited(lambda: _runner(body.envelope)(_order_settle, shop, body, checks)))
        else:                                       # CPU only (a verification, archive entries): no hop
            with shop.batch():                      # the offer's and the order's entries: one archive write
                answer = shop.order(deal, body.order, None, body.offer, body.offer_tag)
        if answer["next"] == "exchange":
            mailbox = body.mailbox
            parts = urlsplit(mailbox)
            party = box.get("party")
            if party is None:
                raise ApiError(503, "no_exchange", "this shop runs no exchange party; it sells by mail order only")
            if parts.scheme != "https" or not parts.hostname:
                raise ApiError(400, "missing_field", "a fair exchange needs your client's https mailbox URL")
            offer, want, _sd = await _call(shop.exchange_plan, deal)
            # one exchange per deal, whichever worker takes the order: the same order again (its answer
            # was lost, the client sent it once more) must not start a second exchange, whose refusal the
            # buyer would take for the deal's outcome while the first one runs on (found by semper chaos)
            session = secrets.token_hex(16)
            if await _call(shop.start_exchange, deal, session, worker):
                exchange = party.originate(mailbox, offer, want, fair=True, session=session)
                _spawn(_finish(deal, exchange))
        return json_response(answer)

    async def _finish(deal: str, run: Any) -> None:
        outcome = await run
        await blocking(shop.exchanged, deal, outcome.status, outcome.reason, outcome.xid)

    def _spawn(coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    @routes.post("/deals/pay")
    async def pay(request: web.Request) -> web.Response:
        body = await read_json(request, Payment)
        done = await _waited(lambda: _runner(body.envelope)(_settle, shop, body.deal, body.envelope))
        return json_response(_paid_answer(done))

    async def _waited(attempt: Callable[[], Any]) -> dict[str, Any]:
        """The payment step once there is room at the payment device (the PSAM keeps only so many debits
        open), waiting for it on the event loop and bounded. Waiting in a worker thread instead would let
        waiting payments take every thread and starve the very proofs that free the room: a worker thread
        only asks, and comes back at once when there is none. Only the payment this shop asked for in
        an ordered deal gets room (``Shop.admit``; with the order, once the order is checked): anything
        else goes on to the shop, which refuses it."""
        deadline = asyncio.get_running_loop().time() + ADMIT_WAIT
        delays = room_retry_delays()
        while True:
            settled: tuple[dict[str, Any] | None, str] = await attempt()
            done, busy = settled
            if done is not None:
                return done
            if asyncio.get_running_loop().time() >= deadline:
                raise ApiError(503, "busy", busy)
            await asyncio.sleep(next(delays))

    @routes.post("/deals/confirm")
    async def confirm(request: web.Request) -> web.Response:
        body = await read_json(request, DealRef)
        return json_response({"confirmation": _e(await _call(shop.confirm, body.deal))})

    @routes.post("/deals/delivery")
    async def delivery(request: web.Request) -> web.Response:
        body = await read_json(request, DealRef)
        note, content = await _call(shop.deliver, body.deal)
        return json_response({"shipped": note is not None, "delivery": _e(note), "content": _e(content)})

    @routes.post("/admin/clear")
    async def clear(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if admin_secret is None or not hmac.compare_digest(given.encode(), admin_secret.encode()):
            raise ApiError(403, "forbidden", "clearing needs the shop's admin secret")
        module = shop.payments.module("card-purse")
        if not isinstance(module, PurseModule):
            raise ApiError(404, "not_found", "this shop takes no card purse payments")
        return json_response({"cleared": await _call(module.clear)})

    @routes.get("/stats")
    async def stats(request: web.Request) -> web.Response:
        return json_response({**await _call(shop.stats), "card_steps": dict(steps.counts)})

    app = make_app([web.RouteDef(r.method, r.path, _after_commit(db, r.handler), r.kwargs)
                    if db is not None and isinstance(r, web.RouteDef) else r for r in routes])
    app[LOOP_STEPS] = steps
    mount_web(app, shop)                        # the web site: catalogue, order form, delivery (shop_web.py)

    async def start(app: web.Application) -> None:
        if make_party is None:
            return
        party = box["party"] = await make_party().start()
        open_deals = await _call(shop.store.exchanges, mine)
        if open_deals:
            _spawn(_recover(party, open_deals))

    async def _recover(party: Party, open_deals: list[Any]) -> None:
        """Exchanges a dead process of this worker left open: finished with the third party where needed
        (the exchange layer's recovery), and the deal decided on the outcome."""
        sessions = {str(sd.exchange["session"]): sd.deal.deal_id for sd in open_deals}
        try:
            outcomes = await party.recover(sessions=set(sessions))
        except Exception:                  # the deals stay open; the next start tries again
            log.exception("recovering the open exchanges failed")
            return
        ended = set()
        for o in outcomes:
            deal = sessions.get(o.session)
            if deal is not None:
                ended.add(deal)
                await blocking(shop.exchanged, deal, o.status, o.reason, o.xid)
        for session, deal in sessions.items():
            if deal not in ended and not party.knows(session):      # it never got as far as a proposal
                await blocking(shop.exchanged, deal, "no-exchange", "the shop stopped before the exchange "
                               "was negotiated; nothing was given", None)

    async def stop(app: web.Application) -> None:
        for t in list(tasks):
            t.cancel()
        party = box.pop("party", None)
        if party is not None:
            await party.stop()
            party.close()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app
