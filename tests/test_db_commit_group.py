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
import threading
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


def test_after_the_grouped_block_a_transaction_commits_at_once(tmp_path: Path) -> None:
    """grouped() ends with its block: the thread's next write is not released into a group."""
    db, later = _db(tmp_path), Later()
    with db.grouped(later):
        _put(db, "a")
    later.run()
    _put(db, "b")                                # outside grouped(): committed at once, nothing scheduled
    assert _committed(tmp_path / "x.sqlite3") == ["a", "b"] and not later.calls and not db.group_open()


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


# ---- from the review of 2026-12-07: each failed on the first version of commit groups (dbf68df) --------------
def test_an_archive_writing_on_its_own_connection_commits_the_threads_group_first(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch
                                                                                   ) -> None:
    """The shop's exchange party keeps its evidence in the deals' file on a connection of its own, on the event
    loop: behind a group of the same loop turn its write waited for the lock its own thread held (10 s, then
    refused), and the group could not commit meanwhile."""
    import time

    import semper.client.support.archive as support_archive
    from semper.client.support.archive import Archive
    monkeypatch.setattr(support_archive, "_BUSY_RETRIES", 1)
    path = tmp_path / "x.sqlite3"
    db, later = _db(tmp_path), Later()
    party = Archive.open(path, create=True)
    with db.grouped(later):
        _put(db, "a")
    started = time.monotonic()
    party.append("xid-1", "state", b"{}")
    assert time.monotonic() - started < 1.0
    assert _committed(path) == ["a"] and not db.group_open()
    party.close()


def test_a_step_lock_held_elsewhere_is_waited_for_only_after_the_group_committed(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """A pool thread holds a payment's step lock and waits to save its step; the loop, holding a group, takes
    a step of the same payment (a retransmission): it waited for the lock while the pool thread waited for
    the group's write lock, until the busy timeout, and the pool's step (its proof taken) failed."""
    import time

    import semper.client.support.db as dbmod
    from semper.client.payment.manager import PaymentManager
    from semper.client.payment.module import PartyContext
    from semper.client.payment.sessions import DatabaseSessions
    monkeypatch.setattr(dbmod, "BUSY_TIMEOUT_S", 2.0)
    db, later = _db(tmp_path), Later()
    payments = PaymentManager(PartyContext(), modules={}, sessions=DatabaseSessions(db))
    out: dict[str, Any] = {}
    stepping = threading.Event()

    def pool_step() -> None:
        with payments._stepping("X"):
            stepping.set()
            time.sleep(0.3)                      # the PSAM's APDUs
            try:
                _put(db, "session X")
                out["pool"] = "saved"
            except DatabaseError as e:
                out["pool"] = str(e)
    t = threading.Thread(target=pool_step)
    t.start()
    assert stepping.wait(5)
    started = time.monotonic()
    with db.grouped(later):
        _put(db, "session Y")
        with payments._stepping("X"):
            pass
    out["loop_waited_s"] = time.monotonic() - started
    t.join(10)
    assert out["pool"] == "saved" and out["loop_waited_s"] < 1.0, out


def test_a_refusal_waits_for_the_group_too(tmp_path: Path) -> None:
    """A refused payment records its refusal in the group and raises: the refusal's answer left before it
    was committed."""
    path = tmp_path / "x.sqlite3"
    db = _db(tmp_path)

    async def refused(request: Any) -> Any:
        with db.grouped(asyncio.get_running_loop().call_soon):
            _put(db, "refusal recorded")
        raise ApiError(422, "payment_refused", "the payment was refused")

    async def main() -> list[Any]:
        with pytest.raises(ApiError) as e:
            await _after_commit(db, refused)(None)
        assert e.value.status == 422
        return _committed(path)
    assert asyncio.run(main()) == ["refusal recorded"]


def test_a_group_lost_when_committed_early_is_raised_and_not_answered_as_done(tmp_path: Path) -> None:
    """Something of the step commits the group at once (the archive's flush before a note goes out): when that
    commit fails, the flush must not return as if the entries were on disk, and the answer must not be 200
    (there is no group open any more when the handler returns)."""
    from aiohttp import web

    from semper.client.support.archive import ArchiveError
    path = tmp_path / "x.sqlite3"
    db = _db(tmp_path)
    archive = SharedArchive(path, joined=db)

    async def pay(request: Any) -> web.Response:
        with db.grouped(asyncio.get_running_loop().call_soon):
            db.run(lambda tx: tx.execute("INSERT INTO child VALUES ('no such parent')"))   # another step's work
            _put(db, "deal paid")
            with archive.batch():
                archive.append("deal-1", "note", b"the delivery note")
                with pytest.raises(ArchiveError):
                    archive.sync()
        return web.json_response({"paid": True})

    async def main() -> None:
        with pytest.raises(ApiError) as e:
            await _after_commit(db, pay)(None)
        assert e.value.status == 503
    asyncio.run(main())
    assert _committed(path) == []
    archive.close()


# ---- from the second review of 2026-12-07 ------------------------------------------------------------------
def test_a_read_transaction_in_a_group_cannot_write(tmp_path: Path) -> None:
    db, later = _db(tmp_path), Later()
    with db.grouped(later):
        _put(db, "a")
        with pytest.raises(DatabaseError):
            with db.transaction(write=False) as tx:
                tx.execute("INSERT INTO t VALUES ('written by a read', 1)")
        _put(db, "b")                            # and the group's writes go on after it
    later.run()
    assert _committed(tmp_path / "x.sqlite3") == ["a", "b"]


def test_a_request_to_another_service_commits_the_threads_group_first(tmp_path: Path) -> None:
    """A card step on the loop may ask the acquirer (a late proof the PSAM no longer holds): its group must not
    hold the file's write lock for the request's whole timeout, while the shop's other threads wait for it."""
    from test_chaos import _self_signed_pem

    from semper.client.support.channels import ChannelError, JsonClient
    db, later = _db(tmp_path), Later()
    bank = JsonClient("https://127.0.0.1:1", _self_signed_pem(), timeout=2, name="the bank")
    with db.grouped(later):
        _put(db, "a")
        with pytest.raises(ChannelError):        # nobody listens there: refused at once
            bank.get("/anything")
        assert not db.group_open()
    assert _committed(tmp_path / "x.sqlite3") == ["a"]


def test_the_next_holder_of_a_payments_step_lock_sees_the_step_released_into_a_group(tmp_path: Path) -> None:
    """The loop's step of a payment went into its group and released the payment's step lock before the group
    committed: a pool thread waiting for the lock (the same message again) read the session as last committed
    and asked the device for the step a second time. It waits for the group's end now."""
    import time

    from semper.client.payment.manager import PaymentManager
    from semper.client.payment.model import Acceptance, Status, Terms
    from semper.client.payment.module import PartyContext, Step
    from semper.client.payment.modules.setpay import SetPayModule
    from semper.client.payment.sessions import DatabaseSessions
    from semper.client.payment.store import RecordStore
    asked: list[str] = []
    stepping = threading.Event()

    class Counted(SetPayModule):
        def acceptance(self) -> Acceptance | None:
            return Acceptance(self.name, (978,), 1)

        def payee_flow(self, terms: Terms) -> Any:
            class Flow:
                def step(self, incoming: Any) -> Step:
                    if incoming.get("kind") == "hello":
                        return Step({"kind": "challenge"})
                    asked.append(threading.current_thread().name)       # the device's step
                    if threading.current_thread() is threading.main_thread():
                        stepping.set()
                        time.sleep(0.2)
                    return Step({"kind": "result"}, done=True, status=Status.CAPTURED)
            return Flow()
    db, later = _db(tmp_path), Later()
    payee = PaymentManager(PartyContext(account="seller"), modules={"setpay": Counted}, store=RecordStore(db=db),
                           sessions=DatabaseSessions(db))
    terms = Terms.new(100, 978, "seller", b"order", "seller")
    payee.expect(terms)
    payee.handle({"payment_id": terms.payment_id, "module": "setpay", "body": {"kind": "hello"}})
    proof = {"payment_id": terms.payment_id, "module": "setpay", "body": {"kind": "proof"}}
    out: dict[str, Any] = {}

    def pool() -> None:
        stepping.wait(5)
        out["pool"] = payee.handle(proof)
    t = threading.Thread(target=pool, name="pool")
    t.start()
    with db.grouped(later):
        out["loop"] = payee.handle(proof)
    time.sleep(0.1)                              # the rest of the loop's turn
    later.run()
    t.join(10)
    assert asked == ["MainThread"] and out["pool"] == out["loop"], (asked, out)


def test_a_slow_card_step_commits_its_group_at_once_and_a_quick_one_leaves_it_to_the_turn(tmp_path: Path) -> None:
    """A step slower than the loop's budget (a slow PSAM, the disk) does not leave the file's write lock held by
    its group for the rest of the turn, while the shop's other threads wait for it."""
    import time

    from semper.client.servers.shop_http import LOOP_STEP_BUDGET, LoopSteps, step_on_loop
    path = tmp_path / "x.sqlite3"
    db = _db(tmp_path)

    def step(k: str, seconds: float) -> str:
        _put(db, k)
        time.sleep(seconds)
        return k

    async def main() -> tuple[bool, list[Any], bool, list[Any]]:
        steps = LoopSteps()
        assert step_on_loop(db, steps, step, "quick", 0.0) == "quick"
        quick = db.group_open(), _committed(path)
        await asyncio.sleep(0.01)                # the turn ends: its group commits
        assert step_on_loop(db, steps, step, "slow", LOOP_STEP_BUDGET * 1.5) == "slow"
        return quick[0], quick[1], db.group_open(), _committed(path)
    quick_open, quick_seen, slow_open, slow_seen = asyncio.run(main())
    assert quick_open and quick_seen == []
    assert not slow_open and slow_seen == ["quick", "slow"]


def test_a_groups_undo_pages_stay_in_memory_and_other_connections_spill_to_disk(tmp_path: Path) -> None:
    """A commit group's steps are savepoints; SQLite kept their undo pages in a temporary file (made, written
    and unlinked per group) unless temp_store is MEMORY. Only the connection that holds groups is set so: on
    every other, a migration's index build or a large sort spills to disk instead of growing the process
    (review of 2026-12-08: 106 MB of memory for an index over an 82 MB table)."""
    db, later = _db(tmp_path), Later()
    with db.transaction() as tx:
        assert tx.one("PRAGMA temp_store") == (0,)                 # the default: the build's (files)
    with db.grouped(later):
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES ('a', 1)")
            assert tx.one("PRAGMA temp_store") == (2,)             # MEMORY
    assert db.commit_group() is None

    other: list[Any] = []

    def elsewhere() -> None:
        with db.transaction() as tx:
            other.append(tx.one("PRAGMA temp_store"))
    t = threading.Thread(target=elsewhere)
    t.start()
    t.join(30)
    assert other == [(0,)]
