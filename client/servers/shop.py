"""The seller's side of every workflow: offers signed with its token, orders checked, payments taken
through its payment manager (the PSAM in its second reader for the card purse), delivery, its archive.

Why one class without HTTP: the same seller logic runs behind ``semper serve shop`` (``shop_http``),
in tests and in the benchmark; the HTTP layer only parses requests and maps errors to statuses.

The seller decides locally after each step, like the buyer: an order is accepted only if it is for
the offer this shop signed (digest), with the same items, total and attributes and a valid form; a
delivery is made only after the payment completed; information and contracts are exchanged fairly
through its exchange party (it originates: its item is generatable by the third party, the buyer's
payment or signature is externally verifiable).

The offer writes nothing (it is stateless: the buyer sends it back with the order, with the shop's
tag, and the deal is first written with its order, :meth:`Shop._offered`). Every later step is one
committed transaction on the deal's row in the shop's database (``shop_store.py``), and every answer
is built from what was committed: a shop killed at any
moment and started again, or another worker process of the same shop, answers the next request of
a deal, or the same request again, as the process that began it would have (docs/commerce.md,
"The durable deal").

What a shop charges, delivers and lists on its delivery note are methods of their own
(:meth:`Shop.payment_amount`, :meth:`Shop.content_of`, :meth:`Shop.delivery_lines`), so a shop
with other rules is a subclass, opened with ``ShopHome.open(shop_class=...)``, and the rest of the
seller stays one code path. ``chaos/cheating_shop.py`` is such a subclass: its rules are the
cheats the buyer's client must catch.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..commerce import documents as docs
from ..commerce.archive import SharedArchive
from ..commerce.catalogue import Catalogue, CatalogueItem
from ..commerce.deal import Deal, DealAttributes, check_deal_id, deal_attributes, new_deal_id
from ..commerce.errors import CommerceError, DealConflict, FormError, NoSuchDeal, PaymentNotAccepted, ServiceUnavailable
from ..commerce.forms import FormSpec, form_for
from ..exchange.identity import Identity
from ..payment.errors import PaymentError
from ..payment.manager import PaymentManager
from ..payment.model import Record, Status, Terms
from ..support import cms_profile
from ..support.cms import EvidenceError, decode_statement_content
from ..support.db import Database, Transaction
from ..support.trust import TrustStore
from ..support.verify import VerifiedStatement, verify_statement
from ..transfer.information import InformationOffer
from ..transfer.items import Description
from ..transfer.managers import OfferTree, PackageOffer
from ..transfer.statements import StatementOffer
from .shop_store import UNSIGNED, DealStore, ShopDeal, TooManyUnpaidOrders, buyer_key

FAIR_MODULES = ("card-purse",)      # payments the third party can check on its own (see docs/commerce.md)
MAX_OPEN_DEALS = 10_000
ABANDON_EVERY_S = 1.0       # at the limit, a process looks for abandoned deals at most this often (Shop._abandon)
#: deals one buyer (one certificate) may have ordered here and not started paying (Shop.unpaid_cap). Why 20:
#: an honest buyer pays within seconds of its order (with a card, the hello comes with the order and the
#: deal never counts), so it has one or two such deals at a time, a few more if it orders several things
#: at once or left some orders unpaid today (each stops counting about an hour after its offer); and
#: filling MAX_OPEN_DEALS at 20 a certificate takes 500 certificates, each registered at the CA under a
#: name, where one anonymous client or one registered buyer filled it before.
MAX_UNPAID_PER_BUYER = 20
#: the share of MAX_OPEN_DEALS that the orders without a certificate (anonymous ones, contract requests)
#: may hold together (Shop.unpaid_cap): they cannot be told apart, so they share one cap; whoever sends
#: them can fill that share and block other anonymous buyers, but not the buyers who sign their orders
UNSIGNED_UNPAID_SHARE = 0.1
SWEEP_EVERY_S = 1.0         # a buyer at its cap has its deals looked at this often at most per process
SWEPT_BUYERS = 4096         # the buyers a process remembers when it last looked at (Shop._unpaid_room)
PAID = tuple(Status(v) for v in docs.PAID_STATUSES)     # one list with what buyers and the judge take as paid
#: the payment refusals a deal records (a decision on its row and an archive entry flushed to disk, each);
#: further refusals are answered (422) and not recorded. Why a bound: a refused message costs its sender
#: nothing, MAX_ROUNDS does not stop them (past it the manager refuses before the module's step, and that
#: refusal was recorded too), so without one a client grew a deal's row and the archive without end, one
#: message at a time. The first few say why the payment failed; the payee's record (failed) stays either way.
KEPT_REFUSALS = 4
#: the offers a process remembers having signed, until their order comes (Shop._made_again): an order whose
#: offer it no longer remembers (another worker's, or one of more offers than this made since) is checked in
#: full, as before. Why 2048: an honest buyer orders within seconds of its offer. An offer over
#: MADE_OFFER_BYTES is not remembered: offers cost no authentication, and an entry holds the offer's DER and
#: body, which copy the catalogue's texts (a 256 KiB contract made 519 MiB per worker; review of 2026-12-07).
#: So at most about 2048 × 8 KiB × 3 (DER, body, terms), 48 MiB; the demo's 20-line offer is 3.8 KiB of DER
MADE_OFFERS = 2048
MADE_OFFER_BYTES = 8 * 1024
#: how long a standing offer (mail order: no deal, no nonce; :meth:`Shop.standing_offer`) is valid, and so how
#: long a buyer's client may keep it and order on it without asking the shop. Why 30 minutes, as a per-deal
#: offer: a returning buyer sends no offer request for most of its purchases (the shop signs one per kind of
#: purchase about every 15 minutes, :data:`STANDING_RENEW`), a buyer who starts a deal on it has at least
#: 10 minutes to review it and sign (``blocks.STANDING_MARGIN``; 15 minutes left only 3, review of
#: 2026-12-07), and an ordered deal left unpaid counts against its buyer's cap no longer than on a per-deal
#: offer (its row's validity is the offer's). A price or catalogue change needs no expiry: an order on an
#: offer the shop no longer makes is refused (``_offered``)
STANDING_VALIDITY = dt.timedelta(minutes=30)
#: a standing offer is signed afresh when less than this share of its validity remains: a buyer who gets it
#: then has at least this long to order on it (a TINGUIN review takes a person minutes)
STANDING_RENEW = 0.5
#: the standing offers a process keeps (one per workflow, items and quantities, anonymous or not, PSAM):
#: past it the least recently asked for goes (and is signed again if asked for again). Each holds at most
#: MADE_OFFER_BYTES of DER and its body: about 256 × 8 KiB × 2, 4 MiB at worst
STANDING_OFFERS = 256


#: the workflows whose payment step ships (a delivery note, a registration); the others exchange fairly
SHIPPED = ("mail-order", "registration")
#: the kinds of goods each workflow sells (Shop._offer_terms)
_SELLS = {"mail-order": frozenset({"physical", "information"}), "information": frozenset({"information"}),
          "registration": frozenset({"registration"}), "contract": frozenset({"contract"})}


#: what :func:`_states_payment` said of the last notes asked about, or :meth:`Shop.make_delivery` of the notes
#: it signed (it knows the body it signed: the note it answers with at once is not read back)
_NOTES_STATING: OrderedDict[bytes, bool] = OrderedDict()
_NOTES_KEPT = 256
_notes_lock = threading.Lock()


def _note_states(note: bytes, states: bool) -> bool:
    with _notes_lock:
        _NOTES_STATING[note] = states
        _NOTES_STATING.move_to_end(note)
        while len(_NOTES_STATING) > _NOTES_KEPT:
            _NOTES_STATING.popitem(last=False)
    return states


def _states_payment(note: bytes) -> bool:
    """Whether this shop's signed delivery note (or registration) states a payment: its content read by the
    shop's own profile, once per note (a deal's answers ask it of the same bytes again), or as the shop
    signed it (:meth:`Shop.make_delivery`)."""
    with _notes_lock:
        known = _NOTES_STATING.get(note)
    if known is not None:
        return known
    parts = cms_profile.read_statement(note)
    try:
        body = decode_statement_content(parts.content) if parts is not None else None
    except EvidenceError:
        return False            # not kept: a refusal is read again, as before
    return _note_states(note, isinstance(body, dict) and isinstance(body.get("payment"), dict))


class NoRoom(ServiceUnavailable):
    """No room at the payment's device for a payer's message now (the PSAM keeps only so many debits
    open); nothing was asked of it or written. The HTTP layer waits, bounded, and asks again."""

    code = "busy"


class OfferNotOurs(CommerceError):
    """The offer sent back with an order is not one this shop signed as it is (another shop's, altered, a
    forged tag), or not one it would make today (its catalogue changed): nothing is written."""

    code = "bad_offer"


class OfferExpired(CommerceError):
    """The offer sent back with an order is this shop's, and its validity has passed: nothing is written;
    the buyer asks for a new offer."""

    code = "offer_expired"


class DealAbandoned(DealConflict):
    """A payment message for a deal the shop marked abandoned (``DealStore.abandon``: ordered, never paid,
    its offer expired at least one offer validity ago) whose payment never started (the payee accepted
    none of its messages; refused ones do not count, ``Shop._payment_started``): refused before the
    payment's module or device is asked anything, so no value moved; the row and its evidence stay. A
    payment the payee has accepted a step of is never refused so: its proof may still come."""

    code = "deal_abandoned"


@dataclass
class OrderChecks:
    """The checks of one order request that do not depend on the deal's state, made once while the HTTP
    layer takes the same request again and again, waiting for room at the payment's device
    (``shop_http._waited``: every 5 ms, up to 10 s): the order's signature (an ECDSA verification and its
    certificate chain) and the offer sent back with it (its tag, its body made again from the catalogue).
    The deal is read again at each attempt (another worker may have moved it on); only these are kept."""

    verified: VerifiedStatement | None = None
    offered: ShopDeal | None = None         # the deal made from the offer, as :meth:`Shop._offered` gave it


class _Raced(DealConflict):
    """Inside the order's transaction: another process wrote the deal first; everything is rolled back.
    Caught in ``Shop._order_with_first_step``, never sent: the order is answered as the other process committed it."""


class Shop:
    def __init__(self, *, name: str, identity: Identity, trust: TrustStore, catalogue: Catalogue,
                 payments: PaymentManager, account: str, archive: SharedArchive, db: Database,
                 psam_id: str | None = None, assign_psam: Callable[[], str] | None = None,
                 psam_ids: Sequence[str] = (), offer_validity: dt.timedelta = dt.timedelta(minutes=30),
                 fair_modules: Sequence[str] = FAIR_MODULES, standing_validity: dt.timedelta = STANDING_VALIDITY
                 ) -> None:
        self.name = name
        self.identity = identity
        self.trust = trust
        self.catalogue = catalogue
        self.payments = payments
        self.account = account
        self.archive = archive
        self.db = db
        self.store = DealStore(db, catalogue, archive, self.unpaid_cap)
        self.psam_id = psam_id
        self.assign_psam = assign_psam              # several PSAMs: which one a new deal's offer names
        self.psam_ids = frozenset([*psam_ids, psam_id])     # every PSAM an offer of this shop may name
        self._certificate_der = identity.signer.certificate()   # what its statements name as their signer
        self.offer_validity = offer_validity
        self.standing_validity = min(standing_validity, offer_validity)   # (the abandon margin counts from either)
        self._abandoned_at = -ABANDON_EVERY_S       # when this process last looked for abandoned deals
        self._swept: OrderedDict[str, float] = OrderedDict()    # buyer -> when its deals were last looked at
        self.fair_modules = tuple(fair_modules)
        # offers: per-deal offers signed (POST /deals); standing_signed: standing offers signed; standing_asked:
        # standing offers asked for (POST /offer), signed or not; orders_on_standing: orders taken on one
        self.counters = {"offers": 0, "orders": 0, "payments": 0, "deliveries": 0, "signatures": 0,
                         "standing_signed": 0, "standing_asked": 0, "orders_on_standing": 0}
        self._counter_lock = threading.Lock()
        self._acceptances: list[Any] | None = None
        # the offers this process signed and nobody ordered yet, by deal id (Shop._made_again); under _counter_lock
        self._made: OrderedDict[str, _MadeOffer] = OrderedDict()
        # the standing offers this process signed, by what they are for and by their bytes (Shop.standing_offer,
        # Shop._offered); under _counter_lock, bounded together (STANDING_OFFERS)
        self._standing: OrderedDict[tuple[Any, ...], _MadeOffer] = OrderedDict()
        self._standing_der: dict[bytes, _MadeOffer] = {}
        # called at named instants of a step, (instant, deal id): ``settling`` is inside the payment step's
        # transaction, the deal written and nothing committed yet; ``ordering`` the same inside the
        # transaction of an order that came with the payer's first message, ``ordered`` right after that
        # transaction committed, before the answer. Tests end the process there (chaos/crashing_shop.py);
        # nothing else sets it.
        self.on_step: Callable[[str, str], None] | None = None

    def _count(self, what: str) -> None:
        with self._counter_lock:
            self.counters[what] += 1

    # ---- catalogue and offers -------------------------------------------------------------------------
    def acceptances(self) -> list[Any]:
        """What this shop accepts (asked once: the PSAM's currency does not change while it runs)."""
        if self._acceptances is None:
            self._acceptances = self.payments.offer()
        return self._acceptances

    def modules(self) -> list[str]:
        return [a.module for a in self.acceptances()]

    def view(self) -> dict[str, Any]:
        return {"seller": self.name, "items": [i.public() for i in self.catalogue.items.values()],
                "payment": self.modules(), "fair_payment": [m for m in self.modules() if m in self.fair_modules]}

    def stats(self) -> dict[str, Any]:
        """This process's counters, and the deals open in the database (all processes)."""
        with self._counter_lock:
            counters = dict(self.counters)
        db = dict(self.db.counts)           # this process's transactions and statements (before the count's own)
        out = {**counters, "deals": self.store.open_count(), "pid": os.getpid(), "db": db}
        out["archive"] = dict(self.archive.counts)   # its writes alone, in deals' transactions, its flushes
        return out

    def _evidence_with_deals(self) -> bool:
        """Whether the archive's entries commit with the deals' rows (the deals in the archive's file): a deal
        written then holds its entries, so another copy of its order has nothing to add. Elsewhere a retry that
        loses to its own first copy keeps its entries: the first worker may have been killed between its commit
        and its archive's write."""
        return self.archive.joined is not None

    def batch(self) -> AbstractContextManager[None]:
        """The archive entries made inside are written together, before the block ends
        (``SharedArchive.batch``): one handler's entries, one transaction."""
        return self.archive.batch()

    def _sign(self, body: Mapping[str, Any]) -> bytes:
        self._count("signatures")
        return self.identity.sign(body)

    def _offer_terms(self, workflow: str, items: Sequence[tuple[str, int]], anonymous: bool
                     ) -> tuple[list[tuple[CatalogueItem, int]], DealAttributes, list[str], FormSpec]:
        """What this shop offers for these items in this workflow, by its catalogue and rules: the lines,
        the deal's attributes, the payment modules and the form; CommerceError when it does not sell them so."""
        if not items or len(items) > docs.MAX_LINES:
            raise CommerceError(f"ask for 1 to {docs.MAX_LINES} items")
        lines = []
        for sku, qty in items:
            item = self.catalogue.get(sku)
            if not isinstance(qty, int) or not 1 <= qty <= item.max_quantity:
                raise CommerceError(f"quantity of {sku} must be 1 to {item.max_quantity}")
            lines.append((item, qty))
        kinds = {i.kind for i, _ in lines}
        expected = _SELLS.get(workflow, frozenset()) if isinstance(workflow, str) else frozenset()
        if not kinds <= expected:
            raise CommerceError(f"a {workflow} deal cannot sell {', '.join(sorted(kinds - expected))} goods")
        if workflow in ("information", "contract") and len(lines) != 1:
            raise CommerceError(f"a {workflow} deal is for exactly one item")
        attributes = deal_attributes(workflow, anonymous)
        if anonymous and workflow in ("information", "contract", "registration"):
            raise CommerceError(f"a {workflow} deal cannot be anonymous here: it names both parties (buy "
                                "information anonymously by mail order)")
        modules = self.modules()
        if workflow == "information":
            modules = [m for m in modules if m in self.fair_modules]
        if anonymous:
            modules = [m for m in modules if self.payments.module(m).properties.anonymous]
        form = next((f for f in (form_for(i.kind, anonymous) for i, _ in lines) if f.name != "none"),
                    form_for("none", anonymous))    # the first line's that asks for one (one form per kind)
        return lines, attributes, modules, form

    def new_deal(self, workflow: str, items: Sequence[tuple[str, int]], nonce: str, anonymous: bool
                 ) -> tuple[str, bytes, str]:
        """A fresh deal id and the signed offer for exactly these items, answering the buyer's ``nonce``,
        with the offer's tag (:meth:`DealStore.offer_tag`).

        Nothing is written: like a SYN cookie, the offer is the deal's state until it is ordered. The
        buyer sends the offer and its tag back with the order, and the deal is first written, with its
        offer's archive entry, in the order's transaction (:meth:`_offered`, docs/commerce.md "The
        stateless offer"). An offer nobody orders costs the shop a signature and no storage."""
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64:
            raise CommerceError("the request needs a fresh nonce of 16 to 64 characters")
        self._room_for_a_deal()
        lines, attributes, modules, form = self._offer_terms(workflow, items, anonymous)
        psam = self.assign_psam() if self.assign_psam is not None else self.psam_id
        deal_id = new_deal_id()
        body_until = dt.datetime.now(dt.UTC) + self.offer_validity
        body = docs.offer_body(deal_id=deal_id, nonce=nonce, workflow=workflow, lines=lines, payment=modules,
                               seller_account=self.account, psam=psam, attributes=attributes, form=form,
                               valid_until=body_until)
        der = self._sign(body)
        self._count("offers")
        if len(der) <= MADE_OFFER_BYTES and self.identity.signer.certificate() == self._certificate_der:
            # (the signer: what _offered checks the bytes name)
            self._remember_offer(deal_id, _MadeOffer(der, body, valid_until=_to_the_second(body_until),
                                                     lines=lines, attributes=attributes,
                                                     modules=modules, form=form, account=self.account))
        return deal_id, der, self.store.offer_tag(der)

    def _remember_offer(self, deal_id: str, made: _MadeOffer) -> None:
        """Keep an offer this process just signed, for :meth:`_offered` (bounded: the oldest go first)."""
        with self._counter_lock:
            self._made[deal_id] = made
            while len(self._made) > MADE_OFFERS:
                self._made.popitem(last=False)

    def standing_offer(self, workflow: str, items: Sequence[tuple[str, int]], anonymous: bool) -> tuple[bytes, str]:
        """The standing offer for exactly these items (mail order), and its tag: an offer that names no deal
        and answers no nonce, valid :attr:`standing_validity`, which any number of buyers may order on while
        it is valid, each order naming a deal id of its buyer's (docs/commerce.md, "Standing offers").

        Signed once per (workflow, items and quantities, anonymous or not, PSAM) and kept by this process,
        and signed afresh when less than :data:`STANDING_RENEW` of its validity remains or when the terms
        this shop would offer for them changed (catalogue, prices, payment modules, form, account): most
        calls sign nothing and write nothing. Another worker process signs its own; each takes the others'
        in orders (the tag's key is shared, ``DealStore.offer_tag``). CommerceError for a workflow whose
        offers answer a nonce (``documents.STANDING_WORKFLOWS``; those ask ``POST /deals``)."""
        if workflow not in docs.STANDING_WORKFLOWS:
            raise CommerceError(f"a {workflow} offer is made for one deal (POST /deals); standing offers are for "
                                f"{', '.join(sorted(docs.STANDING_WORKFLOWS))}")
        self._count("standing_asked")
        lines, attributes, modules, form = self._offer_terms(workflow, items, anonymous)
        psam = self.assign_psam() if self.assign_psam is not None else self.psam_id
        key = (workflow, tuple((i.sku, q) for i, q in lines), anonymous, psam)
        now = dt.datetime.now(dt.UTC)
        with self._counter_lock:
            made = self._standing.get(key)
            if made is not None:
                self._standing.move_to_end(key)
        if made is not None and made.valid_until - now >= self.standing_validity * STANDING_RENEW \
                and self._same_terms(made, lines, attributes, modules, form):
            return made.der, made.tag
        until = now + self.standing_validity
        body = docs.offer_body(deal_id=None, nonce=None, workflow=workflow, lines=lines, payment=modules,
                               seller_account=self.account, psam=psam, attributes=attributes, form=form,
                               valid_until=until)
        der = self._sign(body)
        tag = self.store.offer_tag(der)
        self._count("standing_signed")
        if len(der) <= MADE_OFFER_BYTES and self.identity.signer.certificate() == self._certificate_der:
            fresh = _MadeOffer(der, body, valid_until=_to_the_second(until), lines=lines, attributes=attributes,
                               modules=modules, form=form, account=self.account, tag=tag)
            with self._counter_lock:
                old = self._standing.pop(key, None)
                if old is not None:
                    self._standing_der.pop(old.der, None)
                self._standing[key] = fresh
                self._standing_der[der] = fresh
                while len(self._standing) > STANDING_OFFERS:
                    self._standing_der.pop(self._standing.popitem(last=False)[1].der, None)
        return der, tag

    def _same_terms(self, made: _MadeOffer, lines: list[tuple[CatalogueItem, int]], attributes: DealAttributes,
                    modules: list[str], form: FormSpec) -> bool:
        """Whether an offer made of ``made``'s terms is the one this shop makes of these terms now."""
        return lines == made.lines and attributes == made.attributes and modules == made.modules \
            and form == made.form and self.account == made.account

    def _room_for_a_deal(self) -> None:
        """ServiceUnavailable when the shop holds :data:`MAX_OPEN_DEALS` open deals (ordered, not finished,
        not abandoned). Asked when a per-deal offer is made (so a buyer is told before it signs an order; a
        standing offer asks nothing) and again when a new deal is written with its order; counted at most
        once a second far from the limit (``DealStore.below``). At the limit, ordered deals nobody paid are
        marked abandoned first (:meth:`_abandon`), so orders never paid cannot keep the shop from taking deals
        for good."""
        if not self.store.below(MAX_OPEN_DEALS):
            self.store.evict()                  # offers a shop before stateless offers kept, never ordered
            if self.store.open_count() >= MAX_OPEN_DEALS:
                if self._abandon() and self.store.open_count() < MAX_OPEN_DEALS:
                    return
                raise ServiceUnavailable("the shop has too many open deals; try again later")

    def _abandon(self) -> int:
        """Mark abandoned the ordered deals not paid, with no fair exchange started, whose offer expired at
        least one offer validity ago (``DealStore.abandon``); how many.

        The margin: an order is taken only while its offer is valid, and the payer's first message
        follows the order within seconds (with the card's hello, it comes *with* the order), its last
        one within a minute (the PSAM's room goes stale after 60 s). A deal not paid one whole offer
        validity (the time the shop gives a buyer to make up its mind, 30 minutes by default) after its
        offer ended has been given up by its buyer, or was never meant to be paid: whether its payment
        started or not, it stops counting. A payment that started (the payee accepted a step of it,
        :meth:`_payment_started`) is still taken if its next message comes (:meth:`_pay` refuses for the
        mark only a payment that never started); the mark stays through any write until the deal is paid
        or its fair exchange starts (``shop_store._COLUMN_VALUES``), so a refused message does not make
        the deal count again; and a paid deal awaiting delivery or a fair exchange started is never
        marked (docs/commerce.md, "Abandoned deals"). At most once a :data:`ABANDON_EVERY_S` per process."""
        now = time.monotonic()
        if now - self._abandoned_at < ABANDON_EVERY_S:
            return 0
        self._abandoned_at = now
        return self.store.abandon(dt.datetime.now(dt.UTC) - self.offer_validity)

    # ---- the cap per buyer on orders not paid ----------------------------------------------------------
    @staticmethod
    def unpaid_cap(buyer: str) -> int:
        """How many deals ``buyer`` (``shop_store.buyer_key``) may have ordered at this shop and not started
        paying: :data:`MAX_UNPAID_PER_BUYER` for a certificate, and :data:`UNSIGNED_UNPAID_SHARE` of
        :data:`MAX_OPEN_DEALS` for the orders without one, together.

        Why: an order costs its sender nothing, and an unpaid one counts against MAX_OPEN_DEALS until
        it is abandoned (an hour after its offer, :meth:`_abandon`): one client sending 10,000 orders an
        hour, never paying, kept every buyer out. Now neither one certificate nor all unsigned orders
        together can fill the limit; a deal paid, whose payment started, or abandoned no longer counts."""
        if buyer == UNSIGNED:
            return max(1, int(MAX_OPEN_DEALS * UNSIGNED_UNPAID_SHARE))
        return MAX_UNPAID_PER_BUYER

    def _too_many(self, buyer: str, count: int) -> TooManyUnpaidOrders:
        """The refusal a person can act on (429 ``too_many_unpaid_orders``)."""
        minutes = round(self.offer_validity.total_seconds() / 60)
        expire = (f"or let them expire (an order whose payment never started stops counting {minutes} minutes "
                  "after its offer ends)")
        if buyer == UNSIGNED:
            return TooManyUnpaidOrders(
                f"this shop has {count} orders without a buyer's certificate (anonymous orders, contract requests) "
                f"not paid yet, as many as it takes: pay one, {expire}, or order signed with your certificate",
                buyer, count)
        return TooManyUnpaidOrders(f"this buyer has {count} orders at this shop not paid yet, as many as one buyer "
                                   f"may have: pay one of them, {expire}", buyer, count)

    def _unpaid_room(self, sd: ShopDeal) -> None:
        """:class:`TooManyUnpaidOrders` when the new deal ``sd`` would count against its buyer's cap and the
        buyer has as many counting deals already; asked before anything of the order is written or
        archived. At the cap, the buyer's deals are looked at first (``DealStore.sweep``: a payment
        started through ``/deals/pay`` since, or an offer long expired), at most once a
        :data:`SWEEP_EVERY_S` per buyer and process: each costs a read of its payment's session, and
        the unsigned buyers' share holds up to a tenth of the open-deal limit. The count that decides
        is made again in the order's transaction (``DealStore._within_cap``); this one is so that a
        refused order leaves nothing behind (not even its evidence in the archive)."""
        if not DealStore.counts(sd):
            return
        assert sd.buyer is not None
        cap = self.unpaid_cap(sd.buyer)
        n = self.store.unpaid(sd.buyer)
        if n >= cap and self._sweep(sd.buyer):
            n = self.store.unpaid(sd.buyer)
        if n >= cap:
            raise self._too_many(sd.buyer, n)

    def _sweep(self, buyer: str) -> int:
        """``DealStore.sweep`` of this buyer's deals, unless this process did so less than
        :data:`SWEEP_EVERY_S` ago; how many stopped counting."""
        now = time.monotonic()
        with self._counter_lock:
            last = self._swept.get(buyer)
            if last is not None and now - last < SWEEP_EVERY_S:
                return 0
            self._swept[buyer] = now
            self._swept.move_to_end(buyer)
            while len(self._swept) > SWEPT_BUYERS:
                self._swept.popitem(last=False)
        return self.store.sweep(buyer, dt.datetime.now(dt.UTC) - self.offer_validity, self._payment_started)

    def _abandonable(self, sd: ShopDeal) -> bool:
        """Whether the deal's offer is old enough for :meth:`_abandon` (whichever worker ran it), so that a
        copy of it this process remembers may be older than a mark; the clocks of the workers may differ
        by :data:`documents.CLOCK_SKEW`."""
        return _offer_ends(sd.offer) < dt.datetime.now(dt.UTC) - self.offer_validity + docs.CLOCK_SKEW

    def _payment_started(self, terms: Terms | None) -> bool:
        """Whether the payee has *accepted* a step of this payment: its session (the payment manager's)
        holds the last message it took (``last_in``) while it goes on, or says it finished paid. No terms:
        the deal pays in its fair exchange (see ``exchange``).

        A refused message does not start a payment: ``PaymentManager._step`` saves the session of a
        refused step too (its ``module`` set, ``rounds`` raised, the record failed), but never sets
        ``last_in`` or ``done`` for it. Counting those (as before 2026-12-07) let one junk payment
        message per deal, refused with 422, take the deal off its buyer's cap (:meth:`_sweep`) and let
        messages through for an abandoned deal (:meth:`_pay`): one client filled the open-deal limit."""
        if terms is None:
            return False
        st, record = self.payments.sessions.get_with_record(terms.payment_id, "payee")
        if st is None:
            return False
        if st.done:
            # finished: started only if it paid. A payment accepted and finished unpaid (a cheque the bank
            # bounced) takes no further message, and must not take its deal off the buyer's cap: one bank
            # account with nothing in it took deals without end (second review of 2026-12-07)
            return record is not None and record.status in PAID
        return st.last_in is not None

    def _offered(self, deal_id: str, offer: bytes | None, tag: Any) -> ShopDeal:
        """The deal of an offer this shop signed, sent back with its order: not written yet (version 0).

        Checked, in this order: the tag is this shop's for exactly these bytes (so the bytes are the
        statement it signed: its signature needs no second verification); the statement names this shop's
        certificate as its signer; the offer is for this deal, still valid and valid no longer than this
        shop's offers are; and its body is what this shop offers for its items today (catalogue, prices,
        modules, form, attributes, one of its PSAMs), so that even whoever learnt the offer key from a
        copy of the database can make no offer the shop would not make itself. CommerceError (400) says
        which failed; no offer at all is :class:`NoSuchDeal` (404), as for an unknown deal before. The
        bytes of an offer this process signed and still remembers are not read again: only what may have
        changed since it signed them is checked (:meth:`_made_again`), with the same outcome."""
        if offer is None:
            raise NoSuchDeal("no such deal here (send the signed offer and its tag with the order)")
        if not self.store.offer_tag_ok(offer, tag):
            raise OfferNotOurs("the offer was not made by this shop, or was altered: its tag does not verify")
        with self._counter_lock:
            made = self._standing_der.get(offer)    # a standing offer this process signed: taken by many orders
            if made is None:
                made = self._made.get(deal_id)
                if made is not None and made.der == offer:
                    del self._made[deal_id]         # taken once: an order sent again finds its deal written
                else:
                    made = None
        if made is not None:
            sd = self._made_again(deal_id, made)
            if sd is not None:
                return sd
        # the bytes are this shop's own (the tag): their parts are read, their signature is not verified again;
        # but whoever learnt the key from a copy of the database must not have the shop archive, as its own
        # offer, a statement that names another signer
        parts = cms_profile.read_statement(offer)
        try:
            body = decode_statement_content(parts.content) if parts is not None else None
        except EvidenceError:
            body = None
        if parts is None or not isinstance(body, dict) or body.get("type") != "offer":
            raise OfferNotOurs("the offer is not an offer statement in this shop's profile")
        if parts.signer != self._certificate_der:
            raise OfferNotOurs("the offer names another signer than this shop's certificate")
        standing = docs.is_standing(body)
        if standing:
            if body.get("workflow") not in docs.STANDING_WORKFLOWS:
                raise OfferNotOurs("this shop makes no standing offer for this workflow")
        elif body.get("deal") != deal_id:
            raise OfferNotOurs("the offer is for another deal")
        try:
            valid_until = _offer_ends(body)
        except CommerceError:
            raise OfferNotOurs("the offer's validity is malformed") from None
        now = dt.datetime.now(dt.UTC)
        if valid_until < now:
            raise OfferExpired(f"the offer expired at {docs.rfc3339(valid_until)}; ask for a new one")
        if valid_until > now + self._validity(standing) + docs.CLOCK_SKEW:
            raise OfferNotOurs("the offer is valid for longer than this shop makes offers")
        try:
            items = [(str(i["sku"]), int(i["quantity"])) for i in body["items"]]
            attributes = DealAttributes.from_dict(body["attributes"])
            lines, attributes, modules, form = self._offer_terms(body["workflow"], items, attributes.anonymous)
            if body["psam"] not in self.psam_ids:
                raise CommerceError("it names a PSAM this shop does not have")
            again = docs.offer_body(deal_id=None if standing else deal_id, nonce=None if standing else body["nonce"],
                                    workflow=body["workflow"], lines=lines,
                                    payment=modules, seller_account=self.account, psam=body["psam"],
                                    attributes=attributes, form=form, valid_until=valid_until)
        except (CommerceError, KeyError, TypeError, ValueError) as e:
            raise OfferNotOurs(f"this shop no longer makes this offer ({e}); ask for a new one") from None
        if again != body:
            raise OfferNotOurs("this shop no longer makes this offer (its catalogue, prices or payment "
                                "modules changed); ask for a new one")
        deal = Deal(deal_id, str(body["workflow"]), attributes, self.archive)
        return ShopDeal(deal, body, bytes(offer), docs.sha256_hex(offer), lines, body["psam"])

    def _made_again(self, deal_id: str, made: _MadeOffer) -> ShopDeal | None:
        """:meth:`_offered` for exactly the bytes of an offer this process signed (:meth:`new_deal`), without
        reading them again: the deal, when the offer is valid now and this shop would make the same offer
        today; else None, and :meth:`_offered` reads and checks the bytes as it does any offer's (and
        refuses with the same words). Why it may skip the reading: the bytes are the statement this process
        made of ``made.body``, naming this shop's certificate; only this process's memory holds ``made``, so
        whoever learnt the offer key from a copy of the database cannot have an offer taken here that the
        shop would not make. What may have changed since is checked again: the clock (expiry, and a
        validity no longer than this shop's offers now have), and the terms, made again from the
        catalogue and the shop's rules as they are now (:meth:`_offer_terms`, the account, the PSAMs) and
        compared with those the offer was made of (its body is a pure function of them, ``offer_body``)."""
        body = made.body
        now = dt.datetime.now(dt.UTC)
        if made.valid_until < now or made.valid_until > now + self._validity(docs.is_standing(body)) + docs.CLOCK_SKEW:
            return None
        try:
            items = [(i["sku"], i["quantity"]) for i in body["items"]]
            lines, attributes, modules, form = self._offer_terms(body["workflow"], items, made.attributes.anonymous)
        except (CommerceError, KeyError, TypeError, ValueError):
            return None
        if not self._same_terms(made, lines, attributes, modules, form) or body["psam"] not in self.psam_ids:
            return None
        deal = Deal(deal_id, body["workflow"], attributes, self.archive)
        return ShopDeal(deal, body, made.der, docs.sha256_hex(made.der), lines, body["psam"])

    def _validity(self, standing: bool) -> dt.timedelta:
        """How long this shop's offers of the kind are valid at most (a standing offer's or one deal's)."""
        return self.standing_validity if standing else self.offer_validity

    def find(self, deal_id: Any, *, fresh: bool) -> ShopDeal | None:
        """The deal as committed, or None (no such deal, or not a deal id). ``fresh``: as the database
        has it now, else possibly as this process last saw it (see ``_deal``); the caller says which."""
        try:
            return self.store.get(check_deal_id(deal_id), fresh=fresh)
        except CommerceError:
            return None

    def _deal(self, deal_id: Any, *, fresh: bool) -> ShopDeal:
        """The deal as committed: with ``fresh``, as the database has it now; without, as this process
        last committed or read it (``DealStore``), which another worker may have moved on since. Every
        write is conditional on the version, so acting on it is safe; a step that would *refuse* on the
        deal's state asks again with ``fresh`` before it refuses (:meth:`_unless`). No default: each
        caller says which it needs (a default read one way here and the other way in :meth:`find`)."""
        sd = self.store.get(check_deal_id(deal_id), fresh=fresh)     # None only from the database itself
        if sd is None:
            raise NoSuchDeal("no such deal here (it expired, or this shop never offered it)")
        return sd

    def _unless(self, sd: ShopDeal, refuse: Callable[[ShopDeal], bool]) -> ShopDeal:
        """``sd``, or, when ``refuse(sd)`` says its state does not allow the step, the deal as the
        database has it now (the caller checks that again and refuses on it): a refusal is never given on
        a state another worker has moved on from."""
        return self._deal(sd.deal.deal_id, fresh=True) if refuse(sd) else sd

    def _commit(self, sd: ShopDeal, **kw: Any) -> ShopDeal:
        """Write ``sd`` back; if another process wrote the deal first, the deal as it wrote it."""
        if self.store.save(sd, **kw):
            return sd
        return self._deal(sd.deal.deal_id, fresh=True)

    # ---- orders -------------------------------------------------------------------------------------
    def order(self, deal_id: str, order_bytes: bytes, envelope: Any = None, offer: bytes | None = None,
              offer_tag: Any = None, checks: OrderChecks | None = None) -> dict[str, Any]:
        """:meth:`_order`; an order refused after its payer's first message took room at the payment's
        device, before the module's step began a debit, gives the room back (as :meth:`pay_and_deliver`)."""
        try:
            return self._order(deal_id, order_bytes, envelope, offer, offer_tag, checks)
        except NoRoom:
            raise                                   # no room was taken
        except BaseException:
            if envelope is not None:
                self.payments.unadmit(envelope)
            raise

    def _order(self, deal_id: str, order_bytes: bytes, envelope: Any = None, offer: bytes | None = None,
               offer_tag: Any = None, checks: OrderChecks | None = None) -> dict[str, Any]:
        """Check the order against this shop's offer; answer with what comes next (payment terms or exchange).

        ``offer``, ``offer_tag``: the signed offer and its tag as :meth:`new_deal` gave them, sent back by
        the buyer. A deal not in the database yet is made from them (:meth:`_offered`) and written, with
        the offer's archive entry, in the order's transaction; a deal already there (the order sent again,
        another order for it, or an offer a shop before stateless offers stored) goes on from its row and
        they are not looked at.

        ``envelope``: the payer's first payment message, sent with the order (the card's hello). Taken
        when the order's payment module may start early (``ExchangeProperties.starts_early``) and the
        message is for this deal's payment (``documents.payment_id_for``): its first step is committed
        in the order's transaction and the answer carries the payee's reply (``envelope``), and, if it
        completed the payment, the confirmation and delivery as :meth:`pay_and_deliver` gives them.
        Otherwise it is left for ``/deals/pay``. Raises :class:`NoRoom` (before anything is committed
        or asked of the device) when the payment's device has no room now: the caller waits and sends
        it again (``shop_http``), passing the same ``checks`` (:class:`OrderChecks`) each time: what was
        checked of this request and does not depend on the deal is not checked again."""
        # with a hello, read fresh: a remembered copy another worker has moved on (ordered, paid) would
        # have the device asked for a debit nobody will complete, holding its room until it goes stale
        found = self.store.get(check_deal_id(deal_id), fresh=envelope is not None)
        if found is None:
            if checks is not None and checks.offered is not None:
                sd = DealStore.copy(checks.offered)
                if _offer_ends(sd.offer) < dt.datetime.now(dt.UTC):
                    raise OfferExpired("the offer expired while the order waited for room; ask for a new one")
            else:
                sd = self._offered(deal_id, offer, offer_tag)
                if checks is not None:
                    checks.offered = DealStore.copy(sd)
            self._room_for_a_deal()
        else:
            sd = found
        if sd.order is not None:
            if order_bytes == sd.order_bytes:
                return self._ordered_again(sd, envelope)
            raise DealConflict("this deal already has another order")
        vs = None
        if sd.deal.attributes.anonymous:
            try:
                body = json.loads(order_bytes)
            except ValueError:
                raise CommerceError("an anonymous order is the canonical JSON of the order") from None
            if not isinstance(body, dict) or docs.canonical(body) != order_bytes:
                raise CommerceError("an anonymous order must be canonical JSON (sorted keys, no spaces)")
        elif sd.deal.workflow == "contract":
            try:
                body = json.loads(order_bytes)
            except ValueError:
                body = None
            if not isinstance(body, dict) or docs.canonical(body) != order_bytes:
                raise CommerceError("a contract request is canonical JSON; the signature comes in the exchange")
        else:
            vs = checks.verified if checks is not None else None
            if vs is None:
                try:
                    vs = verify_statement(order_bytes, self.trust)
                except EvidenceError as e:
                    raise CommerceError(f"the order's signature does not verify: {e}") from None
                if checks is not None:
                    checks.verified = vs
            if not docs.has_role(vs.signer, "person"):
                raise CommerceError("the order is not signed with a person's certificate")
            body = vs.body
        try:
            form = docs.check_order(body, sd.offer, sd.offer_digest)
        except FormError as e:
            raise CommerceError(str(e)) from None
        if body.get("deal") != deal_id:
            raise CommerceError("the order is for another deal")
        sd.form, sd.order, sd.order_bytes, sd.order_digest = form, body, order_bytes, docs.sha256_hex(order_bytes)
        total = int(sd.offer["total"])
        if sd.deal.workflow in ("information", "contract"):
            pass
        elif total == 0:
            sd.paid = True
        else:
            sd.terms = Terms(docs.payment_id_for(deal_id, sd.order_digest), self.payment_amount(sd),
                             int(sd.offer["currency"]), self.account, sd.order_digest, self.name)
        early = self._early(sd, envelope)
        if sd.version == 0:                      # a new deal: counted for the order's signer, or as unsigned
            sd.buyer = buyer_key(None if vs is None else vs.signer)
            if not early:                        # (with its first step, its payment starts: it never counts)
                self._unpaid_room(sd)
        if early:
            self._room(sd, envelope)             # before anything is kept: no room, nothing done
        if sd.version == 0:                      # the deal is first written now: its offer's entry first
            sd.deal.keep_statement(sd.offer_der, "offer")
        if vs is None:
            sd.deal.keep("order:unsigned", order_bytes)
        else:
            sd.deal.keep_statement(order_bytes, vs.type)
        sd.deal.decide("order", "satisfied", "the order is for the offer this shop signed")
        also = None
        if sd.terms is not None:
            if early:
                answer = self._order_with_first_step(sd, envelope, order_bytes)
                if answer is not None:
                    return answer
                if sd.version == 0:              # its payment did not start with it: it counts (if refused
                    self._unpaid_room(sd)        # now, its offer and order were archived for the hello: they stay)
            terms, route = sd.terms, self._routes(sd)
            expect_in = getattr(self.payments.sessions, "expect_in", None)
            if expect_in is not None:            # the payment expected in the same transaction as the order
                also = lambda tx: expect_in(tx, terms, route)
            else:
                self.payments.expect(terms, route)
        new = sd.version == 0
        try:
            committed = self._commit(sd, also=also)
        except TooManyUnpaidOrders as e:         # another worker's order of this buyer was committed first
            if new:
                self.archive.drop_pending(deal_id)      # no deal was written: nothing to be evidence of
            raise self._too_many(e.buyer, e.count) from None
        if committed is not sd and new and (committed.order_bytes != order_bytes or self._evidence_with_deals()):
            # another order wrote this deal id first: none of this one's entries; or this very order (a retry
            # that reached another worker), whose entries committed with its deal (review of 2026-12-07: they
            # were archived twice)
            self.archive.drop_pending(deal_id)
        if committed is not sd and committed.order_bytes != order_bytes:
            raise DealConflict("this deal already has another order")
        self._ordered(committed)
        return self._next_step(committed)

    def _ordered(self, sd: ShopDeal) -> None:
        """Count an order taken (GET /stats; the bench's offer requests per purchase)."""
        self._count("orders")
        if docs.is_standing(sd.offer):
            self._count("orders_on_standing")

    def _early(self, sd: ShopDeal, envelope: Any) -> bool:
        """Whether ``envelope`` is a first payment message this ordered deal takes with its order: for its
        payment, with the module the order names, of a module that may start early."""
        return (isinstance(envelope, dict) and sd.terms is not None and sd.order is not None
                and envelope.get("payment_id") == sd.terms.payment_id
                and envelope.get("module") == sd.order.get("payment") and self.payments.starts_early(envelope))

    def _room(self, sd: ShopDeal, envelope: dict[str, Any]) -> None:
        """Room at the payment's device for this message, or :class:`NoRoom` (nothing asked, nothing written)."""
        try:
            self.payments.admit(envelope, self._routes(sd))
        except PaymentError as e:
            raise NoRoom(str(e)) from None

    def _order_with_first_step(self, sd: ShopDeal, envelope: dict[str, Any], order_bytes: bytes
                               ) -> dict[str, Any] | None:
        """The order, the payment's terms and its first step (the PSAM's challenge to the card's hello) in
        one transaction, and the answer built from what it committed. When another process committed
        this deal or payment first, the order is answered as sent again. None when the step was refused:
        the caller commits the order with its terms alone, as without a hello, and the payer's message,
        sent again to ``/deals/pay``, is refused and recorded there."""
        assert sd.terms is not None
        new = sd.version == 0
        sd.started = True                          # as written with its first step: it does not count (see unpaid_cap)

        def settle(record: Record) -> Callable[[Transaction], None]:
            """The deal, ordered, written in the step's transaction; all or nothing."""
            def write(tx: Transaction) -> None:
                if not self.store.save_in(tx, sd):
                    raise _Raced()
                if self.on_step is not None:
                    self.on_step("ordering", sd.deal.deal_id)
            return write
        try:
            handled = self.payments.handle_first(sd.terms, self._routes(sd), envelope, settle=settle)
        except _Raced:
            handled = None
        except PaymentError:
            sd.started = False
            return None                            # the order as without its hello
        if handled is None:                        # another process was first: the deal as it committed it
            self.store.saved(sd, False)
            fresh = self._deal(sd.deal.deal_id, fresh=True)
            if new and (fresh.order_bytes != order_bytes or self._evidence_with_deals()):
                self.archive.drop_pending(sd.deal.deal_id)      # the other order's deal, or this order's (above)
            if fresh.order_bytes != order_bytes:
                raise DealConflict("this deal already has another order")
            return self._ordered_again(fresh, envelope)
        self.store.saved(sd, True)
        self._ordered(sd)
        if self.on_step is not None:
            self.on_step("ordered", sd.deal.deal_id)
        out = self._next_step(sd)
        record = handled.record
        if record is not None and record.status in PAID:
            # a first message that completed the payment (no module here does): paid, confirmed and delivered
            # in a commit of its own, as a shop that does not settle in the payment step does
            self._paid(sd, record)
            return {**out, **self._after_payment(handled.reply, sd, False)}
        return {**out, **self._after_payment(handled.reply, sd, True)}

    def _ordered_again(self, sd: ShopDeal, envelope: Any) -> dict[str, Any]:
        """The answer to an order this deal has committed, sent again (its answer was lost): the same
        next step and, when the payer's first message came with it, the payee's answer to it, which the
        payment's session gives again without asking the device (``PaymentManager.handle_step``)."""
        out = self._next_step(sd)
        if out["next"] != "payment" or sd.paid or not self._early(sd, envelope):
            return out                  # paid: the payment's session has moved on past the first message
        self._room(sd, envelope)
        return {**out, **self._after_payment(*self._pay(sd.deal.deal_id, envelope))}

    def _next_step(self, sd: ShopDeal) -> dict[str, Any]:
        """What comes after the order, from the committed deal alone (so a repeated order gets the same)."""
        assert sd.order is not None and sd.order_digest is not None
        if sd.deal.workflow in ("information", "contract"):
            return {"next": "exchange"}
        if sd.terms is None:
            return {"next": "delivery"}
        accept = [a.as_dict() for a in self.acceptances() if a.module == sd.order["payment"]]
        return {"next": "payment", "terms": sd.terms.as_dict(), "accept": accept}

    def payment_amount(self, sd: ShopDeal) -> int:
        """What this shop asks the buyer to pay for an ordered deal: the total of the offer it signed
        (the buyer's client refuses terms for any other amount)."""
        return int(sd.offer["total"])

    # ---- payment ------------------------------------------------------------------------------------
    # The deal, once paid, is committed in the payment's last step's own transaction, with its
    # confirmation and delivery note (docs/performance.md). A subclass whose delivery does more than
    # sign (the mall buys from other shops) leaves this off: its deal is committed after the step.
    settles_in_payment_step = True

    def step_is_local(self, envelope: Any) -> bool:
        """Whether taking this payment message is, as a rule, local work: its module needs no bank on line
        (the card purse: the PSAM, through pcscd or the shop's PSAM device process) and this shop's
        delivery is made in the step (a signature on its token and its database). The exception, a late
        proof the PSAM no longer holds, is cleared at the acquirer over the network.

        The HTTP service takes such a step on its event loop, not in its pool: a trip to a thread and back,
        and the interpreter's lock handed between them, cost the seller more CPU than the step's waits for
        the PSAM and the disk do (docs/performance.md, "Local payment steps on the event loop"); it times
        each one and sends the next ones to its pool after a slow one (``shop_http.LoopSteps``). A module
        that calls its bank, or a shop whose delivery buys from other shops (the mall), stays in the pool,
        so a slow host stalls only the thread that waits."""
        if not self.settles_in_payment_step or not isinstance(envelope, dict):
            return False
        try:
            module = self.payments.module(str(envelope.get("module")))
        except PaymentError:
            return False
        return not module.properties.online

    @staticmethod
    def _routes(sd: ShopDeal) -> dict[str, Any]:
        """What the payment's module is told of this shop's choice of device (the offer's PSAM)."""
        return {"card-purse": {"psam": sd.psam}} if sd.psam else {}

    def admit(self, deal_id: str, envelope: Any) -> bool:
        """Room at the payment's device for this payer's message (raises the module's PaymentError when
        there is none now); False when the message is not for this deal's payment (pay refuses it)."""
        sd = self.find(deal_id, fresh=False)
        if sd is not None and sd.terms is None:
            sd = self.find(deal_id, fresh=True)
        if sd is None or sd.terms is None or not isinstance(envelope, dict) \
                or envelope.get("payment_id") != sd.terms.payment_id:
            return False
        self.payments.admit(envelope, self._routes(sd))
        return True

    def _pay(self, deal_id: str, envelope: dict[str, Any]) -> tuple[dict[str, Any] | None, ShopDeal, bool]:
        """The payment step; the reply, the deal, and whether the deal as returned is committed (it was
        paid, confirmed and delivered in the step's own transaction)."""
        sd = self._unless(self._deal(deal_id, fresh=False), lambda d: d.terms is None)
        if sd.terms is None:
            raise DealConflict("this deal has no payment to make (order first)")
        if not isinstance(envelope, dict) or envelope.get("payment_id") != sd.terms.payment_id:
            raise CommerceError("the payment message is for another payment than this deal's")
        if not sd.paid and self._abandonable(sd):
            # it may have been abandoned since this process remembered it: ask the database (old deals only)
            sd = self._deal(deal_id, fresh=True)
        # a payment the payee accepted a step of goes on (its proof is taken, and paying clears the mark);
        # one that never started is refused for the mark, before its module or device is asked anything
        if sd.abandoned and not sd.paid and not self._payment_started(sd.terms):
            raise DealAbandoned("the shop gave this deal up: its offer expired long ago and its payment never "
                                "started; nothing was paid. Ask for a new offer")
        box: dict[str, Any] = {}
        since = len(sd.deal.decisions)          # the deal's decisions before this step's (save_paid_over_in)

        def settle(record: Record) -> Callable[[Transaction], None] | None:
            """In the payment manager, after the module's step and before it is saved: the deal paid,
            confirmed and delivered, written in the step's transaction. A failure here leaves the
            step to be saved alone; it is raised once the step is committed."""
            try:
                # the note's entries go to disk with the step's transaction below (the deals in the archive's
                # file), not in a write and flush of their own before it: SharedArchive.sync_with_next_write
                with self.archive.sync_with_next_write():
                    if not self._completed(sd, record):
                        return None
            except Exception as e:
                box["error"] = e
                return None

            def write(tx: Transaction) -> None:
                box["written"], box["over"] = self.store.save_in(tx, sd), None
                if not box["written"]:
                    # another write since the deal was read (an abandon mark by any worker's sweep, a refusal):
                    # the deal paid is written over it with the statements signed above, never signed again
                    box["over"] = self.store.save_paid_over_in(tx, sd, since)
                    box["written"] = box["over"] is not None
                if self.on_step is not None:
                    self.on_step("settling", deal_id)
            return write
        try:                            # room at the device: taken by the caller (Shop.admit, Shop._room)
            handled = self.payments.handle_step(
                envelope, settle=None if sd.paid or not self.settles_in_payment_step else settle)
        except PaymentError as e:
            if self._refusals(sd) < KEPT_REFUSALS:
                sd.deal.decide("payment", "refused", str(e))
                self._commit(sd)
            raise PaymentNotAccepted(f"the payment was refused: {e}") from None
        finally:
            self.archive.settle_owed()      # the archive's flush, if no transaction of the step committed it
        if "error" in box:
            raise box["error"]
        if handled.settled:
            written = box.get("over") or sd
            if self.store.saved(written, bool(box.get("written"))):
                return handled.reply, written, True
            sd = self._deal(deal_id, fresh=True)        # another process wrote the deal meanwhile: go on from its
        if not sd.paid and handled.record is None:
            # an answer given before, replayed: another process may have paid, confirmed and delivered the
            # deal since this copy was remembered; signing a second confirmation would be evidence nobody got
            sd = self._deal(deal_id, fresh=True)
        if not sd.paid:
            assert sd.terms is not None
            record = handled.record or self.payments.record(sd.terms.payment_id, "payee")
            self._paid(sd, record)
        return handled.reply, sd, False

    @staticmethod
    def _refusals(sd: ShopDeal) -> int:
        """How many payment refusals the deal keeps among its decisions (see :data:`KEPT_REFUSALS`)."""
        return sum(1 for d in sd.deal.decisions if d.step == "payment" and d.verdict == "refused")

    def _paid(self, sd: ShopDeal, record: Record) -> bool:
        """Mark the deal paid if the payee's record says so (True: it was not before)."""
        if sd.paid or record.status not in PAID:
            return False
        sd.paid = True
        sd.payment = {"module": record.module, "payment_id": record.payment_id, "amount": record.terms.amount,
                      "currency": record.terms.currency, "status": record.status.value}
        sd.deal.keep("payment", record.as_json().encode())
        sd.deal.decide("payment", "satisfied", f"{record.module}: {record.status.value}")
        self._count("payments")
        return True

    def _completed(self, sd: ShopDeal, record: Record) -> bool:
        """The deal paid, and its confirmation and (mail order, registration) delivery note made, if the
        record says the payment completed (True: the deal changed)."""
        if not self._paid(sd, record):
            return False
        self._confirm_and_ship(sd)
        return True

    def _confirm_and_ship(self, sd: ShopDeal) -> None:
        """The paid deal confirmed and, for mail order and registration, shipped: when this shop ships in the
        payment step (:attr:`confirms_in_delivery_note`), one statement, the delivery note (or registration)
        stating the payment the confirmation would (:meth:`make_delivery`); else, or when nothing was shipped
        (a shop whose ``make_delivery`` did not ship), the confirmation of its own first. Each is signed once:
        a deal confirmed already keeps its confirmation, and its note then states no payment."""
        ships = sd.deal.workflow in SHIPPED
        if ships and self.confirms_in_delivery_note and sd.confirmation is None:
            self.make_delivery(sd)
        if self.confirmation_of(sd) is None:
            self._confirmation(sd)
        if ships:
            self.make_delivery(sd)

    def pay_and_deliver(self, deal_id: str, envelope: dict[str, Any]) -> dict[str, Any]:
        """One payment message, and when it completed the payment: the signed confirmation and, for mail
        order and registration, the delivery note, all committed (in the payment step's own transaction,
        or right after it) before the answer.
        The answer: ``envelope`` (the payee's), and ``confirmation`` / ``delivery`` / ``content`` (bytes);
        ``confirmation`` is the delivery note itself when the note states the payment (:meth:`confirmation_of`).

        A message refused before its module's step began a debit gives back the room :meth:`admit` took
        for it (``PaymentManager.unadmit``): refused by the manager (too many rounds, another module, a
        finished payment) or by the shop (an abandoned deal), it held a PSAM slot for a minute, and 16
        deals of anyone's own held every slot (second review of 2026-12-07)."""
        try:
            return self._after_payment(*self._pay(deal_id, envelope))
        except BaseException:
            self.payments.unadmit(envelope)
            raise

    def _after_payment(self, reply: dict[str, Any] | None, sd: ShopDeal, committed: bool) -> dict[str, Any]:
        """The answer to a payment message from the step's outcome (see :meth:`pay_and_deliver`)."""
        out: dict[str, Any] = {"envelope": reply}
        if not sd.paid:
            return out
        if not committed:
            self._confirm_and_ship(sd)
            sd = self._commit_paid(sd)
        out["confirmation"] = self.confirmation_of(sd)        # the delivery note itself when it states the payment
        if sd.deal.workflow in SHIPPED:
            note, content = self._shipped(sd)
            if note is not None:
                out.update(delivery=note, content=content)
        return out

    def _commit_paid(self, sd: ShopDeal) -> ShopDeal:
        """Write back ``sd``, paid, confirmed (and delivered); if another write came first and left the deal
        unpaid (an abandon mark, a refusal), the deal paid written over it with the statements ``sd``
        holds (``DealStore.save_paid_over_in``); else the deal as the other process wrote it. Why: after
        a payment step that did not settle the deal in its own transaction (a shop that does not,
        a replayed step), the shop answered from the fresh deal, unpaid: no confirmation for a buyer
        who had paid, and the next try signed a second one (finding D, review of 2026-12-07)."""
        if self.store.save(sd):
            return sd
        over = self.store.save_paid_over(sd)
        if over is not None:
            return over
        return self._deal(sd.deal.deal_id, fresh=True)

    # ---- confirmation and delivery ------------------------------------------------------------------
    #: whether the payment step that completes a mail order or registration signs ONE statement, the delivery
    #: note (or registration) stating the payment, instead of a confirmation and then a note (a signature, a
    #: CMS and its self-check, an archive entry fewer per purchase: docs/performance.md). A shop that must
    #: have the payment confirmed before it can ship (the mall: it commits the deal confirmed, then buys
    #: from the shops) leaves it off.
    confirms_in_delivery_note = True

    @staticmethod
    def confirmation_of(sd: ShopDeal) -> bytes | None:
        """The signed statement that confirms the deal's payment: its confirmation, or its delivery note (or
        registration) when that was signed instead and states the payment. The note's own content says so
        (read, not verified: the bytes are this shop's), so a ``make_delivery`` of a subclass that signs a
        note of its own, without the payment, gets the confirmation signed beside it instead of a note
        that confirms nothing answering for one (review of 2026-12-07)."""
        if sd.confirmation is not None:
            return sd.confirmation
        if sd.delivery is None or sd.terms is None or not sd.paid:
            return None
        return sd.delivery if _states_payment(sd.delivery) else None

    def _confirmation(self, sd: ShopDeal) -> None:
        if sd.confirmation is None:
            assert sd.order_digest is not None
            body = docs.confirmation_body(sd.deal.deal_id, sd.order_digest, sd.payment)
            sd.confirmation = self._sign(body)
            sd.deal.keep_statement(sd.confirmation, body["type"])

    def confirm(self, deal_id: str) -> bytes:
        sd = self._unless(self._deal(deal_id, fresh=False), lambda d: not d.paid or d.order_digest is None)
        if not sd.paid or sd.order_digest is None:
            raise DealConflict("the order is not paid yet: nothing to confirm")
        if self.confirmation_of(sd) is None:
            self._confirmation(sd)
            sd = self._commit(sd)
        confirmation = self.confirmation_of(sd)
        assert confirmation is not None
        return confirmation

    def make_delivery(self, sd: ShopDeal) -> None:
        """Sign the delivery note (or registration) once; everything archived for the deal goes to disk
        before it can go out. (The step that ships: a shop that does not deliver overrides it.) A deal paid
        and not confirmed yet has the payment stated in its note, which is then its confirmation too
        (:meth:`confirmation_of`): one statement proves the payment confirmed and what was shipped."""
        if sd.delivery is not None:
            return
        assert sd.order_digest is not None
        payment = sd.payment if sd.paid and sd.terms is not None and sd.confirmation is None else None
        if sd.deal.workflow == "registration":
            member_id = "M-" + secrets.token_hex(4).upper()
            body = docs.registration_body(sd.deal.deal_id, sd.order_digest, sd.lines[0][0].sku, sd.form,
                                          member_id, dt.datetime.now(dt.UTC) + dt.timedelta(days=365), payment)
        else:
            body = docs.delivery_body(sd.deal.deal_id, sd.order_digest, self.delivery_lines(sd), sd.form,
                                      "TRK-" + secrets.token_hex(5).upper(), payment)
        sd.delivery = self._sign(body)
        _note_states(sd.delivery, isinstance(body.get("payment"), dict))    # what _states_payment would read
        sd.deal.keep_statement(sd.delivery, body["type"])
        sd.deal.decide("delivery", "satisfied", "delivered")
        sd.deal.close()                   # order, payment and note on disk before the note goes out
        self._count("deliveries")

    def _shipped(self, sd: ShopDeal) -> tuple[bytes | None, bytes | None]:
        if sd.delivery is None:
            return None, None
        info = [i for i, _ in sd.lines if i.kind == "information"]
        return sd.delivery, (self.content_of(info[0]) if info else None)

    def deliver(self, deal_id: str) -> tuple[bytes | None, bytes | None]:
        """(signed delivery note or registration, information content or None); (None, None): not shipped."""
        sd = self._unless(self._deal(deal_id, fresh=False), lambda d: not d.paid or d.order_digest is None)
        if not sd.paid or sd.order_digest is None:
            raise DealConflict("the order is not paid yet: nothing is delivered")
        if sd.delivery is None:
            self.make_delivery(sd)
            if sd.delivery is not None:
                sd = self._commit(sd)
            else:       # not shipped here (a mall that could not settle, or another request or process wrote
                        # the deal first): "not shipped" only on the deal as the database has it now
                sd = self._unless(sd, lambda d: d.delivery is None)
        return self._shipped(sd)

    def content_of(self, item: CatalogueItem) -> bytes | None:
        """The bytes this shop delivers for an information item: the catalogue's, whose digest its
        signed offer names (the buyer checks what it gets against that digest)."""
        return item.content

    def delivery_lines(self, sd: ShopDeal) -> list[dict[str, Any]]:
        """What the signed delivery note lists as shipped: every ordered line, with the digest of
        information goods."""
        return [{"sku": i.sku, "quantity": q, **({"sha256": i.sha256} if i.content else {})} for i, q in sd.lines]

    # ---- fair exchanges (information, contract) ---------------------------------------------------------
    def exchange_plan(self, deal_id: str) -> tuple[OfferTree, Description, ShopDeal]:
        """What this shop gives and wants in the deal's fair exchange (it originates)."""
        sd = self._unless(self._deal(deal_id, fresh=False), lambda d: d.order is None or d.order_digest is None)
        if sd.order is None or sd.order_digest is None:
            raise DealConflict("order first")
        item, _qty = sd.lines[0]
        if sd.deal.workflow == "information":
            content = self.content_of(item)
            assert content is not None
            receipt = docs.receipt_body(sd.deal.deal_id, sd.order_digest, item.public(), int(sd.offer["total"]),
                                        int(sd.offer["currency"]))
            offer = PackageOffer((InformationOffer(content, item.name or item.sku),
                                  StatementOffer(self._sign, receipt)), "information with receipt")
            want = Description("payment", {"module": sd.order["payment"], "amount": int(sd.offer["total"]),
                                           "currency": int(sd.offer["currency"]), "order_hash": sd.order_digest})
            return offer, want, sd
        if sd.deal.workflow == "contract":
            digest = item.sha256 or ""
            mine = StatementOffer(self._sign, docs.contract_body(sd.deal.deal_id, digest, "seller"))
            conf = str(sd.order.get("confirmation", {}).get("sha256", ""))
            want = Description("statement", {"statement_type": "contract-signature",
                                             "fields": {"deal": sd.deal.deal_id, "contract_sha256": digest,
                                                        "role": "buyer", "confirmation_sha256": conf}})
            return mine, want, sd
        raise CommerceError(f"a {sd.deal.workflow} deal has no fair exchange")

    def start_exchange(self, deal_id: str, session: str, owner: str) -> bool:
        """Record that ``owner`` (this worker) runs the deal's exchange under ``session``; False if the
        exchange was started before (the order came again: its answer was lost)."""
        return self.store.claim_exchange(deal_id, {"state": "started", "session": session, "owner": owner})

    def exchanged(self, deal_id: str, status: str, reason: str, xid: str | None) -> None:
        """The seller's local decision after its exchange ended."""
        for _attempt in range(5):
            sd = self._deal(deal_id, fresh=False)
            if sd.exchange is not None and sd.exchange.get("state") == "done":
                return
            sd.deal.keep("exchange", json.dumps({"xid": xid, "status": status, "reason": reason}).encode())
            ok = status in ("completed", "resolved")
            sd.paid = sd.paid or (ok and sd.deal.workflow == "information")
            sd.deal.decide("exchange", "satisfied" if ok else "dispute" if status in ("pending", "refused")
                           else "refused", f"{status}: {reason}")
            sd.deal.close()
            sd.exchange = {**(sd.exchange or {}), "state": "done", "status": status, "reason": reason, "xid": xid}
            if self.store.save(sd):
                return


@dataclass(frozen=True)
class _MadeOffer:
    """An offer this process signed (:meth:`Shop.new_deal`): its bytes, its body, and the terms it was made of."""

    der: bytes
    body: dict[str, Any]
    valid_until: dt.datetime            # as its body says it (to the second)
    lines: list[tuple[CatalogueItem, int]]
    attributes: DealAttributes
    modules: list[str]
    form: FormSpec
    account: str
    tag: str = ""                       # its tag (DealStore.offer_tag), kept for a standing offer given out again


def _to_the_second(when: dt.datetime) -> dt.datetime:
    """``when`` as an offer's body says it (``documents.rfc3339``, read back by ``documents.parse_time``)."""
    return when.astimezone(dt.UTC).replace(microsecond=0)


def _offer_ends(offer: Mapping[str, Any]) -> dt.datetime:
    """When an offer's validity ends, from its body (CommerceError when malformed)."""
    return docs.parse_time(offer.get("valid_until"), "validity")

