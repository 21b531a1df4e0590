"""The shop's deals in its database: every step of a deal one committed transaction.

Why in the database and not in memory: a shop killed at any moment and started again, or a shop
running as several worker processes behind one socket, must answer the next request of a deal — or
the same request again — exactly as the process that began the deal would have. So the deal's
whole state machine, from its order on (an offer is stateless: it comes back with the order), lives
in one row of ``shop_deals``: the signed offer, the order and its digest,
the payment terms, whether the payment completed (the payment's own session is the payment
manager's, ``payment/sessions.py``, in the same database), the signed confirmation and delivery
note, the fair exchange's state, and the local decisions not archived yet. A step reads the row,
does its work (signatures, the PSAM, the evidence archive), and writes the row back with a version
check; the answer is built from what was written. If another process wrote the row meanwhile, the
step reads it again and answers from that, so two workers taking the same request answer alike.

The database is the party's storage URL (``--db``; by default SQLite in the shop folder's ``evidence.sqlite3``,
the archive's file, or ``shop.db`` for a shop set up before 2026-12-07; or PostgreSQL), as for the bank,
the CA and the third party (docs/services.md, section 8).
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from ..commerce.catalogue import Catalogue, CatalogueItem
from ..commerce.deal import Deal, DealAttributes, Decision
from ..commerce.errors import CommerceError
from ..payment.model import Terms
from ..support.db import Database, Transaction, from_json, to_json
from ..support.migrations import Migration, Schema

#: the deals that count against their buyer's cap (:meth:`DealStore.unpaid`): ordered by a known buyer (rows
#: written before migration 4 have none), not paid, payment not started (as far as the row says: see
#: :meth:`DealStore.sweep`), not abandoned, not finished, no fair exchange started. One text for the
#: partial index of migration 4 and for the queries, so that both back ends' planners see the query
#: imply the index's condition (literals, not parameters) and use it.
_UNPAID = "buyer IS NOT NULL AND paid = 0 AND started = 0 AND abandoned = 0 AND finished = 0 AND exchange IS NULL"

SCHEMA = Schema.baseline("shop", [
    "CREATE TABLE IF NOT EXISTS shop_deals (deal_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, "
    "attributes TEXT NOT NULL, created_at TEXT NOT NULL, valid_until TEXT NOT NULL, offer {blob} NOT NULL, "
    "offer_body TEXT NOT NULL, offer_digest TEXT NOT NULL, lines TEXT NOT NULL, psam TEXT, order_bytes {blob}, "
    "order_body TEXT, order_digest TEXT, form TEXT NOT NULL, terms TEXT, paid INTEGER NOT NULL DEFAULT 0, "
    "payment TEXT NOT NULL, confirmation {blob}, delivery {blob}, exchange TEXT, decisions TEXT NOT NULL, "
    "archived INTEGER NOT NULL DEFAULT 0, finished INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL, "
    "version INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS shop_deals_open ON shop_deals (finished, valid_until)",
], "the shop's deals: offer, order, terms, payment, confirmation, delivery, exchange, pending decisions",
    Migration(2, "the shop's offer key: a random secret all its worker processes share, made once, that tags the "
                 "offers it signs (a deal is written with its order, not with its offer)",
              ("CREATE TABLE IF NOT EXISTS shop_keys (name TEXT PRIMARY KEY, secret {blob} NOT NULL)",),
              apply=lambda tx: _make_offer_key(tx)),
    Migration(3, "abandoned deals: ordered, never paid, their payment never started, their offer long expired; kept "
                 "(with their evidence) but no longer counted against the open-deal limit",
              ("ALTER TABLE shop_deals ADD COLUMN abandoned INTEGER NOT NULL DEFAULT 0",)),
    Migration(4, "each ordered deal's buyer (the SHA-256 of the order's signer's certificate, or 'unsigned') and "
                 "whether its payment started, so the deals a buyer ordered and has not started paying are "
                 "counted, through an index of those deals alone, against a cap per buyer",
              ("ALTER TABLE shop_deals ADD COLUMN buyer TEXT",
               "ALTER TABLE shop_deals ADD COLUMN started INTEGER NOT NULL DEFAULT 0",
               f"CREATE INDEX IF NOT EXISTS shop_deals_unpaid ON shop_deals (buyer) WHERE {_UNPAID}")),
    Migration(5, "each offer's statement and body once, by the offer's digest: a standing offer is taken by many "
                 "deals, and each deal's row carried its 2.7 KB again, written again with every write of the row; "
                 "a deal's row written since keeps both empty and names its offer by the digest it had already",
              ("CREATE TABLE IF NOT EXISTS shop_offers (offer_digest TEXT PRIMARY KEY, offer {blob} NOT NULL, "
               "offer_body TEXT NOT NULL)",)))


OFFER_KEY = "offer-tag"      # the row of shop_keys whose secret tags this shop's offers
OFFER_TAG_LABEL = b"semper shop offer tag\x00"      # what the tag's MAC covers before the offer's bytes
CACHED_DEALS = 4096          # open deals a process remembers as it last committed or read them
COUNT_EVERY_S = 1.0          # far from the limit, the open deals are counted at most this often
ABANDON_BATCH = 1000         # deals marked abandoned per transaction (a sweep runs only at the limit)
UNSIGNED = "unsigned"        # the buyer of orders that name no certificate (anonymous ones, contract requests)


class TooManyUnpaidOrders(CommerceError):
    """The buyer of a new order has as many deals ordered at this shop, not paid and whose payment has not
    started, as it may have (``Shop.unpaid_cap``): the order is refused and nothing of it is written. The
    buyer pays one of them, or waits until they stop counting (their offer expired one offer validity
    ago: ``Shop._abandon``). Not a 503: trying again soon does not help, paying does."""

    http_status = 429
    code = "too_many_unpaid_orders"

    def __init__(self, message: str, buyer: str, count: int) -> None:
        super().__init__(message)
        self.buyer = buyer
        self.count = count


def buyer_key(certificate: x509.Certificate | None) -> str:
    """The buyer an order is counted for: the SHA-256 of its signer's certificate's signed part (the
    ``tbsCertificate``, hex), or :data:`UNSIGNED` for an order without one. A certificate, not a name: a
    name is the CA's to give twice, a certificate is one registration.

    Why the signed part and not the whole DER: the CA's ECDSA signature on it is malleable ((r, s) and
    (r, n - s) both verify), so the holder of one certificate can write it out a second way, same issuer,
    serial, subject and key, and before 2026-12-07 had a second buyer key and twice the cap. The signed
    part is what the CA issued; nobody but the CA can make another. (Cost: cryptography writes the part
    out again, about as fast as the fingerprint of the whole was, a few microseconds; keys of rows
    written before are the whole certificate's SHA-256: such a deal no longer counts for its buyer, and
    stops counting for the limit when it is abandoned, as any.)"""
    return UNSIGNED if certificate is None else hashlib.sha256(certificate.tbs_certificate_bytes).hexdigest()


def _make_offer_key(tx: Transaction) -> None:
    """The offer key, made once: migrations run in one exclusive transaction, so worker processes
    starting together make one key between them, and every worker of the shop tags and checks with it."""
    tx.execute("INSERT INTO shop_keys (name, secret) VALUES (?, ?)", (OFFER_KEY, secrets.token_bytes(32)))


def _mark_abandoned(tx: Transaction, now: str, deal_id: str, version: int) -> int:
    """Mark one deal abandoned if it is still as read (``version``) and still not paid, with no fair exchange
    started; the mark raises its version, so a worker's older copy cannot be written over it (1: marked)."""
    return int(tx.execute("UPDATE shop_deals SET abandoned = 1, version = version + 1, updated_at = ? "
                          "WHERE deal_id = ? AND version = ? AND paid = 0 AND exchange IS NULL",
                          (now, deal_id, version)).rowcount)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ShopDeal:
    """One deal as this shop has committed it (its row), with the deal context the blocks use."""

    deal: Deal
    offer: dict[str, Any]
    offer_der: bytes
    offer_digest: str
    lines: list[tuple[CatalogueItem, int]]
    psam: str | None = None
    order: dict[str, Any] | None = None
    order_bytes: bytes | None = None
    order_digest: str | None = None
    form: dict[str, str] = field(default_factory=dict)
    terms: Terms | None = None
    paid: bool = False
    payment: dict[str, Any] = field(default_factory=dict)
    confirmation: bytes | None = None
    delivery: bytes | None = None
    exchange: dict[str, Any] | None = None       # {"state": "started"|"done", "session", "owner", "status", ...}
    version: int = 0
    abandoned: bool = False      # marked abandoned (:meth:`DealStore.abandon`); cleared by paying or an exchange
    buyer: str | None = None     # who ordered it (:func:`buyer_key`), written once with the order; None before
    started: bool = False        # its payment started in the order's transaction, or was found started since

    @property
    def finished(self) -> bool:
        return self.delivery is not None or (self.exchange is not None and self.exchange.get("state") == "done")


#: each column of ``shop_deals`` a deal's row is written with, and how it is made from the deal (one
#: place for the insert and the conditional update, :meth:`DealStore._values`)
_COLUMN_VALUES: dict[str, Callable[[ShopDeal], Any]] = {
    "workflow": lambda sd: sd.deal.workflow,
    "attributes": lambda sd: to_json(sd.deal.attributes.as_dict()),
    "valid_until": lambda sd: str(sd.offer["valid_until"]),
    # the offer's statement and body are in shop_offers, by offer_digest (migration 5): empty here
    "offer": lambda sd: b"",
    "offer_body": lambda sd: "",
    "offer_digest": lambda sd: sd.offer_digest,
    "lines": lambda sd: to_json([[i.sku, q] for i, q in sd.lines]),
    "psam": lambda sd: sd.psam,
    "order_bytes": lambda sd: sd.order_bytes,
    "order_body": lambda sd: None if sd.order is None else to_json(sd.order),
    "order_digest": lambda sd: sd.order_digest,
    "form": lambda sd: to_json(sd.form),
    "terms": lambda sd: None if sd.terms is None else to_json(sd.terms.as_dict()),
    "paid": lambda sd: int(sd.paid),
    "payment": lambda sd: to_json(sd.payment),
    "confirmation": lambda sd: sd.confirmation,
    "delivery": lambda sd: sd.delivery,
    "exchange": lambda sd: None if sd.exchange is None else to_json(sd.exchange),
    "decisions": lambda sd: to_json([[x.step, x.verdict, x.reason] for x in sd.deal.decisions]),
    "archived": lambda sd: sd.deal._archived,
    "finished": lambda sd: int(sd.finished),
    # the mark stays through every write until the deal is paid or its fair exchange starts: a payment
    # that had started goes on, but a message of it refused (or any other write) does not make the deal
    # count again. Before 2026-12-07 every write cleared it, so a refused payment message per abandoned
    # deal put them all back on the open-deal limit. A stale copy cannot write the mark away either: the
    # mark raised the version (DealStore.abandon)
    "abandoned": lambda sd: int(sd.abandoned and not sd.paid and sd.exchange is None),
    # written once, by the insert (not in DealStore._MUTABLE): the buyer does not change, and ``started``
    # only ever goes from 0 to 1 (:meth:`DealStore.sweep`), so no copy of the deal can write it back to 0
    "buyer": lambda sd: sd.buyer,
    "started": lambda sd: int(sd.started),
    "updated_at": lambda sd: _now(),
}


class DealStore:
    """The rows of ``shop_deals``; a :class:`ShopDeal` in and out. A deal's row is first written with its
    order (the offer is stateless: ``Shop.new_deal``; its tag is :meth:`offer_tag`). Nothing is deleted
    but offers nobody ordered in time that a shop before stateless offers stored.

    Each process remembers the open deals as it last committed or read them (:meth:`get`, unless
    ``fresh``), so a request does not read back what this process wrote for the one before it
    (docs/performance.md). What it remembers was committed, and every write is conditional on the
    row's version, so a deal another worker changed meanwhile is never overwritten: the write fails,
    the deal is forgotten here and read again. A deal remembered here can only be *older* than the
    database's, never newer; the shop reads it fresh before it refuses anything on its state
    (``Shop._deal``)."""

    def __init__(self, db: Database, catalogue: Catalogue, archive: Any,
                 unpaid_cap: Callable[[str], int] | None = None) -> None:
        self.db = db
        self.catalogue = catalogue
        self.archive = archive
        self.unpaid_cap = unpaid_cap        # how many counting deals a buyer may have (None: no cap here)
        self._cache: OrderedDict[str, ShopDeal] = OrderedDict()
        self._lock = threading.Lock()
        self._counted: tuple[float, int] | None = None      # (when, open deals then) of the last count
        db.migrate(SCHEMA)
        row = db.read_one("SELECT secret FROM shop_keys WHERE name = ?", (OFFER_KEY,))
        assert row is not None, "migration 2 of the shop's schema makes the offer key"
        self._offer_key = bytes(row[0])

    # ---- the offer's tag ------------------------------------------------------------------------------
    def offer_tag(self, offer_der: bytes) -> str:
        """The tag of an offer this shop signed (HMAC-SHA-256 under the shop's offer key, hex): it goes to
        the buyer with the offer and comes back with the order, and says the offer's bytes are the ones
        this shop signed, without a row written for it and without verifying its signature again."""
        return hmac.new(self._offer_key, OFFER_TAG_LABEL + offer_der, hashlib.sha256).hexdigest()

    def offer_tag_ok(self, offer_der: bytes, tag: str) -> bool:
        """Whether ``tag`` is this shop's tag of exactly these bytes (compared in constant time)."""
        # compared as bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500)
        return isinstance(tag, str) and hmac.compare_digest(self.offer_tag(offer_der).encode(),
                                                            tag.encode("utf-8", "surrogatepass"))

    # ---- what this process remembers ------------------------------------------------------------------
    @staticmethod
    def copy(sd: ShopDeal) -> ShopDeal:
        """A copy the caller may change (its decisions grow in place; every other field is replaced, not
        changed, by the shop's steps)."""
        deal = object.__new__(Deal)              # copies of checked objects: no __init__ to run again
        deal.__dict__.update(sd.deal.__dict__)
        deal.decisions = list(sd.deal.decisions)
        out = object.__new__(ShopDeal)
        out.__dict__.update(sd.__dict__)
        out.deal = deal
        return out

    def _remember(self, sd: ShopDeal) -> None:
        deal_id = sd.deal.deal_id
        with self._lock:
            if sd.finished:
                self._cache.pop(deal_id, None)       # nothing more happens to it; read from the database if asked
                return
            self._cache[deal_id] = self.copy(sd)
            self._cache.move_to_end(deal_id)
            while len(self._cache) > CACHED_DEALS:
                self._cache.popitem(last=False)

    def _forget(self, deal_id: str) -> None:
        with self._lock:
            self._cache.pop(deal_id, None)

    def forget_all(self) -> None:
        """Forget every deal remembered, and the open deals' count: after a commit group of the database was
        lost (``Database.on_group_lost``), what its steps remembered as written was never committed."""
        with self._lock:
            self._cache.clear()
            self._counted = None

    # ---- rows <-> deals ---------------------------------------------------------------------------
    def _values(self, sd: ShopDeal, only: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The row's values for ``sd``: every column :meth:`insert` writes, or the ``only`` ones (what
        :meth:`save` writes), each made by its one entry of :data:`_COLUMN_VALUES`."""
        return {k: _COLUMN_VALUES[k](sd) for k in (_COLUMN_VALUES if only is None else only)}

    # a row written before migration 5 holds its offer itself; one written since names it in shop_offers
    _COLUMNS = ("deal_id, workflow, attributes, CASE WHEN d.offer_body = '' THEN o.offer ELSE d.offer END, "
                "CASE WHEN d.offer_body = '' THEN o.offer_body ELSE d.offer_body END, d.offer_digest, lines, psam, "
                "order_bytes, order_body, order_digest, form, terms, paid, payment, confirmation, delivery, exchange, "
                "decisions, archived, version, abandoned, buyer, started")
    _FROM = "shop_deals d LEFT JOIN shop_offers o ON o.offer_digest = d.offer_digest"

    def _deal(self, row: tuple[Any, ...]) -> ShopDeal:
        (deal_id, workflow, attributes, offer, offer_body, offer_digest, lines, psam, order_bytes, order_body,
         order_digest, form, terms, paid, payment, confirmation, delivery, exchange, decisions, archived,
         version, abandoned, buyer, started) = row
        deal = Deal(deal_id, workflow, DealAttributes.from_dict(from_json(attributes)), self.archive,
                    [Decision(*x) for x in from_json(decisions)], int(archived))
        return ShopDeal(deal, from_json(offer_body), bytes(offer), offer_digest,
                        [(self.catalogue.get(sku), int(q)) for sku, q in from_json(lines)], psam,
                        None if order_body is None else from_json(order_body),
                        None if order_bytes is None else bytes(order_bytes), order_digest, from_json(form),
                        None if terms is None else Terms.from_dict(from_json(terms)), bool(paid), from_json(payment),
                        None if confirmation is None else bytes(confirmation),
                        None if delivery is None else bytes(delivery),
                        None if exchange is None else from_json(exchange), int(version), bool(abandoned), buyer,
                        bool(started))

    # ---- reading ----------------------------------------------------------------------------------
    def get(self, deal_id: str, *, fresh: bool = False) -> ShopDeal | None:
        """The deal as this process last committed or read it, or (``fresh``, or not remembered) as the
        database has it now."""
        if not fresh:
            with self._lock:
                known = self._cache.get(deal_id)
            if known is not None:
                return self.copy(known)
        row = self.db.read_one(f"SELECT {self._COLUMNS} FROM {self._FROM} WHERE deal_id = ?", (deal_id,))
        if row is None:
            self._forget(deal_id)
            return None
        sd = self._deal(row)
        self._remember(sd)
        return sd

    def open_count(self) -> int:
        """Deals not finished and not abandoned (:meth:`abandon`): ordered ones, and offers still valid."""
        with self.db.transaction(write=False) as tx:
            row = tx.one("SELECT COUNT(*) FROM shop_deals WHERE finished = 0 AND abandoned = 0 AND "
                         "(order_bytes IS NOT NULL OR valid_until > ?)", (_now(),))
        count = int(row[0]) if row else 0
        with self._lock:
            self._counted = (time.monotonic(), count)
        return count

    def below(self, limit: int) -> bool:
        """Whether fewer than ``limit`` deals are open, counted at most once a :data:`COUNT_EVERY_S` while
        the last count was under half the limit, and at every call above that. Between two counts, all
        the shop's processes together would have to open more than half the limit per
        :data:`COUNT_EVERY_S` to pass it unseen (a bound on memory and rows, not on anything a party
        relies on); near the limit every new deal is counted, as before."""
        with self._lock:
            counted = self._counted
        if counted is not None and counted[1] < limit // 2 and time.monotonic() - counted[0] < COUNT_EVERY_S:
            return True
        return self.open_count() < limit

    def unpaid(self, buyer: str, tx: Transaction | None = None) -> int:
        """How many deals of ``buyer`` count against its cap: ordered, not paid, payment not started,
        not abandoned (:data:`_UNPAID`). One COUNT over the partial index ``shop_deals_unpaid``, which
        holds those deals only (not the deals paid since, however many), in ``tx`` when given."""
        sql = f"SELECT COUNT(*) FROM shop_deals WHERE buyer = ? AND {_UNPAID}"
        row = tx.one(sql, (buyer,)) if tx is not None else self.db.read_one(sql, (buyer,))
        return int(row[0]) if row else 0

    @staticmethod
    def counts(sd: ShopDeal) -> bool:
        """Whether ``sd``, written as it is, counts against its buyer's cap (:data:`_UNPAID`, in Python)."""
        return (sd.buyer is not None and not sd.paid and not sd.started and not sd.abandoned and not sd.finished
                and sd.exchange is None)

    def _within_cap(self, tx: Transaction, sd: ShopDeal) -> None:
        """Right after the insert of a new deal, in its transaction: :class:`TooManyUnpaidOrders` (the
        transaction rolls back: nothing written) when its buyer now has more counting deals than its
        cap. In the insert's transaction so that workers taking orders of one buyer at once cannot
        both pass: SQLite's writers take turns (``BEGIN IMMEDIATE``), and PostgreSQL's serializable
        transactions that each counted the other's new row are refused as a conflict and run again
        (``Database.run``), and the second then sees the first."""
        if self.unpaid_cap is None or not self.counts(sd):
            return
        assert sd.buyer is not None
        cap = self.unpaid_cap(sd.buyer)
        n = self.unpaid(sd.buyer, tx)
        if n > cap:
            raise TooManyUnpaidOrders(f"this buyer has {n - 1} orders at this shop not paid yet (at most {cap}): "
                                      "pay one, or let them expire", sd.buyer, n - 1)

    def sweep(self, buyer: str, expired_before: dt.datetime, started: Callable[[Terms | None], bool]) -> int:
        """Of ``buyer``'s deals that count against its cap, mark those whose payment has started since the
        order (``started(terms)``, asked of the payment's session: a message the payee accepted through
        ``/deals/pay``; a refused one does not count, ``Shop._payment_started``) and mark abandoned those
        :meth:`abandon` would mark (offer expired before ``expired_before``, payment never started); how
        many stopped counting.

        Why: a deal's row says its payment started only when it started in the order's own transaction
        (the card's hello with the order, ``Shop._order_with_first_step``); a payment step taken later
        writes its session, not the deal, until it completes, and the hot path stays so. The shop asks
        here only when a buyer is at its cap, before it refuses (``Shop._unpaid_room``). The mark
        ``started`` goes only from 0 to 1 and no step writes it (:data:`_COLUMN_VALUES`), so it needs no
        version; an abandon mark is conditional on the version read and raises it, as in :meth:`abandon`."""
        cutoff = expired_before.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.db.transaction(write=False) as tx:
            rows = tx.all(f"SELECT deal_id, terms, version, valid_until FROM shop_deals WHERE buyer = ? AND {_UNPAID}",
                          (buyer,))
        begun: list[str] = []
        old: list[tuple[str, int]] = []
        for deal_id, terms, version, valid_until in rows:
            if started(None if terms is None else Terms.from_dict(from_json(terms))):
                begun.append(deal_id)
            elif str(valid_until) < cutoff:          # as abandon() compares them, in SQL
                old.append((deal_id, int(version)))
        if not begun and not old:
            return 0

        def run(tx: Transaction) -> int:
            now, n = _now(), 0
            for deal_id in begun:
                n += tx.execute("UPDATE shop_deals SET started = 1 WHERE deal_id = ? AND started = 0",
                                (deal_id,)).rowcount
            for deal_id, version in old:
                n += _mark_abandoned(tx, now, deal_id, version)
            return n
        try:
            return int(self.db.run(run))
        finally:
            with self._lock:
                for deal_id, _version in old:
                    self._cache.pop(deal_id, None)
                if old:
                    self._counted = None

    def exchanges(self, owner: Callable[[str], bool]) -> list[ShopDeal]:
        """Deals whose fair exchange was started and has not ended, of the owners ``owner`` accepts."""
        with self.db.transaction(write=False) as tx:
            rows = tx.all(f"SELECT {self._COLUMNS} FROM {self._FROM} WHERE finished = 0 AND exchange IS NOT NULL")
        deals = [self._deal(r) for r in rows]
        return [d for d in deals if d.exchange and d.exchange.get("state") == "started"
                and owner(str(d.exchange.get("owner", "")))]

    # ---- writing ----------------------------------------------------------------------------------
    # what a step may change; the offer, its items, PSAM and validity are written once, by the insert
    _MUTABLE = ("order_bytes", "order_body", "order_digest", "form", "terms", "paid", "payment", "confirmation",
                "delivery", "exchange", "decisions", "archived", "finished", "abandoned", "updated_at")

    def _insert(self, sd: ShopDeal) -> tuple[str, tuple[Any, ...]]:
        """The deal's first write (its row, version 1), unless a row of that id exists: then nothing
        (``ON CONFLICT DO NOTHING``: the caller's transaction goes on, and sees a row count of 0)."""
        v = self._values(sd)
        return (f"INSERT INTO shop_deals (deal_id, created_at, version, {', '.join(v)}) VALUES (?, ?, 1, "
                f"{', '.join('?' * len(v))}) ON CONFLICT (deal_id) DO NOTHING", (sd.deal.deal_id, _now(), *v.values()))

    def insert(self, sd: ShopDeal, *, also: Callable[[Transaction], None] | None = None) -> bool:
        """Write a new deal (``sd.version`` 0: never written); False when a deal of that id is there already
        (another worker wrote it first; ``also`` is not run). :class:`TooManyUnpaidOrders` when it counts
        against its buyer's cap and the buyer has that many counting deals already (:meth:`_within_cap`;
        nothing is written)."""
        return self.save(sd, also=also)

    def _update(self, sd: ShopDeal) -> tuple[str, tuple[Any, ...]]:
        v = self._values(sd, self._MUTABLE)
        sets = ", ".join(f"{k} = ?" for k in v)
        return (f"UPDATE shop_deals SET {sets}, version = version + 1 WHERE deal_id = ? AND version = ?",
                (*v.values(), sd.deal.deal_id, sd.version))

    def _write(self, sd: ShopDeal) -> tuple[str, tuple[Any, ...]]:
        """A deal never written (version 0: made from an offer sent back with its order) is inserted;
        one read from the database is updated from the version it was read at."""
        return self._insert(sd) if sd.version == 0 else self._update(sd)

    def save(self, sd: ShopDeal, *, also: Callable[[Transaction], None] | None = None) -> bool:
        """Write the deal back if nobody wrote it since it was read (then True); ``also`` runs in the same
        transaction (e.g. the payment manager's expected terms). A new deal (``sd.version`` 0) is
        inserted, if no deal of its id is there yet."""
        sql, params = self._write(sd)

        def run(tx: Transaction) -> bool:
            if tx.execute(sql, params).rowcount != 1:
                return False
            if sd.version == 0:
                self._within_cap(tx, sd)
                self._offer_in(tx, sd)
            if also is not None:
                also(tx)
            self._evidence_in(tx)
            return True
        return self.saved(sd, bool(self.db.run(run)))

    def save_in(self, tx: Transaction, sd: ShopDeal) -> bool:
        """:meth:`save` inside the caller's transaction (the payment's step and the deal it completes,
        committed together); the caller reports the outcome with :meth:`saved` once it committed."""
        sql, params = self._write(sd)
        if tx.execute(sql, params).rowcount != 1:
            return False
        if sd.version == 0:
            self._within_cap(tx, sd)
            self._offer_in(tx, sd)
        self._evidence_in(tx)
        return True

    @staticmethod
    def _offer_in(tx: Transaction, sd: ShopDeal) -> None:
        """The new deal's offer in ``shop_offers``, unless there already (a standing offer, taken by an order
        before): its row names it by digest (migration 5). Nothing is written when it is there. Asked in every
        new deal's transaction, not remembered: a process that remembered an offer as written would go on
        naming it after the row was lost under it (a database restored, a PostgreSQL failover to a replica
        behind), and the deals could not be read (review of 2026-12-08). On PostgreSQL, two workers' first
        orders of one new offer at once: one of them is refused as a conflict and run again (``Database.run``)."""
        tx.execute("INSERT INTO shop_offers (offer_digest, offer, offer_body) VALUES (?, ?, ?) "
                   "ON CONFLICT (offer_digest) DO NOTHING", (sd.offer_digest, sd.offer_der, to_json(sd.offer)))

    def _evidence_in(self, tx: Transaction) -> None:
        """The archive entries this thread's request has made so far (the offer and order with the order, the
        payment and the note with the payment), written in the deal's own transaction when the archive is
        in the deals' SQLite file (``SharedArchive.write_pending_in``; elsewhere nothing happens here and
        the archive writes them itself). Only once the deal's row was written, and its cap passed: an
        order that lost the race for its deal id, or was refused, leaves its entries to the shop
        (``SharedArchive.drop_pending``)."""
        write = getattr(self.archive, "write_pending_in", None)
        if write is not None:
            write(tx)

    def save_paid_over(self, sd: ShopDeal) -> ShopDeal | None:
        """:meth:`save_paid_over_in` in a transaction of its own, remembered as written (:meth:`saved`)."""
        over = self.db.run(lambda tx: self.save_paid_over_in(tx, sd))
        return over if over is not None and self.saved(over, True) else None

    def save_paid_over_in(self, tx: Transaction, sd: ShopDeal, since: int | None = None) -> ShopDeal | None:
        """The deal ``sd`` made paid (its confirmation and delivery note signed and archived) by a payment,
        written in ``tx`` (the payment step's, or one of its own after the step) over the row as it is
        now, when another write came between the read of ``sd`` and its write (which failed) and left
        the deal unpaid: an abandon mark (:meth:`abandon`, :meth:`sweep`: it raises the version), a
        refusal recorded by another worker. Returns the copy written (its version and marks the row's,
        its decisions the row's and then those the payment added: ``sd``'s from index ``since``, or
        with None those after the ones both share; as archived, only what either copy proves archived:
        :meth:`_archived_over`), or None, nothing written, when ``sd`` is not paid,
        or the row is paid, its fair exchange started, or its order or terms differ.

        Why (finding D, review of 2026-12-07): the shop read the deal again after such a failure, found it
        unpaid, and signed a second confirmation and delivery note, each archived: two of each in the
        archive for one payment, the buyer given one. The statements are the deal's once signed; the
        write over the row keeps them. Not made in place: the database may run the transaction again
        (``Database.run``), and each run starts from ``sd`` as the step left it."""
        if not sd.paid or sd.version == 0:
            return None
        row = tx.one(f"SELECT {self._COLUMNS} FROM {self._FROM} WHERE deal_id = ?", (sd.deal.deal_id,))
        if row is None:
            return None
        now = self._deal(row)
        if now.paid or now.exchange is not None or now.order_digest != sd.order_digest or now.terms != sd.terms:
            return None
        # the decisions both copies hold alike, from the first (appended only: all those the step read, when
        # the row was written as the decisions say; fewer only for a row not so written)
        shared = 0
        for mine, theirs in zip(sd.deal.decisions, now.deal.decisions, strict=False):
            if mine != theirs:
                break
            shared += 1
        if since is None:           # the decisions the step read: those both copies share
            since = shared
        out = self.copy(sd)
        out.version, out.started, out.abandoned = now.version, now.started or sd.started, now.abandoned
        added = sd.deal.decisions[since:]
        out.deal.decisions = [*now.deal.decisions, *added]
        out.deal._archived = self._archived_over(sd, now, since, min(since, shared))
        return out if self.save_in(tx, out) else None

    @staticmethod
    def _archived_over(sd: ShopDeal, now: ShopDeal, since: int, shared: int) -> int:
        """How many of the decisions written over the row (the row's, then the step's: ``sd``'s from ``since``)
        count as archived: ``_archived`` is a prefix of the decisions that are in the archive; those after it
        are pending, archived by the deal's next :meth:`Deal.close`.

        Of the row's decisions, archived are its own archived prefix, and those it shares with ``sd`` (the
        first ``shared``, read by the step) that ``sd`` archived. Only when that is all of them do the
        step's archived decisions extend the prefix. A decision of the row that neither copy proves archived
        (another worker's, written unarchived while the step ran) keeps the prefix before it: it stays
        pending in the row, and the step's decisions after it too (a later close archives them, the step's
        a second time: a summary twice rather than a decision never; a paid deal that is not closed again
        keeps them pending in its row, not archived, but not counted archived either). Why (review of
        2026-12-07): the count was the row's length plus the step's archived ones, so such a decision was
        counted archived and never written to the archive. No writer makes one today (another worker's
        decision on an unpaid deal is a refusal, archived as it is made); this holds whatever the row holds."""
        row = len(now.deal.decisions)
        proved = min(row, max(now.deal._archived, min(shared, sd.deal._archived)))
        if proved < row:
            return proved
        return row + max(0, sd.deal._archived - since)

    def saved(self, sd: ShopDeal, written: bool) -> bool:
        """After the transaction that ran :meth:`save_in` committed: the deal as written is remembered
        (and its version is the row's), or, if it was not written, forgotten here."""
        if written:
            if sd.version == 0:
                with self._lock:            # a new open deal: counted until the next count (see below)
                    if self._counted is not None:
                        self._counted = (self._counted[0], self._counted[1] + 1)
            sd.version += 1
            sd.abandoned = bool(_COLUMN_VALUES["abandoned"](sd))      # as written
            self._remember(sd)
        else:
            self._forget(sd.deal.deal_id)
        return written

    def claim_exchange(self, deal_id: str, exchange: dict[str, Any]) -> bool:
        """Mark the deal's fair exchange started (by ``exchange["owner"]``), unless it was started before."""
        def run(tx: Transaction) -> bool:
            cur = tx.execute("UPDATE shop_deals SET exchange = ?, abandoned = 0, version = version + 1, updated_at = ? "
                             "WHERE deal_id = ? AND exchange IS NULL", (to_json(exchange), _now(),
                                                                        deal_id))
            return cur.rowcount == 1
        try:
            return bool(self.db.run(run))
        finally:
            self._forget(deal_id)               # its version changed: read it again when next asked

    def evict(self) -> int:
        """Forget offers nobody ordered in time (rows a shop before stateless offers wrote); how many."""
        def run(tx: Transaction) -> int:
            cur = tx.execute("DELETE FROM shop_deals WHERE order_bytes IS NULL AND valid_until < ?", (_now(),))
            return int(cur.rowcount)
        try:
            return int(self.db.run(run))
        finally:
            with self._lock:
                self._cache.clear()

    def abandon(self, expired_before: dt.datetime) -> int:
        """Mark abandoned the deals ordered and not paid whose offer expired before ``expired_before`` and
        whose fair exchange was never started, whether or not their payment started; how many.

        Why: such a deal would otherwise count against the open-deal limit for good. An anonymous order
        needs no certificate: 10,000 of them, never paid, stopped the shop taking any deal. A payment
        that started and stalled did the same: a card's hello is taken with its order, and whoever has a
        genuine card's certificate (it is public) can send hellos without ever sending a proof. Its row
        and its evidence stay (the seller archived the offer and the order); it is only no longer counted
        (:meth:`open_count`). A payment message for it is refused if the payment never started
        (``Shop._pay``: no step of it accepted); a payment that had started is never refused for the
        mark, so a late proof is still taken, and the write that makes the deal paid (or starts its fair
        exchange) clears the mark; no other write does (:data:`_COLUMN_VALUES`): the mark changes what is
        counted, never what is paid. Every mark is a conditional write on the version read, and raises
        it: a worker holding an older copy of the deal reads it again before it writes. The marks are
        written :data:`ABANDON_BATCH` a transaction, so that none holds its rows long."""
        cutoff = expired_before.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.db.transaction(write=False) as tx:
            rows = tx.all("SELECT deal_id, version FROM shop_deals WHERE finished = 0 AND abandoned = 0 "
                          "AND valid_until < ? AND order_bytes IS NOT NULL AND paid = 0 AND exchange IS NULL",
                          (cutoff,))
        marks = [(deal_id, int(version)) for deal_id, version in rows]
        if not marks:
            return 0

        def run(batch: list[tuple[str, int]], tx: Transaction) -> int:
            now, n = _now(), 0
            for deal_id, version in batch:
                n += _mark_abandoned(tx, now, deal_id, version)
            return n
        try:
            return sum(int(self.db.run(functools.partial(run, marks[i:i + ABANDON_BATCH])))
                       for i in range(0, len(marks), ABANDON_BATCH))
        finally:
            with self._lock:
                self._cache.clear()
                self._counted = None
