"""Versioned schema migrations that SQLite and PostgreSQL both run.

Why a small runner of our own and not a migration library: the one that fits both back ends without
an ORM (yoyo-migrations) reads its migrations from files in folders and opens its own connections
through its own URL dialect (where ``sqlite:///x`` is a relative path, an absolute one here); ours
are a few statements per store, run on the same connections and transactions as everything else.

Each store (``bank``, ``ca``, ``ttp``, ``payments``, and the shop next) declares a :class:`Schema`:
its name and an ordered tuple of :class:`Migration` s numbered 1, 2, 3 ... A migration is standard
SQL statements, or a function of the open transaction for changes SQL alone cannot say (a data
rewrite). One type differs between the back ends: a statement says ``{blob}`` for a binary column
(SQLite ``BLOB``, PostgreSQL ``BYTEA``; ``bytes`` go in and come out alike). The table
``schema_versions`` records which versions of which store a database holds, so several stores may
share one database (their tables have distinct names).

:func:`migrate` runs at open (the services call ``db.migrate(SCHEMA)`` when they start): in one
exclusive transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL an advisory lock, so worker processes
starting together migrate once) it applies the versions the database lacks, in order, and records
each. DDL is transactional on both back ends: a migration that fails leaves the database at the
version before it. A database newer than the program is refused: an old program must not write
into a schema it does not know.

Version 1 of every store is the schema as it was before versions were kept, written with ``CREATE
... IF NOT EXISTS``: a database made then (SQLite files in the parties' folders) has those tables
already, so version 1 changes nothing there and is recorded; its data stays as it was.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .db import Database, DatabaseError, Transaction

VERSIONS_TABLE = "schema_versions"
# The one column type the two back ends name differently: write {blob} in a migration's statement.
BLOB = {"sqlite": "BLOB", "postgresql": "BYTEA"}


@dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    statements: tuple[str, ...] = ()
    apply: Callable[[Transaction], None] | None = field(default=None, compare=False)

    def run(self, tx: Transaction) -> None:
        for sql in self.statements:
            tx.execute(sql.replace("{blob}", BLOB[tx.backend]))
        if self.apply is not None:
            self.apply(tx)


@dataclass(frozen=True)
class Schema:
    """A store's schema history: ``migrations[i].version == i + 1``."""

    store: str
    migrations: tuple[Migration, ...]

    def __post_init__(self) -> None:
        versions = [m.version for m in self.migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"the migrations of store {self.store!r} must be numbered 1..n in order, not {versions}")

    @property
    def version(self) -> int:
        return len(self.migrations)

    @classmethod
    def baseline(cls, store: str, statements: Sequence[str], summary: str = "the schema before versions were kept",
                 *later: Migration) -> Schema:
        """Version 1 from idempotent ``CREATE ... IF NOT EXISTS`` statements, then ``later`` versions."""
        return cls(store, (Migration(1, summary, tuple(statements)), *later))


def current_version(tx: Transaction, store: str) -> int:
    row = tx.one(f"SELECT MAX(version) FROM {VERSIONS_TABLE} WHERE store = ?", (store,))
    return int(row[0]) if row and row[0] is not None else 0


def migrate(db: Database, schema: Schema) -> int:
    """Apply the versions of ``schema`` the database lacks, in order; returns the version it is at now."""
    with db.transaction(exclusive=True) as tx:
        tx.execute(f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (store TEXT NOT NULL, version INTEGER NOT NULL, "
                   "summary TEXT NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (store, version))")
        have = current_version(tx, schema.store)
        if have > schema.version:
            raise DatabaseError(f"the database {db.dsn.display} holds version {have} of the {schema.store} schema; "
                                f"this program knows versions up to {schema.version}: run a newer semper")
        for m in schema.migrations[have:]:
            m.run(tx)
            tx.execute(f"INSERT INTO {VERSIONS_TABLE} (store, version, summary, applied_at) VALUES (?, ?, ?, ?)",
                       (schema.store, m.version, m.summary,
                        dt.datetime.now(dt.UTC).isoformat(timespec="seconds")))
    return schema.version


def versions(db: Database) -> dict[str, int]:
    """Every store's version in this database ({} before the first migration)."""
    with db.transaction(write=False) as tx:
        try:
            rows = tx.all(f"SELECT store, MAX(version) FROM {VERSIONS_TABLE} GROUP BY store")
        except DatabaseError:
            return {}
    return {str(s): int(v) for s, v in rows}
