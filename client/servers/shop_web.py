"""The shop's web site, served beside its JSON endpoints by ``semper serve shop``: catalogue, product pages,
the order form, the hand-off page, and after a purchase the delivery.

Why it is only a business application: the page is the seller's, so it is untrusted by the buyer. It
may *ask* the buyer's local client (``semper agent``) to process an order; it never sees the signed
offer, the order, the PIN or the evidence. What it shows about the purchase (price, seller) is the
shop's own text; the client fetches and verifies the signed offer itself and shows that in the
TINGUIN (docs/web.md has the hand-off protocol and its threat model).

Pages are server-side HTML from Jinja2 templates with autoescape on (``web_templates/``), readable
without JavaScript; one small script of the shop's own (``web_static/shop.js``) hands the order to the
agent and shows the outcome. The order form is generated from the same form specs the commerce layer
validates (``commerce/forms.py``) and is validated with them here too, so the page can say what is
wrong before anything is handed off.

==============================  ===========================================================================
route                           what
==============================  ===========================================================================
``GET /``                       the catalogue
``GET /items/{sku}``            a product page (quantity for physical goods)
``GET /items/{sku}/order``      the order form for ``?quantity=N``
``POST /items/{sku}/order``     the form checked; the hand-off page with a checkout id
``GET /checkouts/{id}``         JSON for the agent: the workflow and items of a checkout (the offer id)
``GET /delivery/{deal}``        the delivery of a paid deal, for ``?order=<SHA-256 of the buyer's order>``
``GET /delivery/{deal}/file``   information goods, for the same ``?order=`` (the digest the receipt names)
``GET /static/{name}``          the script and the style sheet
==============================  ===========================================================================

A checkout is only the items the buyer chose (kept in memory for :data:`CHECKOUT_TTL`); the form values
go to the agent in the hand-off and reach the shop only inside the buyer's signed order.
"""
from __future__ import annotations

import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
from aiohttp import web

from ..commerce.catalogue import CatalogueItem
from ..commerce.errors import FormError
from ..commerce.forms import FormSpec, form_for
from ..support.http_service import blocking
from ..support.money import format_amount
from ..support.verify import verify_statement
from .shop import Shop

HERE = Path(__file__).resolve().parent
DEFAULT_AGENT = "http://127.0.0.1:8470"
AGENT_ENV = "SEMPER_AGENT_URL"        # where the buyer's agent listens, if not on the default port
CHECKOUT_TTL = 30 * 60                 # seconds a checkout id stays valid (the offer itself is signed later)
MAX_CHECKOUTS = 2_000
WORKFLOW_OF_KIND = {"physical": "mail-order", "information": "information", "registration": "registration",
                    "contract": "contract"}
KIND_LABEL = {"physical": "sent by post", "information": "download, fairly exchanged for the payment",
              "registration": "membership", "contract": "contract, signed by both sides"}
_CHECKOUT = re.compile(r"^[A-Za-z0-9_-]{22}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
STATIC = {"shop.js": "text/javascript", "shop.css": "text/css"}


@dataclass(frozen=True)
class Checkout:
    """What the buyer chose on the page: the offer the agent will ask the shop to sign."""

    workflow: str
    sku: str
    quantity: int
    created: float


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "web_templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["money"] = lambda minor, currency: format_amount(int(minor), int(currency))
    return env


def agent_url() -> str:
    """The buyer's agent as the page's script should reach it (a loopback origin; docs/web.md)."""
    url = os.environ.get(AGENT_ENV, DEFAULT_AGENT).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.path:
        raise ValueError(f"{AGENT_ENV} must be a loopback origin such as {DEFAULT_AGENT}, not {url!r}")
    return url


def handoff_link(request: dict[str, Any]) -> str:
    """The ``web+semper:`` link for a hand-off request (docs/web.md): what a page without script offers."""
    pairs = [("shop", request["shop"]), ("offer", request["offer"])]
    pairs += [(f"form.{k}", v) for k, v in request["form"].items()]
    return "web+semper:purchase?" + urlencode(pairs, quote_via=quote)


class ShopWeb:
    def __init__(self, shop: Shop, agent: str | None = None) -> None:
        self.shop = shop
        self.agent = agent or agent_url()
        self.env = _environment()
        self.checkouts: dict[str, Checkout] = {}
        self.csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                    f"connect-src 'self' {self.agent}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

    # ---- helpers ----------------------------------------------------------------------------------
    def page(self, name: str, status: int = 200, **values: Any) -> web.Response:
        html = self.env.get_template(name).render(seller=self.shop.name, **values)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": self.csp, "X-Content-Type-Options": "nosniff",
                                     "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})

    def error(self, status: int, title: str, message: str) -> web.Response:
        return self.page("error.html", status, title=title, message=message)

    def item(self, sku: str) -> CatalogueItem | None:
        return self.shop.catalogue.items.get(sku)

    @staticmethod
    def form_spec(item: CatalogueItem) -> FormSpec:
        return form_for(item.kind, False)

    @staticmethod
    def quantity(item: CatalogueItem, raw: str | None) -> int | None:
        if item.kind != "physical":
            return 1 if raw in (None, "", "1") else None
        try:
            q = int(raw or "1")
        except ValueError:
            return None
        return q if 1 <= q <= item.max_quantity else None

    def origin(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _remember(self, checkout: Checkout) -> str:
        now = time.monotonic()
        if len(self.checkouts) >= MAX_CHECKOUTS:
            for key, c in list(self.checkouts.items()):
                if now - c.created > CHECKOUT_TTL:
                    del self.checkouts[key]
        if len(self.checkouts) >= MAX_CHECKOUTS:
            self.checkouts.pop(next(iter(self.checkouts)))          # the oldest goes
        key = secrets.token_urlsafe(16)
        self.checkouts[key] = checkout
        return key

    # ---- pages ------------------------------------------------------------------------------------
    async def catalogue(self, request: web.Request) -> web.Response:
        items = sorted(self.shop.catalogue.items.values(), key=lambda i: i.sku)
        return self.page("catalogue.html", title="Catalogue", items=items, kinds=KIND_LABEL)

    async def product(self, request: web.Request) -> web.Response:
        item = self.item(request.match_info["sku"])
        if item is None:
            return self.error(404, "No such item", "This shop sells no such item; see the catalogue.")
        return self.page("item.html", title=item.description, item=item, kinds=KIND_LABEL)

    async def order_form(self, request: web.Request) -> web.Response:
        item = self.item(request.match_info["sku"])
        if item is None:
            return self.error(404, "No such item", "This shop sells no such item; see the catalogue.")
        qty = self.quantity(item, request.query.get("quantity"))
        if qty is None:
            return self.error(400, "Quantity", f"Choose a quantity from 1 to {item.max_quantity}.")
        return self.page("order.html", title=f"Order: {item.description}", item=item, quantity=qty,
                         spec=self.form_spec(item), values={}, errors={})

    async def checkout(self, request: web.Request) -> web.Response:
        item = self.item(request.match_info["sku"])
        if item is None:
            return self.error(404, "No such item", "This shop sells no such item; see the catalogue.")
        posted = await request.post()
        qty = self.quantity(item, str(posted.get("quantity", "1")))
        if qty is None:
            return self.error(400, "Quantity", f"Choose a quantity from 1 to {item.max_quantity}.")
        spec = self.form_spec(item)
        raw = {f.name: str(posted.get(f.name, "")) for f in spec.fields}
        errors: dict[str, str] = {}
        values: dict[str, str] = {}
        for f in spec.fields:                                  # every field's problem at once, as people expect
            try:
                values.update(FormSpec(spec.name, (f,)).validate({f.name: raw[f.name]}))
            except FormError as e:
                errors[f.name] = str(e).split(": ", 1)[-1]
        if errors:
            return self.page("order.html", 400, title=f"Order: {item.description}", item=item, quantity=qty,
                             spec=spec, values=raw, errors=errors)
        workflow = WORKFLOW_OF_KIND[item.kind]
        key = self._remember(Checkout(workflow, item.sku, qty, time.monotonic()))
        handoff = {"shop": self.origin(request), "offer": key, "form": values}
        return self.page("handoff.html", title="Pay with SEMPER", item=item, quantity=qty, spec=spec, values=values,
                         request=handoff, link=handoff_link(handoff), agent=self.agent, workflow=workflow)

    async def checkout_json(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        c = self.checkouts.get(key) if _CHECKOUT.match(key) else None
        if c is None or time.monotonic() - c.created > CHECKOUT_TTL:
            return web.json_response({"error": "not_found", "message": "no such checkout here (it expired, or this "
                                      "shop never made it): choose the item again on the shop's page"}, status=404)
        return web.json_response({"workflow": c.workflow, "items": [{"sku": c.sku, "quantity": c.quantity}]})

    async def _paid_deal(self, request: web.Request) -> Any:
        """The shop's deal for the link, if ``?order=`` is the digest of its order and it is paid; else None
        (one answer for every way of being wrong: the link tells nothing about other deals)."""
        deal_id = request.match_info["deal"]
        given = request.query.get("order", "")
        # the deal as committed in the shop's database, read off the event loop
        sd = await blocking(lambda: self.shop.find(deal_id, fresh=True)) if _DIGEST.match(given) else None
        if sd is None or sd.order_digest is None or not hmac.compare_digest(given, sd.order_digest):
            return None
        return sd if sd.paid else None

    async def delivery(self, request: web.Request) -> web.Response:
        sd = await self._paid_deal(request)
        if sd is None:
            return self.error(404, "No delivery here", "This link names no paid deal of this shop. Your SEMPER "
                              "client gives the link to a delivery after the deal.")
        note: dict[str, Any] | None = None
        if sd.delivery is not None:
            try:
                note = verify_statement(sd.delivery, self.shop.trust).body
            except Exception:          # the shop's own note not verifying is its fault; the page says less
                note = None
        files = [(i, q) for i, q in sd.lines if i.kind == "information"]
        ship_to: tuple[tuple[str, str], ...] = ()
        if note is not None and isinstance(note.get("ship_to"), dict):           # in the form's order, its labels
            kinds = [i.kind for i, _ in sd.lines if i.kind != "information"] or ["none"]
            ship_to = form_for(kinds[0], sd.deal.attributes.anonymous).lines(note["ship_to"])
        return self.page("delivery.html", title="Your delivery", deal=sd.deal.deal_id, workflow=sd.deal.workflow,
                         lines=sd.lines, currency=int(sd.offer["currency"]), total=int(sd.offer["total"]), note=note,
                         files=files, ship_to=ship_to, order=request.query["order"])

    async def delivery_file(self, request: web.Request) -> web.StreamResponse:
        sd = await self._paid_deal(request)
        info = [i for i, _ in sd.lines if i.kind == "information"] if sd is not None else []
        if not info:
            return self.error(404, "No delivery here", "This link names no paid information deal of this shop.")
        content = self.shop.content_of(info[0])
        if content is None:
            return self.error(404, "No delivery here", "This item has no content to download.")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", info[0].name or info[0].sku)
        return web.Response(body=content, content_type="application/octet-stream",
                            headers={"Content-Disposition": f'attachment; filename="{name}"',
                                     "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=(HERE / "web_static" / name).read_bytes(), content_type=STATIC[name],
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"})

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.catalogue), web.get("/items/{sku}", self.product),
                web.get("/items/{sku}/order", self.order_form), web.post("/items/{sku}/order", self.checkout),
                web.get("/checkouts/{key}", self.checkout_json), web.get("/delivery/{deal}", self.delivery),
                web.get("/delivery/{deal}/file", self.delivery_file), web.get("/static/{name}", self.static)]


def mount(app: web.Application, shop: Shop, agent: str | None = None) -> ShopWeb:
    """Add the web site's routes to the shop's service (one call in ``shop_http.build_app``)."""
    site = ShopWeb(shop, agent)
    app.add_routes(site.routes())
    return site

