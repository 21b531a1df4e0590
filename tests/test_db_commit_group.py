"""Commit groups (``Database.grouped``): the write transactions an event loop runs in one turn, one commit.

What must hold, because the shop answers a payment from what it wrote: nothing released into a group is
seen by anyone else, or answered, before the group's one commit; a transaction that fails rolls back alone;
anything of the same thread outside the group (another transaction, the archive's disk flush) commits the
group first; a group that fails to commit ends every transaction in it as rolled back, tells its waiters,
and has the process forget what it remembered of them.
"""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from semper.client.commerce.archive import SharedArchive
from semper.client.servers.shop_http import _after_commit
from semper.client.support.db import Database, DatabaseError
from semper.client.support.http_service import ApiError

pytestmark = pytest.mark.timeout(60)


class Later:
    """A stand-in for the event loop's call_soon: callbacks kept until :meth:`run`."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []

    def __call__(self, fn: Callable[[], None]) -> None:
        self.calls.append(fn)

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for fn in calls:
            fn()


def _db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with db.transaction() as tx:
        tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
        tx.execute("CREATE TABLE parent (k TEXT PRIMARY KEY)")
        tx.execute("CREATE TABLE child (k TEXT REFERENCES parent(k) DEFERRABLE INITIALLY DEFERRED)")
    return db


def _committed(path: Path, sql: str = "SELECT k FROM t ORDER BY k") -> list[Any]:
    """What another process would read now."""
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute(sql)]
    finally:
        conn.close()


def _put(db: Database, k: str) -> None:
    db.run(lambda tx: tx.execute("INSERT INTO t VALUES (?, 1)", (k,)))


def test_transactions_of_a_turn_commit_once_and_nobody_sees_them_before(tmp_path: Path) -> None:
    db, later = _db(tmp_path), Later()
    commits = db.counts["commits"]
    ended: list[tuple[str, bool]] = []
    with db.grouped(later):
        for k in ("a", "b", "c"):
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (?, 1)", (k,))
                tx.on_end(lambda ok, k=k: ended.append((k, ok)))
                tx.on_end(lambda ok, k=k: ended.append((k + " released", ok)), at_release=True)
        # the group's own reads see its work (read_one and a read transaction alike)
        assert db.read_one("SELECT COUNT(*) FROM t") == (3,)
        with db.transaction(write=False) as tx:
            assert tx.one("SELECT COUNT(*) FROM t") == (3,)
    assert ended == [("a released", True), ("b released", True), ("c released", True)]
    assert db.group_open() and _committed(tmp_path / "x.sqlite3") == []
    heard: list[Any] = []
    assert db.when_committed(heard.append)
    assert len(later.calls) == 1                 # one commit scheduled for the group
    later.run()
    assert _committed(tmp_path / "x.sqlite3") == ["a", "b", "c"]
    assert db.counts["commits"] - commits == 1 and db.counts["write"] >= 3
    assert ended[3:] == [("a", True), ("b", True), ("c", True)] and heard == [None]
    assert not db.group_open() and not db.when_committed(heard.append)


def test_a_failing_transaction_rolls_back_alone(tmp_path: Path) -> None:
    db, later = _db(tmp_path), Later()
    ended: list[bool] = []
    with db.grouped(later):
        _put(db, "a")
        with pytest.raises(RuntimeError):
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES ('b', 1)")
                tx.on_end(ended.append)
                raise RuntimeError("the step failed")
        with pytest.raises(DatabaseError):       # a failed statement whose error was caught: not released
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES ('c', 1)")
                try:
                    tx.execute("INSERT INTO t VALUES ('a', 2)")
                except DatabaseError:
                    pass
        _put(db, "d")
    assert ended == [False]                      # at once, not at the group's commit
    later.run()
    assert _committed(tmp_path / "x.sqlite3") == ["a", "d"]


def test_anything_outside_the_group_on_its_thread_commits_the_group_first(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    db, later = _db(tmp_path), Later()
    with db.grouped(later):
        _put(db, "a")
    assert _committed(path) == []
    with db.transaction() as tx:                 # a transaction outside grouped(): the group is committed first
        assert _committed(path) == ["a"]
        tx.execute("INSERT INTO t VALUES ('b', 1)")
    assert _committed(path) == ["a", "b"] and not db.group_open()
    later.run()                                  # the scheduled commit finds nothing left to do
    assert _committed(path) == ["a", "b"]
    # the archive on the same file: its flush to disk commits the group (the log it flushes holds it then)
    archive = SharedArchive(path, joined=db)
    with db.grouped(later):
        _put(db, "c")
        archive.append("deal-1", "note", b"evidence")        # written in the group, not on its own connection
    assert db.group_open() and _committed(path, "SELECT COUNT(*) FROM archive_entry") == [0]
    archive.sync()
    assert not db.group_open() and _committed(path) == ["a", "b", "c"]
    assert _committed(path, "SELECT COUNT(*) FROM archive_entry") == [1]
    archive.close()


def test_a_group_that_fails_to_commit_is_lost_whole_and_says_so(tmp_path: Path) -> None:
    db, later = _db(tmp_path), Later()
    lost: list[str] = []
    db.on_group_lost(lambda: lost.append("forgotten"))
    ended: list[bool] = []
    with db.grouped(later):
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES ('a', 1)")
            tx.on_end(ended.append)
        with db.transaction() as tx:             # checked only at COMMIT: the group's commit fails
            tx.execute("INSERT INTO child VALUES ('no such parent')")
    heard: list[Any] = []
    db.when_committed(heard.append)
    later.run()
    assert lost == ["forgotten"] and ended == [False]
    assert len(heard) == 1 and isinstance(heard[0], DatabaseError)
    assert _committed(tmp_path / "x.sqlite3") == [] and not db.group_open()
    with db.grouped(later):                      # and the next group works
        _put(db, "b")
    later.run()
    assert _committed(tmp_path / "x.sqlite3") == ["b"]


def test_a_transaction_that_ends_the_whole_group_loses_the_group(tmp_path: Path) -> None:
    """SQLite itself rolls the whole transaction back on some errors (a full disk, an I/O error): what was
    released into the group before is then gone, and must be reported so, not left to look committed."""
    db, later = _db(tmp_path), Later()
    lost: list[bool] = []
    db.on_group_lost(lambda: lost.append(True))
    ended: list[bool] = []
    with db.grouped(later):
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES ('a', 1)")
            tx.on_end(ended.append)
        with pytest.raises(RuntimeError):
            with db.transaction() as tx:
                tx._conn.execute("ROLLBACK")     # as SQLite does after SQLITE_FULL
                raise RuntimeError("disk full")
    assert lost == [True] and ended == [False] and not db.group_open()
    later.run()
    assert _committed(tmp_path / "x.sqlite3") == []


def test_other_threads_wait_for_the_group_and_then_see_it(tmp_path: Path) -> None:
    import threading
    db, later = _db(tmp_path), Later()
    with db.grouped(later):
        _put(db, "a")
    seen: list[Any] = []

    def other() -> None:
        seen.append(db.read_one("SELECT COUNT(*) FROM t"))     # a reader: the last commit
        _put(db, "b")                                          # a writer: waits for the group's lock
        seen.append(db.read_one("SELECT COUNT(*) FROM t"))
    t = threading.Thread(target=other)
    t.start()
    t.join(0.5)
    assert t.is_alive() and seen == [(0,)]
    later.run()
    t.join(10)
    assert seen == [(0,), (2,)]


def test_without_grouped_a_transaction_commits_at_once(tmp_path: Path) -> None:
    db, later = _db(tmp_path), Later()
    _put(db, "a")                                # outside grouped(): committed at once
    assert _committed(tmp_path / "x.sqlite3") == ["a"] and not later.calls


def test_an_answer_waits_for_the_group_and_is_refused_if_it_is_lost(tmp_path: Path) -> None:
    """The shop's handlers answer through ``_after_commit``: the step's rows are committed when the answer
    is made, and a group that failed is answered 503, not as the step's success."""
    from aiohttp import web
    path = tmp_path / "x.sqlite3"
    db = _db(tmp_path)

    def step(sql: str) -> Callable[[Any], Any]:
        async def handler(request: Any) -> web.Response:
            with db.grouped(asyncio.get_running_loop().call_soon):
                db.run(lambda tx: tx.execute(sql))
            return web.json_response({"done": True})
        return handler

    async def main() -> None:
        good = _after_commit(db, step("INSERT INTO t VALUES ('a', 1)"))
        await good(None)
        assert _committed(path) == ["a"]          # committed before the answer was made
        bad = _after_commit(db, step("INSERT INTO child VALUES ('no such parent')"))
        with pytest.raises(ApiError) as e:
            await bad(None)
        assert e.value.status == 503 and e.value.code == "not_kept"
    asyncio.run(main())
