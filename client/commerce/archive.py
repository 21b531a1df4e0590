"""One evidence archive file used from many threads (a shop answers in a thread pool), with group commit.

Why: :class:`client.support.archive.Archive` holds one SQLite connection, which Python allows only
in the thread that opened it. The archive's own design already lets many connections append to one
file (they race on the primary key and retry), so each thread gets its own :class:`Archive` on the
same file; all of them are closed together.

Durability by group commit: every append is a committed transaction (so the hash chain is never
half-written), but the file runs in SQLite's WAL mode without a disk flush per commit; :meth:`sync`
flushes the log to disk. The commerce layer calls it where a party is about to *give* something —
the buyer before it pays and at the end of each deal, the seller before it delivers — so everything
archived before that point survives a power cut. Each flush costs one fsync (~3 ms on this machine's
disk) instead of one or more per entry (13 entries per purchase; see docs/performance.md).

One file with the deals (``joined``): when the seller's deals are in a SQLite database in the very file the
archive is in (a shop's default since 2026-12-07, ``servers.shop_home``), the entries waiting in a thread's
batch are written in the deal's own write transactions (``DealStore`` asks :meth:`SharedArchive.write_pending_in`
after it wrote the deal's row, and :meth:`SharedArchive.sync` inside such a transaction writes them there):
one commit and one disk flush for the deal and its evidence, where there were two transactions and a
flush of the archive's own beside the deal's, and the deal's row never stands committed without its
entries. A transaction that rolls back gives its entries back to the batch (or writes them alone right
after), so what was archived stays archived, as before.

Batches: inside :meth:`SharedArchive.batch` a thread's appends wait in memory and are written in one
transaction when the block ends, or earlier at :meth:`sync` (so a flush always covers them). A seller's
request handler runs in such a block: its entries reach the file before its answer is sent, exactly as
without the batch; what the batch changes is that a process killed *inside* the handler loses the
entries of that handler, which no answer had referred to yet (docs/performance.md says which).
"""
from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..support.archive import (
    Archive,
    ArchiveError,
    Entry,
    Row,
    StatementSigner,
    commit_groups_of,
    entry_row,
    statement_kind,
)


class SharedArchive:
    def __init__(self, path: Path, *, sign: StatementSigner | None = None, joined: Any = None) -> None:
        """``joined``: the deals' ``support.db.Database``; used only when it is SQLite in this very file."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wal = str(self.path.with_name(self.path.name + "-wal"))      # SQLite's log, flushed by sync()
        self.sign = sign
        self.joined = joined if joined is not None and shares_file(joined, self.path) else None
        self._local = threading.local()
        self._all: list[Archive] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._syncs_started = self._syncs_done = 0
        # this process's writes of entries in transactions of the archive's own ("alone"), in the deals'
        # transactions ("in_deal": the deals in this file), and flushes of the log: for /stats and the benches
        self.counts = {"alone": 0, "in_deal": 0, "flushes": 0}
        self.archive_id = self._mine().archive_id

    def _mine(self) -> Archive:
        a = getattr(self._local, "archive", None)
        if a is None:
            a = Archive.open(self.path, create=True, sign=self.sign)
            db = a._db                      # the archive's own connection: only the journal settings change
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.archive = a
            with self._lock:
                self._all.append(a)
        return a

    def append(self, deal_id: str, kind: str, content: bytes, *, when: dt.datetime | None = None) -> Entry | None:
        """One writer at a time in this process: appends extend one chain, so they cannot overlap anyway,
        and queueing here costs microseconds where SQLite's lock retries cost milliseconds. Inside
        :meth:`batch` the entry is checked and timed now and written with the batch (None is returned)."""
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append(entry_row(deal_id, kind, content, when))
            return None
        tx = self._joined_tx()
        if tx is not None:              # the file's write lock is this thread's transaction's: written in it
            self._write_in(tx, [entry_row(deal_id, kind, content, when)])
            return None
        if self._grouped():
            self._write_in_group([entry_row(deal_id, kind, content, when)])
            return None
        with self._write_lock:
            self.counts["alone"] += 1
            return self._mine().append(deal_id, kind, content, when=when)

    def append_statement(self, deal_id: str, statement_der: bytes, *, statement_type: str | None = None,
                         **kwargs: Any) -> Entry | None:
        kind = statement_kind(statement_der, statement_type)          # parsed and checked outside the lock
        return self.append(deal_id, kind, statement_der, **kwargs)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """This thread's appends inside the block are written together, in one transaction, when it ends
        (also when it ends by an exception: what was archived stays archived) or at :meth:`sync`."""
        if getattr(self._local, "pending", None) is not None:
            yield                                   # already in a batch: the outer block writes
            return
        self._local.pending = []
        try:
            yield
        finally:
            try:
                self._flush()
            finally:
                self._local.pending = None

    def drop_pending(self, deal_id: str) -> int:
        """Forget this thread's batched entries of ``deal_id`` not written yet (how many): an order that lost
        the race for a new deal id, or was refused when its deal was to be written, has no deal to be
        evidence of, and its offer and order must not reach the archive under the deal id another order
        holds (review of 2026-12-07: the judge read the loser's offer and order first)."""
        pending = getattr(self._local, "pending", None)
        if not pending:
            return 0
        kept = [row for row in pending if row[0] != deal_id]
        dropped = len(pending) - len(kept)
        pending[:] = kept
        return dropped

    def _flush(self) -> None:
        pending = getattr(self._local, "pending", None)
        if pending:
            tx = self._joined_tx()
            if tx is not None:
                self.write_pending_in(tx)
                return
            self._local.pending = []
            if self._grouped():
                self._write_in_group(pending)
                return
            with self._write_lock:
                self._mine().append_rows(pending)           # made by entry_row() in append()
                self.counts["alone"] += 1

    # ---- one file with the deals ----------------------------------------------------------------------
    def _joined_tx(self) -> Any:
        """The deals' write transaction open on this thread, when the deals share this file (else None)."""
        return self.joined.writing() if self.joined is not None else None

    def _grouped(self) -> bool:
        """Whether this thread holds a commit group of the deals on this file (``Database.grouped``): it holds
        the file's write lock, so the archive's own connection would wait for it; entries go in the group."""
        return self.joined is not None and bool(self.joined.group_open())

    def _write_in_group(self, rows: list[Row]) -> None:
        """``rows`` written in a transaction of this thread's commit group (as in a deal's transaction)."""
        assert self.joined is not None
        with self.joined.transaction() as tx:
            self._write_in(tx, rows)

    def write_pending_in(self, tx: Any) -> int:
        """Write this thread's batched entries in ``tx``, the deals' write transaction on this file (how many;
        0 when the deals are elsewhere). They leave the batch once it committed; if it rolls back they go
        back to it (or, with no batch open any more, are written alone at once)."""
        if self.joined is None or tx is not self.joined.writing():
            return 0
        pending = getattr(self._local, "pending", None)
        if not pending:
            return 0
        rows = list(pending)
        pending.clear()
        self._write_in(tx, rows)
        if getattr(self._local, "owed", False):
            # a sync() owed to this write (sync_with_next_write): its entries are among the rows, and the
            # commit flushes the log, everything written to the file before it included
            def paid(committed: bool) -> None:
                if committed:
                    self._local.owed = False
            # in a commit group: paid once the rows are in it, whose commit every answer waits for
            tx.on_end(paid, at_release=True)
        return len(rows)

    @contextmanager
    def sync_with_next_write(self) -> Iterator[None]:
        """Inside the block (and a batch, with the deals in this file), :meth:`sync` writes nothing and owes
        its flush to the deal's next write transaction on this thread, which writes the batch and flushes the
        log with its commit; the caller pays what is still owed with :meth:`settle_owed` before it gives
        anything. Why: the shop's payment step signs the delivery note and syncs its archive *before* the
        payment's transaction that commits the deal paid (``Shop._pay``): the archive's own write and flush
        there were a second commit and a second flush beside the deal's (docs/performance.md)."""
        if self.joined is None or getattr(self._local, "pending", None) is None:
            yield
            return
        outer = getattr(self._local, "defer", False)
        self._local.defer = True
        try:
            yield
        finally:
            self._local.defer = outer

    def settle_owed(self) -> None:
        """The flush a :meth:`sync` inside :meth:`sync_with_next_write` owes, when no deal's write committed
        since (the step failed, nothing was written): done now, as :meth:`sync` does it."""
        if getattr(self._local, "owed", False):
            self._local.owed = False
            self.sync()

    def _write_in(self, tx: Any, rows: list[Row]) -> None:
        """``rows`` written in ``tx``; if ``tx`` rolls back, every row written in it is given back, in the
        order made, to this thread's batch (or, with no batch open, written alone right after). They are
        counted as the transaction's before the insert, so a failed insert gives them back too (and the
        transaction cannot commit then: a failed statement refuses its commit, and so does this). No
        ``_write_lock``: the transaction holds the file's write lock, and a thread of this process waiting
        on the lock to append alone holds ``_write_lock`` while it waits."""
        archive = self._mine()
        given: list[Row] | None = getattr(tx, "archive_rows", None)
        if given is None:
            given = tx.archive_rows = []

            def ended(committed: bool) -> None:
                if committed:
                    archive.checkpoint_if_due()
                    return
                current = getattr(self._local, "pending", None)
                if current is not None:
                    current[:0] = given                 # back in this thread's batch, before what came since
                    return
                with self._write_lock:                  # the batch is gone: written alone, as an append would
                    archive.append_rows(given)
                    self.counts["alone"] += 1
            tx.on_end(ended)
        given.extend(rows)
        try:
            archive.append_rows_in(tx, rows)
        except BaseException as e:
            tx.refuse_commit(f"the archive's entries were not written in it ({type(e).__name__})")
            raise
        with self._lock:
            self.counts["in_deal"] += 1

    def __getattr__(self, name: str) -> Any:
        """Every Archive method, on this thread's connection (entries, export...), after this thread's batch.
        Not inside the deals' write transaction on this file: the archive's own connection would wait for
        that transaction's lock (and not see the entries written in it)."""
        if self._joined_tx() is not None:
            raise ArchiveError(f"the archive's {name} cannot be used inside a transaction of the deals on its file "
                               "(it would wait for that transaction); use it after the transaction")
        self._flush()
        if self._grouped():
            commit_groups_of(self.path)         # the archive's own connection reads (and waits for) what committed
        return getattr(self._mine(), name)

    def sync(self) -> None:
        """Make every entry appended so far durable (one flush of SQLite's write-ahead log).

        Group commit: threads that ask while another flush runs wait for it and then share one more
        flush, started after all of them asked; a flush that *started* after a caller asked covers
        everything that caller wrote, so the caller needs no flush of its own (docs/performance.md)."""
        tx = self._joined_tx()
        if tx is not None:
            # written in the deals' transaction now open on this thread: on disk with its commit (the log is
            # flushed then, everything written to the file before it too), which comes before any answer
            # that gives something (the caller's step returns through it). A transaction with nothing of the
            # archive's in it may write nothing at all, and then its commit flushes nothing: the log is
            # flushed as before, once it ended
            self._flush()
            if not getattr(tx, "archive_rows", None):
                tx.on_end(lambda _committed: self.sync())
            return
        if getattr(self._local, "defer", False) and getattr(self._local, "pending", None) is not None:
            self._local.owed = True                 # paid by the deal's next write, or by settle_owed()
            return
        self._flush()
        if self._grouped():
            commit_groups_of(self.path)
            return      # this thread's commit group held the entries (and the file's lock): its commit flushed the log
        asked = self._syncs_started                 # flushes numbered above this start after our writes
        with self._sync_lock:
            if self._syncs_done > asked:
                return                              # one of them has completed: our entries are on disk
            self._syncs_started += 1
            number = self._syncs_started
            self._fsync_log()
            self.counts["flushes"] += 1
            self._syncs_done = number

    def _fsync_log(self) -> None:
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            return                              # nothing written since the last checkpoint
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            for a in self._all:
                try:
                    a.close()
                except Exception:      # a connection of a finished thread: nothing to do
                    pass
            self._all.clear()


def shares_file(db: Any, path: Path) -> bool:
    """Whether ``db`` (a ``support.db.Database``) is SQLite in the file at ``path``."""
    if getattr(db, "backend", None) != "sqlite":
        return False
    try:
        return Path(db.dsn.target).resolve() == Path(path).resolve()
    except OSError:
        return False
