"""The electronic mall (paper 1.1): one organisation offering several shops' goods, with an index and billing.

Why the mall is a shop of its own: the buyer deals with one party, signs one order and pays once
(the mall's offer lists every shop's items at the shops' prices, each item named by shop), with
the same blocks, checks and evidence as with any shop. The mall then *settles*: for each shop's
part it buys those items from that shop for the buyer, as a customer of the shop (a mail-order
deal through the same buyer blocks, paid from the mall's account with an online payment module),
to be shipped to the buyer's address. Each shop's part thus has that shop's own signed offer,
confirmation and delivery note (naming the buyer's address), and the mall signs a ``mall-part``
statement tying it to the buyer's deal; ``GET /mall/parts/{deal}`` gives them to the buyer, whose
``shop-parts`` step checks them (``commerce/services/interpreter.py``).

Money: the buyer pays the mall the total; the mall pays each shop its part; the parts add up to the
total (the mall charges no commission here), so the mall's account ends where it began and every
cent is accounted for at the bank (``semper bank audit``).

The index (``GET /mall/index``) is built from the shops' own catalogues (``GET /catalogue``): their
items under the mall's names (``SHOPKEY--SKU``), with the shop's name and URL.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..commerce import blocks
from ..commerce import documents as docs
from ..commerce.buyer import Buyer
from ..commerce.catalogue import Catalogue, CatalogueItem
from ..commerce.errors import CommerceError, DealConflict
from ..support.db import Database, Transaction
from ..support.migrations import Migration, Schema
from ..tinguin.confirmation import digest as confirmation_digest
from ..tinguin.confirmation import render as confirmation_text
from ..tinguin.model import (
    Confirmation,
    ConfirmationRequest,
    DealOutcome,
    PaymentOption,
    PinOutcome,
    PinStatus,
    ProgressStep,
    VerifiedOffer,
)
from .shop import Shop

SEP = "--"
LOCKS = 64          # deals settling at once in this process are told apart by one of these locks


@dataclass(frozen=True)
class MallShop:
    """One shop in the mall: its key in the mall's item names, its name, its URL."""

    key: str
    name: str
    url: str


class AgentUI:
    """The mall's own purchasing agent answers the questions a person answers in the TINGUIN.

    It is a server party, not a person: it accepts an offer only when it lists exactly what the
    mall's buyer ordered (checked by the blocks already) and pays with the module the mall chose;
    its confirmations say ``scripted``. It never holds a PIN: the mall's token is logged in for the
    service (:class:`AgentSigner`)."""

    def __init__(self, module: str) -> None:
        self.module = module

    def review_offer(self, offer: VerifiedOffer) -> PaymentOption | None:
        return next((o for o in offer.payment_options if o.module == self.module), None)

    def confirm(self, request: ConfirmationRequest) -> Confirmation:
        text = confirmation_text(request)
        return Confirmation(True, text, confirmation_digest(text), scripted=True)

    def ask_pin(self, purpose: str, deliver: Callable[[bytes], None], *,
                pad: Callable[[], None] | None = None) -> PinOutcome:
        return PinOutcome(PinStatus.CANCELLED, "the mall's agent enters no PIN")

    def progress(self, step: ProgressStep) -> None:
        pass

    def result(self, outcome: DealOutcome) -> None:
        """Nothing kept: the settlement reads the workflow's result. One agent serves every settlement with
        its shop for as long as the mall runs (a list of outcomes here grew by one per settlement, unread)."""


class AgentSigner:
    """The mall's token key as its purchasing agent signs: with its *person* certificate (the shops take
    orders from customers), through the same interface as the buyer's gated card key."""

    def __init__(self, signer: Any, certificate: bytes) -> None:
        self.signer = signer
        self._certificate = certificate
        self.label = "the mall's purchasing key"
        self.lock = threading.RLock()

    def certificate(self) -> bytes:
        return self._certificate

    def public_point(self) -> bytes:
        return bytes(self.signer.public_point())

    def pin_status(self) -> Any:
        return self.signer.pin_status()

    def verify_pin(self, pin: bytes) -> None:
        self.signer.verify_pin(pin)

    def announce(self, purpose: str) -> None:
        pass

    @contextlib.contextmanager
    def purpose_for(self, text: str) -> Iterator[None]:
        yield

    def sign_digest(self, digest: bytes) -> bytes:
        with self.lock:
            return bytes(self.signer.sign_digest(digest))


@dataclass
class Part:
    shop: MallShop
    lines: list[tuple[str, int]]
    amount: int = 0
    deal: str | None = None
    documents: dict[str, bytes] = field(default_factory=dict)
    statement: bytes = b""


PARTS_SCHEMA = Schema.baseline("mall", [
    "CREATE TABLE IF NOT EXISTS mall_parts (deal_id TEXT NOT NULL, shop TEXT NOT NULL, shop_name TEXT NOT NULL, "
    "shop_url TEXT NOT NULL, shop_deal TEXT NOT NULL, amount INTEGER NOT NULL, offer {blob} NOT NULL, "
    "delivery {blob} NOT NULL, statement {blob} NOT NULL, settled_at TEXT NOT NULL, PRIMARY KEY (deal_id, shop))",
], "the parts the mall settled with its shops: per buyer's deal and shop, the shop's deal, amount and documents",
    Migration(2, "the mall's purchases from its shops as they start (a restarted mall asks the shop before it buys "
                 "again)", ("CREATE TABLE mall_part_attempts (deal_id TEXT NOT NULL, shop TEXT NOT NULL, "
                        "shop_deal TEXT NOT NULL, started_at TEXT NOT NULL, PRIMARY KEY (deal_id, shop, shop_deal))",)))


class PartStore:
    """The parts the mall settled, in its database (the deals' database), one row per buyer's deal and shop.

    Why a row per part, written as soon as the shop's delivery note is in: what the mall paid a shop must
    outlive the process that paid it. A mall restarted between two shops' settlements, or between the
    settlements and its own delivery note, reads here what it bought already and buys only the rest."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(PARTS_SCHEMA)

    def add(self, deal_id: str, part: Part) -> None:
        def run(tx: Transaction) -> None:
            tx.execute("INSERT INTO mall_parts (deal_id, shop, shop_name, shop_url, shop_deal, amount, offer, "
                       "delivery, statement, settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (deal_id, part.shop.key, part.shop.name, part.shop.url, part.deal, part.amount,
                        part.documents["offer"], part.documents["delivery"], part.statement,
                        dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")))
        self.db.run(run)

    def begin(self, deal_id: str, shop: str, shop_deal: str) -> None:
        """A purchase from ``shop`` for the buyer's deal has its shop deal (committed before anything is paid)."""
        def run(tx: Transaction) -> None:
            tx.execute("INSERT INTO mall_part_attempts (deal_id, shop, shop_deal, started_at) VALUES (?, ?, ?, ?)",
                       (deal_id, shop, shop_deal, dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")))
        self.db.run(run)

    def attempts(self, deal_id: str, shop: str) -> list[str]:
        """The shop deals of earlier purchases of this part (a mall that stopped mid-purchase), oldest first."""
        with self.db.transaction(write=False) as tx:
            rows = tx.all("SELECT shop_deal FROM mall_part_attempts WHERE deal_id = ? AND shop = ? "
                          "ORDER BY started_at, shop_deal", (deal_id, shop))
        return [str(r[0]) for r in rows]

    def of(self, deal_id: str) -> dict[str, Part]:
        """The deal's settled parts by shop key, each with the shop as it was when settled."""
        with self.db.transaction(write=False) as tx:
            rows = tx.all("SELECT shop, shop_name, shop_url, shop_deal, amount, offer, delivery, statement "
                          "FROM mall_parts WHERE deal_id = ? ORDER BY settled_at, shop", (deal_id,))
        return {key: Part(MallShop(key, name, url), [], int(amount), str(shop_deal),
                          {"offer": bytes(offer), "delivery": bytes(delivery)}, bytes(statement))
                for key, name, url, shop_deal, amount, offer, delivery, statement in rows}


def index_catalogue(shops: Mapping[str, MallShop], catalogues: Mapping[str, Catalogue]) -> Catalogue:
    """The mall's catalogue: every shop's physical goods under ``KEY--SKU``, at the shop's price."""
    items = []
    for key, cat in catalogues.items():
        for item in cat.items.values():
            if item.kind != "physical":
                continue                    # the mall resells goods shipped by the shop; information is sold direct
            items.append(CatalogueItem(f"{key}{SEP}{item.sku}", f"{item.description} ({shops[key].name})", "physical",
                                       item.unit_price, item.currency, max_quantity=item.max_quantity))
    return Catalogue.of(items)


class Mall(Shop):
    """The mall: a shop whose goods come from other shops, settled with them when the buyer has paid."""

    def __init__(self, *, shops: Mapping[str, MallShop], agents: Mapping[str, Buyer], **kw: Any) -> None:
        super().__init__(**kw)
        self.shops = dict(shops)
        self.agents = dict(agents)
        self.parts = PartStore(self.db)                      # what is settled (a retry buys only the rest)
        self._settling = tuple(threading.Lock() for _ in range(LOCKS))

    def index(self) -> dict[str, Any]:
        return {"mall": self.name, "shops": [{"key": s.key, "name": s.name, "url": s.url} for s in self.shops.values()],
                "items": [{**i.public(), "shop": self.shops[i.sku.split(SEP)[0]].name}
                          for i in self.catalogue.items.values()]}

    settles_in_payment_step = False         # its delivery buys from other shops: not inside a payment's step
    confirms_in_delivery_note = False       # its deal is committed confirmed before it buys: two statements

    def make_delivery(self, sd: Any) -> None:
        """Settle with every shop first (once); then the mall's own delivery note. (The shop's step that
        ships, whichever request reaches it: the payment that completes, or the buyer's ask for delivery.)"""
        if sd.delivery is not None:
            return
        with self._settling[hash(sd.deal.deal_id) % LOCKS]:  # one settlement of a deal at a time
            if self._commit(sd) is not sd:     # paid and confirmed, on disk before buying from the shops (a
                return                         # mall that stops there knows it was paid); another process wrote it
            try:
                self._settle(sd)
            except CommerceError:
                self._commit(sd)               # the refusal is the deal's decision (the deal is in the database)
                return                         # not shipped (yet): the buyer asks again, or disputes
        super().make_delivery(sd)

    def _settle(self, sd: Any) -> None:
        """Buy each shop's part not bought yet (the parts table says which are), recording each at once."""
        by_shop: dict[str, Part] = {}
        for item, qty in sd.lines:
            key, sku = item.sku.split(SEP, 1)
            by_shop.setdefault(key, Part(self.shops[key], [])).lines.append((sku, qty))
        from ..commerce import workflows
        done = self.parts.of(sd.deal.deal_id)
        for key, part in by_shop.items():
            if key in done:
                continue
            earlier = self._bought_before(sd, key, part)
            if earlier is not None:
                currency = earlier.offer.currency
            else:
                r = workflows.mail_order(self.agents[key], part.lines, form=sd.form,
                                         on_deal=functools.partial(self.parts.begin, sd.deal.deal_id, key))
                if not r.ok or r.payment is None:
                    sd.deal.decide("settlement", "refused", f"{part.shop.name}: {r.summary}")
                    raise CommerceError(f"the mall could not settle with {part.shop.name} ({r.summary}); it delivers "
                                        "nothing it could not buy")
                part.deal, part.amount, part.documents = r.deal_id, r.payment.terms.amount, r.documents
                currency = r.payment.terms.currency
            assert part.deal is not None
            body = {"type": "mall-part", "deal": sd.deal.deal_id, "order_sha256": sd.order_digest,
                    "shop": part.shop.name, "shop_deal": part.deal, "items": [list(x) for x in part.lines],
                    "amount": part.amount, "currency": currency,
                    "shop_delivery_sha256": docs.sha256_hex(part.documents["delivery"])}
            part.statement = self._sign(body)
            self.parts.add(sd.deal.deal_id, part)     # before anything else can fail: this shop is paid
            sd.deal.keep_statement(part.statement, "mall-part")
            done[key] = part
        sd.deal.decide("settlement", "satisfied", f"settled with {len(done)} shop(s)")

    def _bought_before(self, sd: Any, key: str, part: Part) -> blocks.Recovered | None:
        """A purchase of this part that a mall which stopped mid-purchase started: when its shop holds it paid,
        its verified documents go into ``part`` (the part is not bought again). CommerceError when a shop
        cannot say (the settlement waits: the buyer asks again)."""
        for shop_deal in reversed(self.parts.attempts(sd.deal.deal_id, key)):
            found = blocks.recover_paid_order(self.agents[key], shop_deal)
            if found is not None:
                part.deal, part.amount = shop_deal, found.offer.total
                part.documents = {"offer": found.offer_der, "confirmation": found.confirmation,
                                  "delivery": found.delivery}
                sd.deal.decide("settlement", "satisfied", f"{part.shop.name}: bought before a restart (its deal "
                                                          f"{shop_deal})")
                return found
        return None

    def parts_of(self, deal_id: str) -> list[dict[str, Any]]:
        """What the buyer gets for each shop's part: the mall's statement and the shop's signed documents."""
        import base64
        sd = self.find(deal_id, fresh=True)
        if sd is None or sd.delivery is None:
            raise DealConflict("this deal is not settled yet (nothing delivered)")
        parts = self.parts.of(sd.deal.deal_id).values()
        return [{"shop": p.shop.name, "url": p.shop.url, "amount": p.amount,
                 "statement": base64.b64encode(p.statement).decode(),
                 **{k: base64.b64encode(v).decode() for k, v in p.documents.items() if k in ("offer", "delivery")}}
                for p in parts]


def mount_mall(app: Any, mall: Mall) -> None:
    """``GET /mall/index`` and ``GET /mall/parts/{deal}`` beside the shop protocol's endpoints."""
    from aiohttp import web

    from ..support.http_service import blocking

    async def index(request: web.Request) -> web.Response:
        return web.json_response(mall.index())

    async def parts(request: web.Request) -> web.Response:
        return web.json_response({"parts": await blocking(mall.parts_of, request.match_info["deal"][:64])})

    app.router.add_get("/mall/index", index)
    app.router.add_get("/mall/parts/{deal}", parts)
