"""Where a party's payment manager keeps its payment records (SQLite via the services' db layer).

Why persistent: status, refunds and disputes come after the payment, often in another process;
the record holds the module's proofs (signed by cards, the bank, the payer).
"""
from __future__ import annotations

import threading
from pathlib import Path

from ..support.db import Database, Transaction
from ..support.migrations import Schema
from .model import Record

SCHEMA = Schema.baseline("payments", ["CREATE TABLE IF NOT EXISTS payment_records (payment_id TEXT NOT NULL, "
                                      "role TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (payment_id, role))"])


def put_record(tx: Transaction, record: Record) -> None:
    """Store ``record`` in ``tx`` (replacing the one of the same payment and role)."""
    tx.execute("INSERT INTO payment_records (payment_id, role, body) VALUES (?, ?, ?) "
               "ON CONFLICT (payment_id, role) DO UPDATE SET body = excluded.body",
               (record.payment_id, record.role, record.as_json()))


class RecordStore:
    """Records by (payment id, role): in a SQLite file (``path``), in a party's database (``db``, shared:
    not closed here), or, with neither, in memory only."""

    def __init__(self, path: Path | None = None, *, db: Database | None = None) -> None:
        self._own = db is None and path is not None
        self._db = db if db is not None else (Database(f"sqlite:///{Path(path).absolute()}") if path else None)
        self._mem: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        if self._db is not None:
            self._db.migrate(SCHEMA)

    def same_place(self, other: RecordStore) -> bool:
        """Whether ``other`` keeps its records where this one does (the same store, or the same database)."""
        return self is other or (self._db is not None and self._db is other._db)

    def put(self, record: Record) -> None:
        if self._db is None:
            with self._lock:
                self._mem[(record.payment_id, record.role)] = record.as_json()
            return
        self._db.run(lambda tx: put_record(tx, record))

    def get(self, payment_id: str, role: str | None = None) -> Record | None:
        roles = [role] if role else ["payee", "payer"]
        for r in roles:
            if self._db is None:
                with self._lock:
                    body = self._mem.get((payment_id, r))
            else:
                with self._db.transaction(write=False) as tx:
                    row = tx.one("SELECT body FROM payment_records WHERE payment_id = ? AND role = ?", (payment_id, r))
                body = row[0] if row else None
            if body is not None:
                return Record.from_json(body)
        return None

    def all(self) -> list[Record]:
        if self._db is None:
            with self._lock:
                return [Record.from_json(b) for b in self._mem.values()]
        with self._db.transaction(write=False) as tx:
            return [Record.from_json(r[0]) for r in tx.all("SELECT body FROM payment_records ORDER BY payment_id")]

    def close(self) -> None:
        if self._db is not None and self._own:
            self._db.close()
