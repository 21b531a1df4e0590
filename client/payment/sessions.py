"""Where a payee's payment sessions live between the payer's messages: in memory, or in the party's database.

Why a store of their own: a payee must answer the payer's next message — or the same message again,
when its answer was lost — exactly as the one that began the payment would have. In one process
that could be an object in memory; a seller with several worker processes, or one restarted after a
crash, must find the session where any process can: the terms it set, the module's flow where it
stood (``flow.snapshot()``, resumed with ``module.resume_payee_flow``), the last message taken and
the answer given to it. The manager saves the session, and the payment's record with the module's
proofs, in one transaction after each step and before the answer leaves (``PaymentManager.handle``),
so an answer the payer saw is always committed, and a step whose answer was never sent runs again from the state
before it (the modules make their device and bank steps safe to repeat: the PSAM's owner gives the
same request again, the bank's idempotency keys give the same answer).

The record itself is kept in one place only, the session store's :class:`RecordStore` (in the
database, ``payment_records``), never in the session: a refund, a settlement or a status the bank
reports later updates the record there, and the next refund or settlement must see it (review
finding: a copy of the record in the session, read first and never updated, let a second refund
pass the local limit check and a settlement ask the bank again).
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..support.db import Database, Transaction, from_json, to_json
from ..support.migrations import Migration, Schema
from .errors import PaymentError
from .model import Record, Terms
from .store import RecordStore, put_record

SCHEMA = Schema.baseline("payee_sessions", [
    "CREATE TABLE IF NOT EXISTS payee_sessions (payment_id TEXT PRIMARY KEY, terms TEXT NOT NULL, "
    "route TEXT NOT NULL, module TEXT, flow TEXT, last_in TEXT, last_out TEXT, done INTEGER NOT NULL DEFAULT 0, "
    "rounds INTEGER NOT NULL DEFAULT 0, record TEXT, version INTEGER NOT NULL DEFAULT 0)"],
    "payee sessions: terms, flow state, the last message and its answer",
    # every save wrote the record to payment_records too, and refunds and settlements only there: that copy
    # is the newer one, so the session's column goes without losing anything
    Migration(2, "the payment's record only in payment_records", ("ALTER TABLE payee_sessions DROP COLUMN record",)))


@dataclass
class PayeeState:
    """One payment the payee expects or is taking."""

    terms: Terms
    route: dict[str, Any] = field(default_factory=dict)     # per module, what its flow is given: the device the
    #                                                         payee chose (``{"card-purse": {"psam": id}}``)
    module: str | None = None                               # set by the payer's first message
    flow: dict[str, Any] | None = None                      # the module flow's snapshot
    last_in: str | None = None                              # canonical JSON of the last message taken
    last_out: str | None = None                             # JSON of the answer given to it
    done: bool = False
    rounds: int = 0
    version: int = 0

    @property
    def payment_id(self) -> str:
        return self.terms.payment_id


class SessionStore(Protocol):
    records: RecordStore        # where the payee's records are kept: saved with the session, read from here
    # whether save() takes ``also``: the payee's own writes, committed in the session's transaction
    transactional: bool

    def expect(self, terms: Terms, route: dict[str, Any]) -> None:
        """Register terms the payee set (again: nothing changes; other terms: PaymentError)."""
        ...

    def get(self, payment_id: str) -> PayeeState | None: ...

    def get_with_record(self, payment_id: str, role: str) -> tuple[PayeeState | None, Record | None]:
        """The session and the payment's record of ``role``, read together (one snapshot)."""
        ...

    def save(self, state: PayeeState, record: Record | None, *,
             also: Callable[[Transaction], None] | None = None) -> bool:
        """Store the session as it is now and, with it, the payment's ``record`` in :attr:`records`; False
        (and neither stored) if another process saved a newer session meanwhile (the caller reads it again).
        ``also`` (only where :attr:`transactional`) runs in the same transaction once the session's own
        write succeeded: it commits with the session or not at all."""
        ...

    def create(self, state: PayeeState, record: Record | None, *,
               also: Callable[[Transaction], None] | None = None) -> bool:
        """Store a session that was never expected, already stepped once (a payer's first message that came
        with the order: ``PaymentManager.handle_first``), with its ``record`` and ``also`` in one
        transaction; False (and nothing stored) if the payment's session exists already."""
        ...


def _conflict(payment_id: str) -> PaymentError:
    return PaymentError(f"payment {payment_id} is already expected with other terms")


class MemorySessions:
    """Sessions of this process only (a payer's tests, a payee that runs in one process and may forget); the
    records in ``records`` (the manager passes its own store)."""

    transactional = False

    def __init__(self, records: RecordStore | None = None) -> None:
        self.records = records if records is not None else RecordStore()
        self._states: dict[str, PayeeState] = {}
        self._lock = threading.Lock()

    def expect(self, terms: Terms, route: dict[str, Any]) -> None:
        with self._lock:
            known = self._states.get(terms.payment_id)
            if known is not None:
                if known.terms != terms:
                    raise _conflict(terms.payment_id)
                return
            self._states[terms.payment_id] = PayeeState(terms, dict(route))

    def get(self, payment_id: str) -> PayeeState | None:
        with self._lock:
            st = self._states.get(payment_id)
            return None if st is None else copy.deepcopy(st)

    def get_with_record(self, payment_id: str, role: str) -> tuple[PayeeState | None, Record | None]:
        return self.get(payment_id), self.records.get(payment_id, role)

    def save(self, state: PayeeState, record: Record | None, *,
             also: Callable[[Transaction], None] | None = None) -> bool:
        if also is not None:
            raise TypeError("sessions kept in memory have no transaction to run the payee's own writes in")
        with self._lock:
            known = self._states.get(state.payment_id)
            if known is not None and known.version != state.version:
                return False
            if record is not None:
                self.records.put(record)
            stored = copy.deepcopy(state)
            stored.version += 1
            self._states[state.payment_id] = stored
            state.version = stored.version
            return True

    def create(self, state: PayeeState, record: Record | None, *,
               also: Callable[[Transaction], None] | None = None) -> bool:
        if also is not None:
            raise TypeError("sessions kept in memory have no transaction to run the payee's own writes in")
        with self._lock:
            if state.payment_id in self._states:
                return False
        return self.save(state, record)


class DatabaseSessions:
    """Sessions in the party's database (``payee_sessions``), the records beside them (``payment_records``)."""

    transactional = True

    def __init__(self, db: Database) -> None:
        self.db = db
        self.records = RecordStore(db=db)          # migrates payment_records
        db.migrate(SCHEMA)

    def expect(self, terms: Terms, route: dict[str, Any]) -> None:
        self.db.run(lambda tx: self.expect_in(tx, terms, route))

    @staticmethod
    def expect_in(tx: Transaction, terms: Terms, route: dict[str, Any]) -> None:
        """:meth:`expect` inside the caller's transaction (the shop commits its order and the payment's
        terms together)."""
        cur = tx.execute("INSERT INTO payee_sessions (payment_id, terms, route) VALUES (?, ?, ?) "
                         "ON CONFLICT (payment_id) DO NOTHING",
                         (terms.payment_id, to_json(terms.as_dict()),
                          to_json(route)))
        if cur.rowcount == 1:
            return
        row = tx.one("SELECT terms FROM payee_sessions WHERE payment_id = ?", (terms.payment_id,))
        if row is None or Terms.from_dict(from_json(row[0])) != terms:       # expected before: the same terms?
            raise _conflict(terms.payment_id)

    _SESSION = "terms, route, module, flow, last_in, last_out, done, rounds, version"

    def get(self, payment_id: str) -> PayeeState | None:
        row = self.db.read_one(f"SELECT {self._SESSION} FROM payee_sessions WHERE payment_id = ?", (payment_id,))
        return None if row is None else self._state(row)

    def get_with_record(self, payment_id: str, role: str) -> tuple[PayeeState | None, Record | None]:
        """One statement in one read transaction: a payment step reads what it needs once
        (docs/performance.md)."""
        row = self.db.read_one(f"SELECT {', '.join('s.' + c for c in self._SESSION.split(', '))}, r.body "
                               "FROM payee_sessions s LEFT JOIN payment_records r ON r.payment_id = s.payment_id "
                               "AND r.role = ? WHERE s.payment_id = ?", (role, payment_id))
        if row is None:
            return None, None
        return self._state(row[:-1]), None if row[-1] is None else Record.from_json(row[-1])

    @staticmethod
    def _state(row: tuple[Any, ...]) -> PayeeState:
        terms, route, module, flow, last_in, last_out, done, rounds, version = row
        return PayeeState(Terms.from_dict(from_json(terms)), from_json(route), module,
                          None if flow is None else from_json(flow), last_in, last_out, bool(done), int(rounds),
                          int(version))

    def save(self, state: PayeeState, record: Record | None, *,
             also: Callable[[Transaction], None] | None = None) -> bool:
        def update(tx: Transaction) -> bool:
            cur = tx.execute("UPDATE payee_sessions SET module = ?, flow = ?, last_in = ?, last_out = ?, done = ?, "
                             "rounds = ?, version = version + 1 WHERE payment_id = ? AND version = ?",
                             (state.module, None if state.flow is None else to_json(state.flow),
                              state.last_in, state.last_out, int(state.done), state.rounds,
                              state.payment_id, state.version))
            if cur.rowcount != 1:
                return False
            if record is not None:
                put_record(tx, record)          # the same transaction: the record is never a step behind
            if also is not None:
                also(tx)
            return True
        if self.db.run(update):
            state.version += 1
            return True
        return False

    def create(self, state: PayeeState, record: Record | None, *,
               also: Callable[[Transaction], None] | None = None) -> bool:
        def insert(tx: Transaction) -> bool:
            cur = tx.execute("INSERT INTO payee_sessions (payment_id, terms, route, module, flow, last_in, last_out, "
                             "done, rounds, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1) "
                             "ON CONFLICT (payment_id) DO NOTHING",
                             (state.payment_id, to_json(state.terms.as_dict()), to_json(state.route), state.module,
                              None if state.flow is None else to_json(state.flow), state.last_in, state.last_out,
                              int(state.done), state.rounds))
            if cur.rowcount != 1:
                return False
            if record is not None:
                put_record(tx, record)
            if also is not None:
                also(tx)
            return True
        if self.db.run(insert):
            state.version = 1
            return True
        return False
