"""The one storage layer of the parties' services: SQLite by default, PostgreSQL by URL.

Why one thin layer: the CA, the bank, the third party (and the shop) each keep a few tables and need
three things from a database: explicit transactions, conditional updates that are atomic under
concurrency (a registration key burns once, a coin is spent once, a batch clears once), and a
schema that can change without losing data. Both SQLite and PostgreSQL give that with plain SQL, so
the services write standard SQL (TEXT / INTEGER / BIGINT columns, ``?`` placeholders,
``UPDATE ... WHERE ... AND used IS NULL`` with a row count check, ``INSERT ... ON CONFLICT DO
NOTHING``) and this module hides the rest:

* the URL picks the back end: ``sqlite:///abs/path.db`` or a bare file path (the default: nothing to
  install or run), or ``postgresql://...`` (any libpq URL; psycopg 3, imported only then);
* placeholders are written ``?`` and rewritten to ``$1, $2, ...`` for PostgreSQL (:func:`dollar_params`);
* connections: SQLite a writer and a reader per thread (WAL; :meth:`Database.read_one` runs on the writer
  between its transactions, whose page cache its own commits keep, and in a read transaction open on its
  thread, on that transaction); PostgreSQL a ``psycopg_pool`` pool per process (a process forked from the
  one that opened the database makes its own, it never shares sockets);
* :meth:`Database.transaction` runs one explicit transaction. Writers: SQLite ``BEGIN IMMEDIATE``
  (the write lock up front, so writers queue for at most the busy timeout instead of failing on a
  lock upgrade); PostgreSQL ``SERIALIZABLE``, so the services' check-then-write code is correct as
  written, at the price that a transaction may be refused with a serialization failure.
  Readers: SQLite ``BEGIN`` on a query-only connection of their own, PostgreSQL ``REPEATABLE READ READ
  ONLY``: one consistent snapshot, never refused, never blocking a writer. A read transaction
  that tries to write fails on both back ends alike;
* :meth:`Database.run` is the one place where serialization failures are retried: it runs a
  function in a write transaction and, when PostgreSQL refused it as a conflict with a concurrent
  one, rolls back and runs it again (bounded attempts, jittered backoff). Every write path of the
  services goes through it; the function must therefore have no effect outside the transaction
  that a second run would repeat harmfully;
* :meth:`Database.migrate` brings a store's tables to its newest schema version
  (``client/support/migrations.py``).

Binary values are stored as text (hex, base64 or PEM) because the two back ends name their binary
types differently; nothing here is large. Integer results are ints on both back ends (PostgreSQL's
``SUM`` of BIGINT is NUMERIC: loaded as an int when it has no fraction).
"""
from __future__ import annotations

import functools
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
import sqlparse

from semper.hardware.errors import SemperError

if TYPE_CHECKING:
    from .migrations import Schema

BUSY_TIMEOUT_S = 10.0            # SQLite's busy timeout; PostgreSQL's lock_timeout and pool wait alike
CONNECT_TIMEOUT_S = 10
POOL_MAX = 16                    # connections per process (the services' thread pools are smaller)
RETRY_ATTEMPTS = 12              # a write transaction refused as a conflict is run this often at most
RETRY_BACKOFF_S = 0.002          # first pause; doubles per attempt, capped, jittered
RETRY_BACKOFF_CAP_S = 0.25
MIGRATION_LOCK = 0x53454D50      # "SEMP": the advisory lock key migrators take on PostgreSQL

log = logging.getLogger("semper.db")
T = TypeVar("T")

# this process's id, renewed in a forked child: os.getpid() is a system call, and a shop asked it a dozen
# times per purchase (every transaction checks that its connections are this process's). A child forked
# from C code that runs Python without the interpreter's fork hooks would keep the parent's id (and
# connections): no such fork exists in semper (review of 2026-12-08)
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _this_process() -> int:
    return _pid


class DatabaseError(SemperError):
    """The database could not be opened or a statement failed; the message says which. In a service,
    its own fault (500: the message names its files, so only its log gets it; the bank answers 503
    with its retry advice)."""


class IntegrityError(DatabaseError):
    """A uniqueness or foreign-key constraint refused the statement (e.g. a duplicate row).

    The transaction it happened in is over on both back ends (PostgreSQL aborts it): catch it only
    to refuse, or write ``INSERT ... ON CONFLICT DO NOTHING`` and read the row count instead."""


class BusyError(DatabaseError):
    """The database stayed locked or kept refusing the transaction as a conflict; retry later."""


class _Conflict(BusyError):
    """PostgreSQL refused the transaction (serialization failure, deadlock): run it again."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@dataclass(frozen=True)
class Dsn:
    """A storage URL, parsed: the back end and what it opens (a file path, or the libpq URL)."""

    backend: str        # "sqlite" or "postgresql"
    target: str         # file path, or the libpq connection string

    @staticmethod
    def parse(dsn: str | Path) -> Dsn:
        text = str(dsn).strip()
        if text.startswith(("postgresql://", "postgres://")):
            return Dsn("postgresql", text)
        if text.startswith("sqlite:///"):
            path = text[len("sqlite://"):]        # sqlite:///abs and SQLAlchemy's sqlite:////abs alike
            return Dsn("sqlite", path[1:] if path.startswith("//") else path)
        if text.startswith("sqlite://"):
            raise DatabaseError(f"bad storage URL (DSN) {text!r}: write sqlite:///ABSOLUTE/PATH (three slashes) "
                                "or a plain file path")
        if "://" in text:
            raise DatabaseError(f"bad storage URL (DSN) {text!r}: semper speaks sqlite:///PATH (or a file path) "
                                "and postgresql://...")
        if not text:
            raise DatabaseError("the storage URL is empty: give sqlite:///PATH, a file path or postgresql://...")
        return Dsn("sqlite", text)

    @property
    def display(self) -> str:
        """The URL to show people: a PostgreSQL password is left out."""
        if self.backend == "sqlite":
            return self.target
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        netloc = parts.netloc.rsplit("@", 1)
        userinfo = netloc[0].split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


_JSON_COLUMN = msgspec.json.Encoder(order="sorted")


def to_json(value: Any) -> str:
    """A value for a JSON text column: keys sorted, UTF-8 as it is. Written by msgspec, a tenth of the time
    of ``json.dumps`` (a shop step writes several such columns); read back with :func:`from_json` or any
    JSON reader. Not for bytes that are signed or compared (those are ``support.canonical``'s)."""
    return _JSON_COLUMN.encode(value).decode()


def from_json(text: str | bytes) -> Any:
    """A JSON text column's value (as ``json.loads`` would read it, faster)."""
    return msgspec.json.decode(text)


class Transaction:
    """One open transaction; ``execute`` takes standard SQL with ``?`` placeholders."""

    def __init__(self, conn: Any, backend: str) -> None:
        self._conn = conn
        self.backend = backend
        self._failed: str | None = None
        self.statements = 0              # run in it (its BEGIN and COMMIT not counted): Database.counts
        self._on_end: list[Callable[[bool], None]] | None = None
        self._on_release: list[Callable[[bool], None]] | None = None
        # released into this thread's commit group (Database.grouped) instead of committed: its rows are on
        # disk with the group's commit, which every answer of the thread's requests waits for
        self.deferred = False

    def on_end(self, fn: Callable[[bool], None], *, at_release: bool = False) -> None:
        """Call ``fn(committed)`` once the transaction has ended: True after its COMMIT succeeded, False after
        it was rolled back. Why: what is written in it for someone else (the evidence archive's rows, when
        the archive shares the database's file: ``commerce.archive.SharedArchive``) is done only once it
        committed, and must be written again elsewhere when it did not.

        A transaction released into a commit group (:meth:`Database.grouped`) ends when the group commits or
        rolls back. ``at_release``: call ``fn`` when its own work is released into the group instead (True),
        or rolled back (False): for what only needs the work to be on disk before any answer goes out, which
        the group's commit is (the archive's flush owed to the deal's write). Outside a group it is the end."""
        if at_release and self.deferred:
            if self._on_release is None:
                self._on_release = []
            self._on_release.append(fn)
            return
        if self._on_end is None:
            self._on_end = []
        self._on_end.append(fn)

    def _released(self, released: bool) -> None:
        """The ``at_release`` hooks of a deferred transaction, once: its work went into the group, or not."""
        hooks, self._on_release = self._on_release, None
        _run_hooks(hooks, released, "released into its commit group" if released else "rolled back")

    def _ended(self, committed: bool) -> None:
        """Every hook runs, in the order given; the first failure is raised after them all (saying whether the
        transaction had committed: a caller must not take a failure here for a rollback)."""
        if self._on_release is not None:
            self._released(committed)
        hooks, self._on_end = self._on_end, None
        _run_hooks(hooks, committed, "committed" if committed else "rolled back")

    def refuse_commit(self, reason: str) -> None:
        """Make the transaction end in a rollback whatever its caller does next (as a failed statement does)."""
        self._failed = self._failed or reason

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self._failed is not None:
            # PostgreSQL refuses every statement after a failed one; SQLite is made to agree, so code
            # that would break on PostgreSQL breaks in the SQLite tests too
            raise DatabaseError(f"a statement of this transaction failed ({self._failed}); it can only be rolled back")
        self.statements += 1
        if self.backend == "postgresql":
            try:
                return _pg_execute(self._conn, sql, params)
            except Exception as e:
                self._failed = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise _translate(e, self.backend) from None
        cur = self._conn.cursor()
        try:
            cur.execute(sql, tuple(params))
        except Exception as e:
            self._failed = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise _translate(e, self.backend) from None
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for each of ``rows`` (SQLite runs them in one call: a batch of archive entries)."""
        if self.backend == "postgresql" or self._failed is not None:
            for row in rows:
                self.execute(sql, row)
            return
        self.statements += len(rows)
        try:
            self._conn.executemany(sql, [tuple(r) for r in rows])
        except Exception as e:
            self._failed = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise _translate(e, self.backend) from None

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row = self.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.execute(sql, params).fetchall()]


def _run_hooks(hooks: list[Callable[[bool], None]] | None, outcome: bool, state: str) -> None:
    """Every hook, in the order given; the first failure raised after them all, saying what had happened."""
    failure: BaseException | None = None
    for fn in hooks or ():
        try:
            fn(outcome)
        except BaseException as e:
            failure = failure or e
    if failure is not None:
        raise DatabaseError(f"the transaction {state}, but what had to follow it failed: {failure}") from failure


class _Rows:
    """A PostgreSQL statement's outcome, read whole as it finished: its row count (the rows of a query,
    the rows touched by an INSERT/UPDATE/DELETE, as psycopg's cursor counts them) and its rows (none for a
    statement that returns none). What :class:`Transaction` hands back there instead of a psycopg cursor
    (:class:`_PgStatements` says why)."""

    __slots__ = ("rowcount", "_rows", "_next")

    def __init__(self, rowcount: int, rows: list[Any]) -> None:
        self.rowcount = rowcount
        self._rows = rows
        self._next = 0

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rows, self._next = self._rows[self._next:], len(self._rows)
        return rows


@functools.lru_cache(maxsize=1024)
def dollar_params(sql: str) -> str:
    """Standard SQL with ``?`` placeholders -> libpq's ``$1, $2, ...`` form. The statement is tokenised
    (sqlparse's lexer), so a ``?`` inside a string literal, a quoted identifier or a comment stays text;
    ``%`` means nothing to libpq and stays as it is."""
    out, n = [], 0
    for ttype, value in sqlparse.lexer.tokenize(sql):
        if ttype in sqlparse.tokens.Name.Placeholder and value == "?":
            n += 1
            out.append(f"${n}")
        else:
            out.append(value)
    return "".join(out)


PREPARED_MAX = 256               # statements prepared per PostgreSQL connection; more run unprepared


class _PgStatements:
    """What one PostgreSQL connection keeps to run statements in one libpq call each: psycopg's adapter
    (a ``Transformer`` on the connection's adapters, so the NUMERIC loader of :func:`_configure_postgres`
    applies) and the statements it has prepared, by text and parameter types.

    Why not a psycopg cursor: a short statement costs the shop about 20 µs of CPU through
    ``cursor.execute`` (query conversion, prepare bookkeeping, its wait loop), of which libpq's own send and
    receive are about 7 (docs/performance.md); a purchase runs eight. The statements are the same few every
    time, so each is prepared on its second run on a connection (psycopg's cursor prepares them after 5 runs)
    and then run with ``PQexecPrepared``, which blocks with the GIL let go, as psycopg's wait does (a lock
    wait ends at the connection's ``lock_timeout`` either way). Parameters and rows are adapted by psycopg
    exactly as its cursor does (the same ``Transformer``), rows come back as tuples."""

    __slots__ = ("pgconn", "tx", "encoding", "prepared", "seen", "_names", "_auto", "_tuples_ok", "_command_ok",
                 "_error")

    def __init__(self, conn: Any) -> None:
        # psycopg's names looked up once per connection, not per statement (an import statement in a
        # function costs about 1 µs each time, ~20 µs of a purchase)
        from psycopg import errors, pq
        from psycopg.adapt import PyFormat, Transformer
        self.pgconn = conn.pgconn
        self.tx = Transformer(conn)
        self.encoding = conn.info.encoding
        self._auto = PyFormat.AUTO
        self._tuples_ok = pq.ExecStatus.TUPLES_OK
        self._command_ok = pq.ExecStatus.COMMAND_OK
        self._error = errors.error_from_result
        self.prepared: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
        self.seen: set[tuple[bytes, tuple[int, ...]]] = set()     # run once, unprepared: prepared if run again
        self._names = 0

    def execute(self, sql: str, params: Sequence[Any]) -> _Rows:
        query = dollar_params(sql).encode(self.encoding)
        tx = self.tx
        values = tx.dump_sequence(params, [self._auto] * len(params)) if params else None
        types = tuple(tx.types or ()) if params else ()
        formats = tx.formats if params else None
        key = (query, types)
        name = self.prepared.get(key)
        if name is None and key in self.seen and self._names < PREPARED_MAX:
            self._names += 1             # names are never reused: one dropped below may still exist
            candidate = f"_semper_{self._names}".encode()
            made = self.pgconn.prepare(candidate, query, types)
            if made.status != self._command_ok:
                raise self._error(made, encoding=self.encoding)
            self.prepared[key] = name = candidate
            self.seen.discard(key)
        if name is not None:
            result = self.pgconn.exec_prepared(name, values, formats)
        else:
            if len(self.seen) < 4 * PREPARED_MAX:
                self.seen.add(key)
            result = self.pgconn.exec_params(query, values, types, formats)
        status = result.status
        if status == self._tuples_ok:
            tx.set_pgresult(result)
            rows = tx.load_rows(0, result.ntuples, tuple)
            return _Rows(len(rows), rows)
        if status == self._command_ok:
            nrows = result.command_tuples
            return _Rows(nrows if nrows is not None else -1, [])
        error = self._error(result, encoding=self.encoding)
        if name is not None and error.sqlstate == "0A000":
            # a prepared plan gone stale (a table altered under it: "cached plan must not change result
            # type"): this statement fails, as psycopg's would; the next run prepares it afresh
            del self.prepared[key]
        elif name is not None and error.sqlstate == "26000":
            # our names are gone (DEALLOCATE ALL or DISCARD ALL ran on the connection: a pooler's reset, say):
            # this statement fails; every next one prepares afresh (review of the fifth round, 2026-12-07)
            self.prepared.clear()
        raise error

    def command(self, command: bytes) -> bytes:
        """A parameterless transaction command (``BEGIN ...``, ``COMMIT``, ``ROLLBACK``) straight through
        libpq, blocking in ``PQexec`` (which lets go of the GIL) instead of psycopg's Python wait loop: half
        the CPU of ``conn.execute`` (about 7 µs against 15, docs/performance.md), two or three of them per
        transaction. A refusal (a conflict found at COMMIT) or a lost connection raises psycopg's exception
        for its SQLSTATE, as ``conn.execute`` would; a lost connection leaves the connection BAD, so the pool
        drops it when it comes back."""
        result = self.pgconn.exec_(command)
        if result.status != self._command_ok:
            raise self._error(result, encoding=self.encoding)
        return result.command_status or b""


def _pg_statements(conn: Any) -> _PgStatements:
    """The connection's :class:`_PgStatements` (made on first use, kept on the connection: it dies with it)."""
    runner = conn.__dict__.get("_semper_statements")
    if runner is None:
        runner = conn.__dict__["_semper_statements"] = _PgStatements(conn)
    return runner


def _pg_execute(conn: Any, sql: str, params: Sequence[Any]) -> _Rows:
    """One statement (``?`` placeholders) on the connection, its rows read before the answer."""
    return _pg_statements(conn).execute(sql, params)


def _pg_command(conn: Any, command: bytes) -> bytes:
    """``BEGIN ...``, ``COMMIT`` or ``ROLLBACK`` on the connection (:meth:`_PgStatements.command`); the
    server's command tag (``COMMIT`` of an aborted transaction answers ``ROLLBACK``, as a success)."""
    return _pg_statements(conn).command(command)


def _failed_write(tx: Transaction) -> DatabaseError:
    return DatabaseError(f"a statement of this transaction failed ({tx._failed}) and its error was caught; "
                         "the transaction was rolled back, nothing of it committed")


def _refuse_failed_write(conn: Any, tx: Transaction, write: bool) -> None:
    """Before a write transaction's COMMIT: if one of its statements failed and the caller caught the error,
    roll back and raise, on either back end, so nothing of it is committed and the caller hears so. Why
    (review of the fifth round, 2026-12-07): PostgreSQL answers COMMIT of an aborted transaction with
    ROLLBACK, as a success, so ``run`` returned normally with nothing written; SQLite committed the
    statements before the failed one. A read transaction that caught its error ends quietly (a migration
    asks for a table that may not be there yet)."""
    if write and tx._failed is not None:
        _quietly_rollback(conn)
        raise _failed_write(tx)


def _translate(e: BaseException, backend: str) -> BaseException:
    """A driver's exception as this module's: constraint, conflict, busy, or a plain DatabaseError."""
    if backend == "sqlite":
        if isinstance(e, sqlite3.IntegrityError):
            return IntegrityError(str(e))
        if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
            return BusyError(f"the database is busy: {e}")
        if isinstance(e, sqlite3.Error):
            return DatabaseError(f"the database refused a statement: {e}")
        return e
    import psycopg
    from psycopg import errors as pge
    if isinstance(e, pge.SerializationFailure | pge.DeadlockDetected):
        return _Conflict(f"the transaction conflicted with a concurrent one: {e}")
    if isinstance(e, pge.LockNotAvailable | pge.QueryCanceled):
        return BusyError(f"the database is busy (a lock was held longer than {BUSY_TIMEOUT_S:g} s): {e}")
    if isinstance(e, psycopg.IntegrityError):
        return IntegrityError(str(e))
    if isinstance(e, psycopg.Error):
        return DatabaseError(f"the database refused a statement: {e}")
    return e


@dataclass(eq=False)
class _Group:
    """One thread's commit group: a SQLite write transaction holding the work of the transactions released
    into it (each was a savepoint), committed once for all of them."""
    conn: sqlite3.Connection
    released: list[Transaction]
    done: list[Callable[[BaseException | None], None]]
    ended: threading.Event = field(default_factory=threading.Event)    # set once committed or lost


GROUP_STEP = "semper_step"        # the savepoint each transaction of a commit group runs in
_held = threading.local()         # the databases with a commit group open on this thread (held_groups)


def _groups_held() -> list[Database]:
    held: list[Database] | None = getattr(_held, "dbs", None)
    if held is None:
        held = _held.dbs = []
    return held


def held_group_ended() -> threading.Event | None:
    """An event set once this thread's open commit group has committed or was lost (None: it holds none).
    What a lock released with work in a group hands to the next holder, who must not read around it
    (``PaymentManager._stepping``)."""
    for db in getattr(_held, "dbs", None) or ():
        group: _Group | None = getattr(db._local, "group", None)
        if group is not None:
            return group.ended
    return None


def commit_held_groups(path: str | Path | None = None) -> None:
    """Commit the commit groups this thread holds (of the SQLite file at ``path``, or all), before this thread
    waits for something a writer of the file may hold, or writes the file on a connection of its own (the
    evidence archive, an exchange party's archive). Why: a group holds the file's write lock until its
    commit, which this thread makes; waiting for that lock, or for a Python lock whose holder waits for it,
    would stall the thread until the busy timeout (review of 2026-12-07). Raises the group's error when it
    could not be committed: what the caller was about to do may rest on its work."""
    held = getattr(_held, "dbs", None)
    if not held:
        return
    target = None if path is None else Path(path).resolve()
    for db in list(held):
        if target is None or Path(db.dsn.target).resolve() == target:
            error = db.commit_group()
            if error is not None:
                raise DatabaseError(f"this thread's commit group on {db.dsn.display} was lost: {error}") from error


class Database:
    """One store's database: connections on demand, transactions, migrations; safe to share between
    threads. After a fork the child opens connections of its own."""

    def __init__(self, dsn: str | Path, *, pool_size: int = POOL_MAX) -> None:
        self.dsn = Dsn.parse(dsn)
        self.pool_size = pool_size
        self.retries = 0                         # serialization failures retried (read by tests and benches)
        # transactions begun in this process (read-only, writing) and the statements run in them: what a
        # request costs the database, for the benches (the shop's /stats); counted, never limited
        # "commits": SQLite write transactions committed, a commit group once for all its transactions
        self.counts = {"read": 0, "write": 0, "statements": 0, "commits": 0}
        self._group_lost: list[Callable[[], None]] = []
        self.groups_lost = 0                     # commit groups that failed to commit (an answer checks it)
        self._lock = threading.Lock()
        self._reset()
        if self.dsn.backend == "sqlite":
            Path(self.dsn.target).parent.mkdir(parents=True, exist_ok=True)

    @property
    def backend(self) -> str:
        return self.dsn.backend

    def _reset(self) -> None:
        """Forget every connection (a new process: the parent's belong to the parent). The parent's
        pool object is kept, unused: collecting it here would run its finaliser in the child."""
        if getattr(self, "_pool", None) is not None:
            self._inherited = [*getattr(self, "_inherited", []), self._pool]
        self._pid = _this_process()
        self._local = threading.local()
        self._all: list[Any] = []
        self._pool: Any = None

    def _check_process(self) -> None:
        if self._pid != _this_process():
            with self._lock:
                if self._pid != _this_process():
                    self._reset()

    # ---- connections ------------------------------------------------------------------------------
    def _sqlite(self, write: bool) -> sqlite3.Connection:
        """This thread's writer or reader connection (the reader is query-only for good)."""
        name = "writer" if write else "reader"
        conn = getattr(self._local, name, None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(self.dsn.target, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
            # every commit flushes the log to disk: said, not left to the build's default (a shop's archive
            # entries written in its deals' transactions are on disk by this flush alone: commerce.archive)
            conn.execute("PRAGMA synchronous = FULL")
            _wal(conn)
            if not write:
                conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot open the database {self.dsn.target}: {e}") from None
        setattr(self._local, name, conn)
        with self._lock:
            self._all.append(conn)
        return conn

    def _sqlite_reader(self) -> sqlite3.Connection:
        """The connection :meth:`read_one` runs its one SELECT on: this thread's writer when it is open and
        between transactions, else the query-only reader.

        Why the writer: SQLite keeps a connection's page cache across its own commits, but a connection that
        sees another one's commit drops its whole cache. The shop writes a deal and reads the next step's
        rows on one thread, so its reader re-read every page it needed from the file after each commit (about
        20 µs of a purchase's 2 reads, docs/performance.md); the writer still has them. Outside a transaction
        the writer's SELECT is a read transaction of its own, as the reader's is: it sees the last commit,
        and read_one runs a SELECT alone (checked), so it writes nothing. Inside a write transaction of this
        thread the writer would see that transaction's uncommitted rows: then the reader. (Inside a read
        transaction of this thread read_one does not come here: it reads in that transaction.)"""
        writer = getattr(self._local, "writer", None)
        if writer is not None and not writer.in_transaction:
            return writer
        return self._sqlite(False)

    def _postgres_pool(self) -> Any:
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is not None:
                return self._pool
            try:
                from psycopg_pool import ConnectionPool, PoolTimeout
            except ImportError:
                raise DatabaseError("a postgresql:// URL needs the psycopg and psycopg_pool packages "
                                    "(pip install 'psycopg[binary,pool]')") from None
            pool = ConnectionPool(self.dsn.target, min_size=1, max_size=max(1, self.pool_size), open=False,
                                  kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S,
                                          # psycopg prepares nothing of its own on these connections: its
                                          # rollback would then send DEALLOCATE ALL, taking ours too
                                          "prepare_threshold": None},
                                  configure=_configure_postgres, timeout=BUSY_TIMEOUT_S,
                                  name=f"semper-{os.getpid()}", reconnect_timeout=60)
            try:
                pool.open(wait=True, timeout=CONNECT_TIMEOUT_S + 5)
            except PoolTimeout:
                pool.close(timeout=1)
                raise DatabaseError(f"cannot connect to the PostgreSQL database {self.dsn.display} within "
                                    f"{CONNECT_TIMEOUT_S} s: is the server running, and the URL right?") from None
            self._pool = pool
            return pool

    def _getconn(self) -> tuple[Any, Any]:
        """This process's pool and a connection of it, to give back with ``pool.putconn``. Taken and given
        back by hand rather than with the pool's ``connection()`` context manager: one generator less per
        transaction, and the pool's checks on return are the same (a BAD connection is dropped)."""
        pool = self._postgres_pool()
        try:
            return pool, pool.getconn()
        except Exception as e:
            # imported here, not before the call: an import on every call costs about 1 µs
            from psycopg_pool import PoolTimeout
            if isinstance(e, PoolTimeout):
                raise BusyError(f"no connection to {self.dsn.display} became free within "
                                f"{BUSY_TIMEOUT_S:g} s") from None
            raise

    # ---- transactions -----------------------------------------------------------------------------
    @contextmanager
    def transaction(self, *, write: bool = True, exclusive: bool = False) -> Iterator[Transaction]:
        """Run the block as one transaction: committed on success, rolled back on any exception.

        ``write=False`` for blocks that only read: they see one consistent snapshot and never queue
        behind writers (nor can they write). ``exclusive``: the transaction runs alone among
        exclusive ones (PostgreSQL: READ COMMITTED under an advisory lock, for schema migrations;
        SQLite writers are exclusive anyway). One attempt: a PostgreSQL conflict raises
        :class:`BusyError`; write paths use :meth:`run`, which retries.
        """
        self._check_process()
        tx = None
        try:
            if self.dsn.backend == "sqlite":
                with self._sqlite_transaction(write or exclusive) as tx:
                    yield tx
            else:
                pool, conn = self._getconn()
                try:
                    with self._postgres_transaction(conn, write, exclusive) as tx:
                        yield tx
                finally:
                    pool.putconn(conn)
        finally:
            with self._lock:
                self.counts["write" if write or exclusive else "read"] += 1
                self.counts["statements"] += tx.statements if tx is not None else 0

    def writing(self) -> Transaction | None:
        """The write transaction open on this thread (SQLite), if any: what an archive sharing this database's
        file writes its rows in, so that they commit with it (``commerce.archive.SharedArchive``)."""
        return getattr(self._local, "writing", None) if self._pid == _this_process() else None

    @contextmanager
    def _sqlite_transaction(self, write: bool) -> Iterator[Transaction]:
        if getattr(self._local, "grouping", None) is not None:
            if self._local.writing is None:
                if write:
                    with self._grouped_transaction() as tx:
                        yield tx
                    return
                if self._local.group is not None:
                    with self._group_read() as tx:
                        yield tx
                    return
            # (inside a transaction of the group: a read on the reader, as before; a write nested in it fails)
        elif getattr(self._local, "group", None) is not None:
            # a transaction outside grouped(): the group's work is committed first (what this one does may
            # rest on it: if it was lost, this one is not begun)
            lost = self.commit_group()
            if lost is not None:
                raise DatabaseError(f"this thread's commit group was lost before this transaction: {lost}") from lost
        conn = self._sqlite(write)
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as e:
            raise BusyError(f"the database {self.dsn.target} is busy or unwritable: {e}") from None
        tx = Transaction(conn, "sqlite")
        outer = self._enter_snapshot(tx, write)
        if write:
            self._local.writing = tx
        committed = False
        try:
            try:
                yield tx
            finally:
                self._local.snapshot = outer
            _refuse_failed_write(conn, tx, write)
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise _translate(e, "sqlite") from None
            committed = True
            if write:
                with self._lock:
                    self.counts["commits"] += 1
        finally:
            if write:
                self._local.writing = None      # the hooks run outside it (an archive's own writes, its flush)
            self._end(conn, tx, committed)

    # ---- commit groups (SQLite) -------------------------------------------------------------------
    @contextmanager
    def grouped(self, schedule: Callable[[Callable[[], None]], Any]) -> Iterator[None]:
        """Inside the block, this thread's write transactions are released into a commit group instead of
        each committing: the first one begins a SQLite write transaction and asks ``schedule`` (an event
        loop's ``call_soon``: it must call back on this same thread) to commit it; each one runs in a
        savepoint, rolled back alone when it fails. SQLite only; elsewhere nothing changes.

        Why: a commit with its disk flush costs the seller about 220 µs of CPU and 490 µs of its event loop,
        twice a purchase (docs/performance.md); the requests an event loop takes in one turn share one.
        What it asks of the caller: nothing that depends on the group's work may leave the process before
        the group has committed. An answer waits for :meth:`when_committed`; a transaction of this thread
        outside the block, and a disk flush of a SharedArchive on this file, commit the group first; another
        thread never sees the group's work before its commit (it waits for the write lock). A group that
        fails to commit calls every :meth:`on_group_lost` callback (what the process remembered of its work
        is forgotten), and its waiters hear the error instead of answering."""
        if self.dsn.backend != "sqlite":
            yield
            return
        self._check_process()
        outer = getattr(self._local, "grouping", None)
        self._local.grouping = schedule
        if not hasattr(self._local, "group"):
            self._local.group = None
        if not hasattr(self._local, "writing"):
            self._local.writing = None
        try:
            yield
        finally:
            self._local.grouping = outer

    def group_open(self) -> bool:
        """Whether a commit group with work not committed yet is open on this thread."""
        return getattr(self._local, "group", None) is not None and self._pid == _this_process()

    def when_committed(self, fn: Callable[[BaseException | None], None]) -> bool:
        """Call ``fn(None)`` once this thread's open commit group committed, ``fn(error)`` if it failed; False
        (and no call) when no group is open: everything of this thread is committed already."""
        group: _Group | None = getattr(self._local, "group", None)
        if group is None:
            return False
        group.done.append(fn)
        return True

    def on_group_lost(self, fn: Callable[[], None]) -> None:
        """``fn()`` after a commit group failed to commit (its transactions' work is gone): a cache of this
        process that their work updated is dropped there."""
        self._group_lost.append(fn)

    def commit_group(self) -> BaseException | None:
        """Commit this thread's open commit group now (its scheduled call, or before anything that must not
        wait for it); the error if it failed. It is not raised: the group's waiters and
        :meth:`on_group_lost` hear it, and the caller decides what its own work does then."""
        group: _Group | None = getattr(self._local, "group", None)
        if group is None:
            return None
        self._drop_group()
        error: BaseException | None = None
        try:
            group.conn.execute("COMMIT")
        except sqlite3.Error as e:
            error = _translate(e, "sqlite")
            _quietly_rollback(group.conn)
        else:
            with self._lock:
                self.counts["commits"] += 1
        self._end_group(group, error)
        return error

    def _drop_group(self) -> None:
        """This thread's group is no longer open (it is being committed, or SQLite ended it)."""
        self._local.group = None
        held = _groups_held()
        if self in held:
            held.remove(self)

    def _commit_scheduled(self, group: _Group) -> None:
        if getattr(self._local, "group", None) is group:
            self.commit_group()

    def _end_group(self, group: _Group, error: BaseException | None) -> None:
        """The group's transactions end (their hooks), then what waited for it hears; on failure the
        process's remembered state of it is dropped first. Nothing here raises: a hook's failure is logged."""
        if error is not None:
            log.error("a commit group of %d transaction(s) on %s was not committed: %s", len(group.released),
                      self.dsn.display, error)
            with self._lock:
                self.groups_lost += 1
            for lost in self._group_lost:
                try:
                    lost()
                except Exception:
                    log.exception("dropping what this process remembered of a lost commit group failed")
        for tx in group.released:
            try:
                tx._ended(error is None)
            except Exception:
                log.exception("what had to follow a transaction of a commit group failed")
        group.ended.set()
        for fn in group.done:
            try:
                fn(error)
            except Exception:
                log.exception("a waiter of a commit group failed")

    @contextmanager
    def _grouped_transaction(self) -> Iterator[Transaction]:
        """A write transaction released into this thread's commit group (see :meth:`grouped`)."""
        if getattr(self._local, "group_reads", 0):
            raise DatabaseError("a write transaction inside a read transaction of a commit group: end the read first")
        conn = self._sqlite(True)
        group: _Group | None = self._local.group
        if group is None:
            if getattr(self._local, "undo_in", None) is not conn:
                # the steps' undo pages (savepoints) in memory: on disk, SQLite made, wrote and unlinked a
                # temporary file per group. Only on a connection that holds groups (the shop's event loop's
                # writer): elsewhere temporary storage stays on disk, where a migration's index build or a
                # large sort spills instead of growing the process (review of 2026-12-08)
                conn.execute("PRAGMA temp_store = MEMORY")
                self._local.undo_in = conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise BusyError(f"the database {self.dsn.target} is busy or unwritable: {e}") from None
            group = self._local.group = _Group(conn, [], [])
            _groups_held().append(self)
            self._local.grouping(functools.partial(self._commit_scheduled, group))
        try:
            conn.execute("SAVEPOINT " + GROUP_STEP)
        except sqlite3.Error as e:
            raise _translate(e, "sqlite") from None
        tx = Transaction(conn, "sqlite")
        tx.deferred = True
        outer = self._enter_snapshot(tx, True)
        self._local.writing = tx
        released = False
        try:
            try:
                yield tx
            finally:
                self._local.snapshot = outer
            if tx._failed is not None:
                raise _failed_write(tx)         # rolled back to its savepoint below
            try:
                conn.execute("RELEASE " + GROUP_STEP)
            except sqlite3.Error as e:
                raise _translate(e, "sqlite") from None
            released = True
        finally:
            self._local.writing = None
            if released:
                group.released.append(tx)
                tx._released(True)
            else:
                self._roll_back_step(group, tx)

    def _roll_back_step(self, group: _Group, tx: Transaction) -> None:
        """One transaction of the group rolled back to its savepoint; the others stay. When SQLite had already
        ended the whole transaction (it does on a full disk or an I/O error), the group is lost with it."""
        conn = group.conn
        try:
            conn.execute("ROLLBACK TO " + GROUP_STEP)
            conn.execute("RELEASE " + GROUP_STEP)
        except sqlite3.Error:
            pass
        try:
            tx._ended(False)
        finally:
            if not conn.in_transaction and self._local.group is group:
                self._drop_group()
                self._end_group(group, DatabaseError("SQLite rolled the whole transaction back after an error"))

    @contextmanager
    def _group_read(self) -> Iterator[Transaction]:
        """A read transaction inside grouped() while the group is open: on the group's connection, which sees
        its work (read in the group's transaction, whose snapshot nobody else changes: it holds the write
        lock). A write transaction inside it is refused (nobody nests so; outside a group they would be
        separate connections)."""
        group: _Group = self._local.group
        tx = Transaction(group.conn, "sqlite")
        outer = self._enter_snapshot(tx, False)
        self._local.group_reads = getattr(self._local, "group_reads", 0) + 1
        if self._local.group_reads == 1:
            group.conn.execute("PRAGMA query_only = 1")     # a read that tries to write fails, as outside a group
        try:
            yield tx
        finally:
            self._local.group_reads -= 1
            if not self._local.group_reads:
                group.conn.execute("PRAGMA query_only = 0")
            self._local.snapshot = outer
            tx._ended(False)

    @contextmanager
    def _postgres_transaction(self, conn: Any, write: bool, exclusive: bool) -> Iterator[Transaction]:
        if exclusive:
            begin = b"BEGIN ISOLATION LEVEL READ COMMITTED"
        elif write:
            begin = b"BEGIN ISOLATION LEVEL SERIALIZABLE"
        else:
            begin = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        try:
            _pg_command(conn, begin)
            if exclusive:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        except Exception as e:
            raise _translate(e, "postgresql") from None
        tx = Transaction(conn, "postgresql")
        outer = self._enter_snapshot(tx, write or exclusive)
        committed = False
        try:
            try:
                yield tx
            finally:
                self._local.snapshot = outer
            _refuse_failed_write(conn, tx, write or exclusive)
            try:
                tag = _pg_command(conn, b"COMMIT")   # PostgreSQL may refuse here too (a conflict found at commit)
            except Exception as e:
                raise _translate(e, "postgresql") from None
            if (write or exclusive) and tag != b"COMMIT":
                # aborted by the server without a statement of ours failing: nothing was committed
                raise DatabaseError(f"the database rolled this transaction back instead of committing it ({tag!r})")
            committed = True
        finally:
            self._end(conn, tx, committed)

    @staticmethod
    def _end(conn: Any, tx: Transaction, committed: bool) -> None:
        """A transaction's end on either back end: rolled back unless it committed, then its hooks."""
        if not committed:
            _quietly_rollback(conn)
        tx._ended(committed)

    def _enter_snapshot(self, tx: Transaction, write: bool) -> Transaction | None:
        """A read transaction begins on this thread: :meth:`read_one` runs in it until it ends (the caller
        puts back what this returns, the one it was nested in, if any). A write transaction changes nothing:
        read_one in it reads the last commit, never the transaction's own rows."""
        outer: Transaction | None = getattr(self._local, "snapshot", None)
        if not write:
            self._local.snapshot = tx
        return outer

    def read_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of one query (by a key: it reads every row), as a read transaction of its own
        with nothing around it: a single statement sees one consistent snapshot on both back ends
        (SQLite's reader outside ``BEGIN``, PostgreSQL's autocommit), so this is :meth:`transaction`
        (``write=False``) with one ``one``, in one round trip to PostgreSQL instead of three (``BEGIN``,
        the query, ``COMMIT``). Only a ``SELECT`` is taken: PostgreSQL's autocommit would run anything.

        Inside a read transaction open on this thread (:meth:`transaction`, ``write=False``) it is that
        transaction's ``one``: it reads the transaction's snapshot, as every statement in it does. Why
        (review of 2026-12-07): SQLite's read_one runs on the thread's writer between its transactions
        (:meth:`_sqlite_reader`), and PostgreSQL's on a pooled connection of its own, so inside a read
        transaction both read the latest commit, newer than the transaction's other reads. So in a write
        transaction opened inside such a read transaction on the same thread it reads the outer read's
        snapshot too (nobody nests so today)."""
        if not sql.lstrip()[:6].upper() == "SELECT":
            raise DatabaseError("read_one runs one SELECT; anything else goes in a transaction")
        self._check_process()
        snapshot: Transaction | None = getattr(self._local, "snapshot", None)
        if snapshot is not None:
            return snapshot.one(sql, params)
        try:
            # every row fetched: the statement is finished, so no snapshot stays open behind it
            if self.dsn.backend == "sqlite":
                group = getattr(self._local, "group", None)
                conn = group.conn if group is not None and getattr(self._local, "grouping", None) is not None \
                    and self._local.writing is None else self._sqlite_reader()
                rows = conn.execute(sql, tuple(params)).fetchall()
            else:
                pool, conn = self._getconn()
                try:
                    rows = _pg_execute(conn, sql, params).fetchall()
                finally:
                    pool.putconn(conn)
        except (BusyError, DatabaseError):
            raise
        except Exception as e:
            raise _translate(e, self.dsn.backend) from None
        finally:
            with self._lock:
                self.counts["read"] += 1
                self.counts["statements"] += 1
        return tuple(rows[0]) if rows else None

    def run(self, fn: Callable[[Transaction], T], *, write: bool = True) -> T:
        """``fn(tx)`` in one transaction, run again when PostgreSQL refused it as a conflict.

        The one place serialization failures and deadlocks are retried: up to
        :data:`RETRY_ATTEMPTS` runs with jittered, doubling pauses; then :class:`BusyError`. Any
        other exception (a refusal of the service, a constraint) ends it at once, rolled back.
        """
        pause = RETRY_BACKOFF_S
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                with self.transaction(write=write) as tx:
                    return fn(tx)
            except _Conflict as e:
                if attempt == RETRY_ATTEMPTS:
                    raise BusyError(f"the database kept refusing this transaction as a conflict with concurrent "
                                    f"ones ({attempt} attempts); retry later: {e}") from None
                with self._lock:
                    self.retries += 1
                log.debug("serialization conflict, attempt %d: %s", attempt, e)
                time.sleep(random.uniform(0, pause))
                pause = min(pause * 2, RETRY_BACKOFF_CAP_S)
        raise AssertionError("unreachable")

    def migrate(self, schema: Schema) -> int:
        """Bring ``schema``'s store to its newest version (``client/support/migrations.py``); the version."""
        from .migrations import migrate
        return migrate(self, schema)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
            pool, self._pool = self._pool, None
            mine = self._pid == _this_process()
        self._local = threading.local()
        if not mine:
            return                        # a forked child: the connections are the parent's to close
        for c in conns:
            try:
                c.close()
            except Exception:
                pass
        if pool is not None:
            pool.close(timeout=5)

    def __repr__(self) -> str:
        return f"Database({self.dsn.backend}: {self.dsn.display})"


def _wal(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so). Switching needs a lock SQLite does not wait for, so
    processes opening a new file together would fail at once: retried until the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _quietly_rollback(conn: Any) -> None:
    """Roll back, keeping the error that got us here: a transaction SQLite already ended, or a
    PostgreSQL connection that broke meanwhile (the pool discards it), has nothing to roll back."""
    try:
        if isinstance(conn, sqlite3.Connection):
            conn.execute("ROLLBACK")
        else:
            _pg_command(conn, b"ROLLBACK")
    except Exception:
        pass


def _configure_postgres(conn: Any) -> None:
    """Each new pooled connection: NUMERIC results with no fraction load as int (SUM of BIGINT is
    NUMERIC in PostgreSQL, INTEGER in SQLite), and lock waits are bounded like SQLite's."""
    from psycopg.types.numeric import NumericLoader

    class IntegralNumericLoader(NumericLoader):
        def load(self, data: Any) -> Any:
            value = super().load(data)
            return int(value) if value.is_finite() and value == value.to_integral_value() else value

    conn.adapters.register_loader("numeric", IntegralNumericLoader)
    conn.execute(f"SET lock_timeout = '{int(BUSY_TIMEOUT_S * 1000)}ms'")
    conn.execute("SET idle_in_transaction_session_timeout = '60s'")
    conn.execute("SET TIME ZONE 'UTC'")
