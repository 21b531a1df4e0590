"""The test session's PostgreSQL (``semper.bench.postgres``: a cluster of its own, started on first use,
stopped by pid) and the storage a test's services use (no tests here)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from semper.bench.postgres import PostgresCluster, missing_reason, pg_bin

__all__ = ["PostgresCluster", "Storage", "missing_reason", "pg_bin", "storage_params", "storages"]


# ---- the storage a test's services use ------------------------------------------------------------------
@dataclass
class Storage:
    """Where a test's services keep their data: fresh SQLite files, or fresh databases of the session's
    PostgreSQL cluster. The fixtures that build services take one (``conftest.storage``)."""

    backend: str                          # "sqlite" or "postgresql"
    root: Path                            # a folder for SQLite files
    cluster: PostgresCluster | None = None
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def is_postgres(self) -> bool:
        return self.backend == "postgresql"

    def url(self, name: str = "db", folder: Path | None = None) -> str:
        """The URL of a new, empty database (``folder``: where a SQLite file goes; default a fresh one)."""
        if self.cluster is not None:
            return self.cluster.new_database(name.replace("-", "_")[:20])
        if folder is None:
            folder = self.root / f"{name}-{next(self._names)}"
            folder.mkdir(parents=True)
        return f"sqlite:///{Path(folder).absolute() / name}.db"

    def copy(self, url: str, name: str = "copy", folder: Path | None = None) -> str:
        """A new database holding what ``url``'s holds now (nobody may be connected to it meanwhile on
        PostgreSQL: a database is copied as a template). ``folder``: where a SQLite copy goes."""
        if self.cluster is not None:
            return self.cluster.new_database(name, template=_database_name(url))
        import sqlite3
        target = self.url(name, folder)
        src, dst = sqlite3.connect(_sqlite_path(url)), sqlite3.connect(_sqlite_path(target))
        try:
            src.backup(dst)               # a consistent copy of a database in WAL mode (not a file copy)
        finally:
            src.close()
            dst.close()
        return target


    def drop(self, url: str) -> None:
        """Remove a database made by :meth:`url` or :meth:`copy` (its connections closed first)."""
        if self.cluster is not None:
            self.cluster.drop_database(_database_name(url))
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(_sqlite_path(url) + suffix).unlink(missing_ok=True)


def _database_name(url: str) -> str:
    return url.split("?", 1)[0].rsplit("/", 1)[1]


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite://") if url.startswith("sqlite:///") else url


def storage_params() -> list:
    import pytest
    return [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)]


def storages():
    """Mark a module (``pytestmark = storages()``) or a test: run it on both back ends. The ``storage``
    fixture (conftest.py) is then SQLite in one run and the session's PostgreSQL in the other, and
    every session-scoped service fixture built on it (the bank world, the exchange world) exists once
    per back end."""
    import pytest
    return pytest.mark.parametrize("storage", storage_params(), indirect=True, scope="session")
