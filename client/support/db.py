"""A thin storage layer the parties' services share: SQLite by default, PostgreSQL by DSN.

Why thin: the CA, the bank and the third party each keep a few tables and need two things from a
database: explicit transactions and conditional updates that are atomic under concurrency (a
registration key burns once, a coin is spent once). Both SQLite and PostgreSQL give that with plain
SQL, so the services write standard SQL (TEXT / INTEGER / BIGINT columns, ``?`` placeholders,
``UPDATE ... WHERE ... AND used IS NULL`` with a row count check) and this module hides the rest:

* the DSN picks the backend: ``sqlite:///abs/path.db``, a bare file path, or ``postgresql://...``
  (psycopg 3, imported only then; not exercised by the test suite);
* placeholders are written ``?`` and rewritten to ``%s`` for PostgreSQL;
* :meth:`Database.transaction` opens a connection per thread and runs one explicit transaction.
  SQLite's ``BEGIN IMMEDIATE`` takes the write lock up front, so two writers queue (bounded by the
  busy timeout) instead of failing on a lock upgrade; PostgreSQL runs at SERIALIZABLE.

Binary values are stored as text (hex, base64 or PEM) because the two backends name their binary
types differently; nothing here is large.
"""
from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlparse

from semper.hardware.errors import SemperError

BUSY_TIMEOUT_S = 10.0


class DatabaseError(SemperError):
    """The database could not be opened or a statement failed; the message says which. In a service,
    its own fault (500: the message names its files, so only its log gets it; the bank answers 503
    with its retry advice)."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@dataclass(frozen=True)
class Dsn:
    backend: str        # "sqlite" or "postgresql"
    target: str         # file path, or the libpq connection string

    @staticmethod
    def parse(dsn: str | Path) -> Dsn:
        text = str(dsn)
        if text.startswith(("postgresql://", "postgres://")):
            return Dsn("postgresql", text)
        if text.startswith("sqlite:///"):
            path = text[len("sqlite://"):]        # sqlite:///abs and SQLAlchemy's sqlite:////abs alike
            return Dsn("sqlite", path[1:] if path.startswith("//") else path)
        if text.startswith("sqlite://"):
            raise DatabaseError(f"bad DSN {text!r}: write sqlite:///ABSOLUTE/PATH (three slashes) or a plain file path")
        if "://" in text:
            raise DatabaseError(f"bad DSN {text!r}: semper speaks sqlite:///PATH or postgresql://...")
        return Dsn("sqlite", text)


@functools.lru_cache(maxsize=1024)
def pyformat(sql: str) -> str:
    """Standard SQL with ``?`` placeholders -> psycopg's ``%s`` form. The statement is tokenised
    (sqlparse's lexer), so a ``?`` inside a string literal, a quoted identifier or a comment stays
    text; every other ``%`` is doubled, since psycopg reads ``%`` anywhere as a placeholder's start."""
    out = []
    for ttype, value in sqlparse.lexer.tokenize(sql):
        out.append("%s" if ttype in sqlparse.tokens.Name.Placeholder and value == "?" else value.replace("%", "%%"))
    return "".join(out)


class Transaction:
    """One open transaction; ``execute`` takes standard SQL with ``?`` placeholders."""

    def __init__(self, conn: Any, backend: str) -> None:
        self._conn = conn
        self._backend = backend

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self._backend == "postgresql":
            sql = pyformat(sql)
        cur = self._conn.cursor()
        try:
            cur.execute(sql, tuple(params))
        except sqlite3.IntegrityError as e:
            raise IntegrityError(str(e)) from None
        except Exception as e:
            if type(e).__name__ in ("UniqueViolation", "IntegrityError", "ForeignKeyViolation"):
                raise IntegrityError(str(e)) from None
            raise
        return cur  # type: ignore[no-any-return]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row = self.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.execute(sql, params).fetchall()]


class IntegrityError(DatabaseError):
    """A uniqueness or foreign-key constraint refused the statement (e.g. a duplicate row)."""


class Database:
    """Connections per thread, transactions on demand; safe to share between threads."""

    def __init__(self, dsn: str | Path) -> None:
        self.dsn = Dsn.parse(dsn)
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        if self.dsn.backend == "sqlite":
            Path(self.dsn.target).parent.mkdir(parents=True, exist_ok=True)

    def _connect(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self.dsn.backend == "sqlite":
            try:
                conn = sqlite3.connect(self.dsn.target, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error as e:
                raise DatabaseError(f"cannot open the database {self.dsn.target}: {e}") from None
        else:
            try:
                import psycopg  # type: ignore[import-not-found]
            except ImportError:
                raise DatabaseError("a postgresql:// DSN needs the psycopg package (pip install 'psycopg[binary]')") from None
            conn = psycopg.connect(self.dsn.target, autocommit=True)
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        """Run the block as one transaction: committed on success, rolled back on any exception.

        ``write=False`` for blocks that only read: they then do not queue behind writers (SQLite WAL
        readers see the last commit; PostgreSQL runs them READ ONLY).
        """
        conn = self._connect()
        if self.dsn.backend == "sqlite":
            begin = "BEGIN IMMEDIATE" if write else "BEGIN"
        else:
            begin = "BEGIN ISOLATION LEVEL SERIALIZABLE" + ("" if write else " READ ONLY")
        try:
            conn.execute(begin)
        except sqlite3.OperationalError as e:
            raise DatabaseError(f"the database {self.dsn.target} is busy or unwritable: {e}") from None
        try:
            yield Transaction(conn, self.dsn.backend)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def migrate(self, statements: Sequence[str]) -> None:
        """Create the tables a service needs (idempotent ``CREATE ... IF NOT EXISTS`` statements)."""
        with self.transaction() as tx:
            for sql in statements:
                tx.execute(sql)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except Exception:
                pass
        self._local = threading.local()
