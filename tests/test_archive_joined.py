"""The seller's evidence archive in the deals' own SQLite file: entries commit with the deal (issue 14, item 4).

A shop's folder keeps its deals in its archive's file (``evidence.sqlite3``, since 2026-12-07), and the
entries a request has batched are written in the deal's write transaction: one commit and one flush of
the log for both, where the archive had a transaction and a flush of its own beside the deal's. What must
hold: an entry is never lost (a transaction that rolls back gives its entries back, and they are written
alone), the chain stays one chain, a sync is never skipped (a transaction that wrote nothing flushes
nothing, so the archive then flushes itself), and nothing changes where the deals are elsewhere.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semper.client.commerce.archive import SharedArchive, shares_file
from semper.client.servers.shop_home import ShopHome
from semper.client.support.archive import Archive
from semper.client.support.db import Database

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def joined(tmp_path: Path) -> Iterator[tuple[Database, SharedArchive]]:
    path = tmp_path / "evidence.sqlite3"
    db = Database(f"sqlite:///{path}")
    db.run(lambda tx: tx.execute("CREATE TABLE IF NOT EXISTS deal (id TEXT PRIMARY KEY)"))
    archive = SharedArchive(path, joined=db)
    yield db, archive
    archive.close()
    db.close()


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every flush of an archive's log to disk."""
    seen: list[str] = []
    real = SharedArchive._fsync_log

    def spy(self: SharedArchive) -> None:
        seen.append(self._wal)
        real(self)
    monkeypatch.setattr(SharedArchive, "_fsync_log", spy)
    return seen


def _stored(path: Path) -> list[tuple[str, str]]:
    with Archive.open(path) as a:
        assert a.verify().ok
        return [(e.deal_id, e.kind) for e in a.entries()]


def _deal_write(db: Database, archive: SharedArchive, deal: str, fail: bool = False) -> None:
    def run(tx: Any) -> None:
        tx.execute("INSERT INTO deal (id) VALUES (?)", (deal,))
        archive.write_pending_in(tx)
        if fail:
            raise RuntimeError("refused after the write")
    db.run(run)


def test_the_batch_commits_with_the_deal_in_one_transaction_and_one_flush(joined: Any, flushes: list[str],
                                                                          tmp_path: Path) -> None:
    db, archive = joined
    assert archive.joined is db
    before = dict(db.counts)
    with archive.batch():
        archive.append("d1", "offer", b"o")
        archive.append("d1", "order", b"x")
        _deal_write(db, archive, "d1")
        assert _stored(tmp_path / "evidence.sqlite3") == [("d1", "offer"), ("d1", "order")]   # committed with it
        archive.append("d1", "note", b"n")
        archive.sync()                      # outside a deal's transaction: written alone and flushed, as before
    assert db.counts["write"] - before["write"] == 1
    assert archive.counts == {"alone": 1, "in_deal": 1, "flushes": 1} and len(flushes) == 1
    assert _stored(tmp_path / "evidence.sqlite3") == [("d1", "offer"), ("d1", "order"), ("d1", "note")]


def test_entries_of_a_transaction_that_rolls_back_are_written_alone(joined: Any, tmp_path: Path) -> None:
    """What was archived stays archived: the deal's write failed after the entries went into its transaction."""
    db, archive = joined
    with archive.batch():
        archive.append("d2", "offer", b"o")
        with pytest.raises(RuntimeError):
            _deal_write(db, archive, "d2", fail=True)
        assert db.read_one("SELECT COUNT(*) FROM deal") == (0,)
        assert _stored(tmp_path / "evidence.sqlite3") == []
        archive.append("d2", "decision", b"refused")
    assert _stored(tmp_path / "evidence.sqlite3") == [("d2", "offer"), ("d2", "decision")]
    assert archive.counts["in_deal"] == 1 and archive.counts["alone"] == 1


def test_a_sync_inside_the_deals_transaction_is_its_commit(joined: Any, flushes: list[str], tmp_path: Path) -> None:
    db, archive = joined

    def run(tx: Any) -> None:
        tx.execute("INSERT INTO deal (id) VALUES ('d3')")
        archive.append("d3", "note", b"n")
        archive.sync()                      # written in the transaction; its commit flushes the log
    with archive.batch():
        db.run(run)
    assert flushes == [] and archive.counts == {"alone": 0, "in_deal": 1, "flushes": 0}
    assert _stored(tmp_path / "evidence.sqlite3") == [("d3", "note")]


def test_a_sync_in_a_transaction_that_writes_nothing_flushes_the_log_itself(joined: Any, flushes: list[str],
                                                                            tmp_path: Path) -> None:
    """An entry written alone before (no flush then: the archive's own commits do not flush), then a sync
    inside a deals' transaction with nothing of its own to write: that commit would flush nothing."""
    db, archive = joined
    archive.append("d4", "decision", b"refused")                    # alone, not flushed yet
    db.run(lambda tx: archive.sync())
    assert len(flushes) == 1 and archive.counts["flushes"] == 1
    assert _stored(tmp_path / "evidence.sqlite3") == [("d4", "decision")]


def test_an_append_outside_a_batch_inside_the_deals_transaction_neither_waits_nor_is_lost(joined: Any,
                                                                                          tmp_path: Path) -> None:
    """The file's write lock is the transaction's: an append on the archive's own connection would wait for it
    until the busy timeout. It is written in the transaction, and alone if that rolls back."""
    db, archive = joined

    def run(tx: Any) -> None:
        tx.execute("INSERT INTO deal (id) VALUES ('d5')")
        archive.append("d5", "decision", b"kept")
        raise RuntimeError("rolled back")
    with pytest.raises(RuntimeError):
        db.run(run)
    db.run(lambda tx: archive.append("d6", "decision", b"committed"))
    assert _stored(tmp_path / "evidence.sqlite3") == [("d5", "decision"), ("d6", "decision")]


def test_a_sync_owed_to_the_next_write_is_paid_by_its_commit_or_by_the_shop(joined: Any, flushes: list[str],
                                                                            tmp_path: Path) -> None:
    """``Shop._pay``: the note is signed and its deal closed (a sync) before the payment's transaction; the
    sync is owed to that transaction, or paid by ``settle_owed`` when no transaction wrote the entries."""
    db, archive = joined
    with archive.batch():
        with archive.sync_with_next_write():
            archive.append("d7", "note", b"n")
            archive.sync()
        assert _stored(tmp_path / "evidence.sqlite3") == []          # owed, not written
        _deal_write(db, archive, "d7")
        archive.settle_owed()
    assert flushes == [] and _stored(tmp_path / "evidence.sqlite3") == [("d7", "note")]
    with archive.batch():
        with archive.sync_with_next_write():
            archive.append("d8", "note", b"n")
            archive.sync()
        with pytest.raises(RuntimeError):
            _deal_write(db, archive, "d8", fail=True)                 # the write that should have paid it failed
        archive.settle_owed()
        assert len(flushes) == 1 and ("d8", "note") in _stored(tmp_path / "evidence.sqlite3")


def test_nothing_changes_where_the_deals_are_elsewhere(tmp_path: Path, flushes: list[str]) -> None:
    db = Database(f"sqlite:///{tmp_path / 'shop.db'}")
    archive = SharedArchive(tmp_path / "evidence.sqlite3", joined=db)
    try:
        assert archive.joined is None and not shares_file(db, tmp_path / "evidence.sqlite3")
        with archive.batch():
            archive.append("d9", "offer", b"o")
            db.run(lambda tx: archive.write_pending_in(tx))          # not this file: nothing written here
            archive.sync()
        assert archive.counts == {"alone": 1, "in_deal": 0, "flushes": 1}
        with archive.batch():
            with archive.sync_with_next_write():                     # not joined: a sync is a sync
                archive.append("d9", "note", b"n")
                archive.sync()
            assert len(flushes) == 2
    finally:
        archive.close()
        db.close()


def test_a_new_shop_keeps_its_deals_in_its_archives_file_an_old_one_where_they_are(tmp_path: Path) -> None:
    new = ShopHome(tmp_path / "new")
    assert new.database_url() == f"sqlite:///{(tmp_path / 'new' / 'evidence.sqlite3').absolute()}"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "shop.db").write_bytes(b"")
    old = ShopHome(tmp_path / "old")
    assert old.database_url() == f"sqlite:///{(tmp_path / 'old' / 'shop.db').absolute()}"
    assert new.database_url("postgresql://x/y") == "postgresql://x/y"


def test_two_writes_in_a_transaction_that_rolls_back_come_back_in_the_order_made(joined: Any, tmp_path: Path) -> None:
    """Review of 2026-12-07: each write's entries went back to the front of the batch, the later first."""
    db, archive = joined

    def run(tx: Any) -> None:
        tx.execute("INSERT INTO deal (id) VALUES ('r1')")
        archive.write_pending_in(tx)
        archive.append("r1", "payment", b"p")
        archive.append("r1", "note", b"n")
        archive.sync()                                   # a second write of the batch in the same transaction
        raise RuntimeError("rolled back")
    with archive.batch():
        archive.append("r1", "offer", b"o")
        archive.append("r1", "order", b"x")
        with pytest.raises(RuntimeError):
            db.run(run)
    assert _stored(tmp_path / "evidence.sqlite3") == [("r1", "offer"), ("r1", "order"), ("r1", "payment"),
                                                       ("r1", "note")]


def test_entries_whose_insert_fails_are_given_back_and_the_transaction_does_not_commit(
        joined: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 2026-12-07: the batch was emptied before the insert, so a failed insert lost its entries."""
    db, archive = joined
    real = Archive.append_rows_in
    calls: list[int] = []

    def failing(self: Archive, tx: Any, rows: Any) -> Any:
        calls.append(len(rows))
        if len(calls) == 1:
            raise OSError("disk full")
        return real(self, tx, rows)
    monkeypatch.setattr(Archive, "append_rows_in", failing)

    def run(tx: Any) -> None:
        tx.execute("INSERT INTO deal (id) VALUES ('f1')")
        try:
            archive.write_pending_in(tx)
        except OSError:
            pass                                        # a caller that swallows it: the transaction still fails
    with archive.batch():
        archive.append("f1", "offer", b"o")
        with pytest.raises(Exception, match="not written"):
            db.run(run)
    assert db.read_one("SELECT COUNT(*) FROM deal") == (0,)
    assert _stored(tmp_path / "evidence.sqlite3") == [("f1", "offer")]


def test_every_hook_runs_and_a_failing_one_says_the_transaction_committed(joined: Any) -> None:
    db, _archive = joined
    ran: list[str] = []

    def run(tx: Any) -> None:
        tx.execute("INSERT INTO deal (id) VALUES ('h1')")
        tx.on_end(lambda ok: (_ for _ in ()).throw(OSError("hook failed")))
        tx.on_end(lambda ok: ran.append(f"second {ok}"))
    with pytest.raises(Exception, match="committed, but what had to follow it failed: hook failed"):
        db.run(run)
    assert ran == ["second True"] and db.read_one("SELECT COUNT(*) FROM deal") == (1,)


def test_the_archives_own_connection_is_refused_inside_the_deals_transaction_at_once(joined: Any) -> None:
    """Review of 2026-12-07: a read or write through it waited for the transaction's lock (61 s, then failed)."""
    import time

    from semper.client.support.archive import ArchiveError
    db, archive = joined
    started = time.monotonic()

    def run(tx: Any) -> None:
        archive.entries("x")
    with pytest.raises(ArchiveError, match="inside a transaction of the deals"):
        db.run(run)
    assert time.monotonic() - started < 5
    assert archive.entries("x") == []                    # after it, as before


def test_the_deals_writer_flushes_the_log_at_every_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The joined archive's entries are on disk by the deals' commit alone: the writer says FULL, whatever the
    SQLite build's default (this machine's is FULL already, so the build here is made to start at NORMAL)."""
    import sqlite3
    real = sqlite3.connect

    def normal_by_default(*a: Any, **kw: Any) -> sqlite3.Connection:
        conn = real(*a, **kw)
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn
    monkeypatch.setattr(sqlite3, "connect", normal_by_default)
    db = Database(f"sqlite:///{tmp_path / 'evidence.sqlite3'}")
    try:
        db.run(lambda tx: tx.execute("CREATE TABLE deal (id TEXT PRIMARY KEY)"))
        assert db._local.writer.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        db.close()


def test_a_shop_whose_deals_were_elsewhere_is_not_begun_afresh_in_its_archive(tmp_path: Path) -> None:
    """Review of 2026-12-07: a shop that ran on PostgreSQL and was started without --db began empty deals in its
    archive's file, silently."""
    from semper.client.commerce.errors import CommerceError
    folder = tmp_path / "pg-shop"
    folder.mkdir()
    with Archive.open(folder / "evidence.sqlite3", create=True) as a:
        a.append("d1", "offer", b"o")
    with pytest.raises(CommerceError, match="none of its deals: they are in another database"):
        ShopHome(folder).database_url()
    assert ShopHome(folder).database_url("postgresql://x/y") == "postgresql://x/y"
