"""One evidence archive file used from many threads (a shop answers in a thread pool).

Why: :class:`client.support.archive.Archive` holds one SQLite connection, which Python allows only
in the thread that opened it. The archive's own design already lets many connections append to one
file (they race on the primary key and retry), so each thread gets its own :class:`Archive` on the
same file; all of them are closed together.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..support.archive import Archive, StatementSigner


class SharedArchive:
    def __init__(self, path: Path, *, sign: StatementSigner | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sign = sign
        self._local = threading.local()
        self._all: list[Archive] = []
        self._lock = threading.Lock()
        self.archive_id = self._mine().archive_id

    def _mine(self) -> Archive:
        a = getattr(self._local, "archive", None)
        if a is None:
            a = Archive.open(self.path, create=True, sign=self.sign)
            self._local.archive = a
            with self._lock:
                self._all.append(a)
        return a

    def __getattr__(self, name: str) -> Any:
        """Every Archive method, on this thread's connection (append, append_statement, entries, export...)."""
        return getattr(self._mine(), name)

    def close(self) -> None:
        with self._lock:
            for a in self._all:
                try:
                    a.close()
                except Exception:      # a connection of a finished thread: nothing to do
                    pass
            self._all.clear()
