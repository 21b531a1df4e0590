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

from ..support.archive import Archive, Entry, StatementSigner, entry_row, statement_kind


class SharedArchive:
    def __init__(self, path: Path, *, sign: StatementSigner | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wal = str(self.path.with_name(self.path.name + "-wal"))      # SQLite's log, flushed by sync()
        self.sign = sign
        self._local = threading.local()
        self._all: list[Archive] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._syncs_started = self._syncs_done = 0
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
        with self._write_lock:
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
            self._local.pending = []
            with self._write_lock:
                self._mine().append_rows(pending)           # made by entry_row() in append()

    def __getattr__(self, name: str) -> Any:
        """Every Archive method, on this thread's connection (entries, export...), after this thread's batch."""
        self._flush()
        return getattr(self._mine(), name)

    def sync(self) -> None:
        """Make every entry appended so far durable (one flush of SQLite's write-ahead log).

        Group commit: threads that ask while another flush runs wait for it and then share one more
        flush, started after all of them asked; a flush that *started* after a caller asked covers
        everything that caller wrote, so the caller needs no flush of its own (docs/performance.md)."""
        self._flush()
        asked = self._syncs_started                 # flushes numbered above this start after our writes
        with self._sync_lock:
            if self._syncs_done > asked:
                return                              # one of them has completed: our entries are on disk
            self._syncs_started += 1
            number = self._syncs_started
            self._fsync_log()
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
