"""PostgreSQL's statement path of the storage layer (client/support/db.py): statements run through libpq
directly, prepared on their second run, BEGIN/COMMIT/ROLLBACK by ``PQexec``. What the services rely on
from it: values and row counts as psycopg's cursor gave them, a plan gone stale after a schema change
recovers, a constraint failure ends the transaction and nothing else, and a connection that broke
(mid-transaction or while idle in the pool, as after a server restart) is never used again."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres import PostgresCluster

from semper.client.support.db import PREPARED_MAX, Database, DatabaseError, IntegrityError

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(postgres_cluster: PostgresCluster) -> Iterator[Database]:
    d = Database(postgres_cluster.new_database("stm"))
    with d.transaction() as tx:
        tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT, note TEXT)")
    yield d
    d.close()


def _backend_pid(db: Database) -> int:
    row = db.read_one("SELECT pg_backend_pid()")
    assert row is not None
    return int(row[0])


def _terminate(cluster: PostgresCluster, pid: int) -> None:
    import psycopg
    with psycopg.connect(cluster.url(), autocommit=True, connect_timeout=10) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_values_and_row_counts_survive_preparing(db: Database) -> None:
    """The same statement run unprepared, then prepared, with ints of every size psycopg types differently
    (int2 .. numeric) and NULLs: the same values back, the same row counts, tuples."""
    values = [1, 40000, 2**40, -(2**62), 10**30, None]
    for i, n in enumerate(values * 3):
        def put(tx, i=i, n=n):
            return tx.execute("INSERT INTO t (k, n, note) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET n = "
                              "excluded.n", (f"k{i % len(values)}", n if n is None or abs(n) < 2**63 else None,
                                              "50% 'x?'")).rowcount
        assert db.run(put) == 1
        got = db.read_one("SELECT n, note FROM t WHERE k = ?", (f"k{i % len(values)}",))
        assert got == ((n if n is None or abs(n) < 2**63 else None), "50% 'x?'")
    with db.transaction() as tx:
        assert tx.execute("UPDATE t SET note = ? WHERE n IS NOT NULL", ("u",)).rowcount == 4
        assert tx.execute("UPDATE t SET note = ? WHERE k = ?", ("u", "nobody")).rowcount == 0
        cur = tx.execute("SELECT k FROM t ORDER BY k")
        assert cur.rowcount == 6
        assert cur.fetchone() == ("k0",)
        assert [r[0] for r in cur.fetchall()] == ["k1", "k2", "k3", "k4", "k5"]
        assert cur.fetchone() is None
        assert tx.one("SELECT SUM(n) FROM t WHERE n > ?", (0,)) == (1 + 40000 + 2**40,)
    assert db.read_one("SELECT k FROM t WHERE k = ?", ("nobody",)) is None


def test_a_stale_prepared_plan_fails_once_then_is_prepared_again(db: Database) -> None:
    """A table altered under a prepared ``SELECT *`` ("cached plan must not change result type"): that one
    run fails as psycopg's prepared statement would; the next one prepares afresh and sees the new column."""
    db.run(lambda tx: tx.execute("INSERT INTO t (k, n) VALUES (?, ?)", ("a", 1)))
    for _ in range(3):                                       # second run prepares it
        assert db.read_one("SELECT * FROM t WHERE k = ?", ("a",)) == ("a", 1, None)
    with db.transaction(exclusive=True) as tx:
        tx.execute("ALTER TABLE t ADD COLUMN extra TEXT")
    # the pool may hand out the connection that prepared it, or another one: at most one failure per connection
    failures = 0
    for _ in range(2 * db.pool_size + 2):
        try:
            assert db.read_one("SELECT * FROM t WHERE k = ?", ("a",)) == ("a", 1, None, None)
        except DatabaseError as e:
            assert "cached plan" in str(e)
            failures += 1
    assert failures <= 1
    assert db.read_one("SELECT * FROM t WHERE k = ?", ("a",)) == ("a", 1, None, None)


def test_a_constraint_failure_on_a_prepared_insert_ends_only_its_transaction(db: Database) -> None:
    insert = "INSERT INTO t (k, n) VALUES (?, ?)"
    for i in range(3):
        db.run(lambda tx, i=i: tx.execute(insert, (f"x{i}", i)))
    with pytest.raises(IntegrityError):
        db.run(lambda tx: (tx.execute(insert, ("y", 7)), tx.execute(insert, ("x0", 9))))
    assert db.read_one("SELECT n FROM t WHERE k = ?", ("y",)) is None     # rolled back as a whole
    db.run(lambda tx: tx.execute(insert, ("z", 8)))
    assert db.read_one("SELECT n FROM t WHERE k = ?", ("z",)) == (8,)


def test_a_statement_prepared_in_a_rolled_back_transaction_still_runs(db: Database) -> None:
    """A statement is prepared wherever its second run happens, here in a transaction that is then rolled
    back: the prepared statement outlives it (libpq's are per session, not per transaction), so later runs
    on the same connection, which use it by name, still work."""
    count = "SELECT count(*) FROM t WHERE n >= ?"

    def twice_then_refuse(tx):
        assert tx.one(count, (0,)) == (0,)
        assert tx.one(count, (0,)) == (0,)          # prepared here
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        db.run(twice_then_refuse)
    db.run(lambda tx: tx.execute("INSERT INTO t (k, n) VALUES (?, ?)", ("a", 5)))
    for _ in range(3):
        assert db.read_one(count, (0,)) == (1,)


def test_many_distinct_statements_stay_within_the_prepared_bound(db: Database) -> None:
    """Statements that differ in their text (a service building SQL) are prepared up to the bound, then run
    unprepared: every one still answers."""
    for i in range(PREPARED_MAX + 20):
        for _ in range(2):
            assert db.read_one(f"SELECT {i} + ?", (1,)) == (i + 1,)
    with db.transaction(write=False) as tx:              # this thread's connection: one, or few
        prepared = tx.one("SELECT count(*) FROM pg_prepared_statements")
    assert prepared is not None and 1 <= prepared[0] <= PREPARED_MAX


def test_a_connection_broken_mid_transaction_is_not_reused(db: Database, postgres_cluster: PostgresCluster) -> None:
    """The server ends the connection between two statements of a transaction: the transaction fails (its
    write is not committed), and the next one runs on a new connection."""
    db.run(lambda tx: tx.execute("INSERT INTO t (k, n) VALUES (?, ?)", ("a", 1)))
    victim: list[int] = []

    def write_then_lose_the_connection(tx):
        tx.execute("UPDATE t SET n = ? WHERE k = ?", (2, "a"))
        pid = tx.one("SELECT pg_backend_pid()")[0]
        victim.append(pid)
        _terminate(postgres_cluster, pid)
        tx.execute("UPDATE t SET n = ? WHERE k = ?", (3, "a"))

    with pytest.raises(DatabaseError):
        db.run(write_then_lose_the_connection)
    for _ in range(db.pool_size + 2):                       # whichever pooled connection comes next
        with db.transaction() as tx:
            assert tx.one("SELECT pg_backend_pid()")[0] != victim[0]
    assert db.read_one("SELECT n FROM t WHERE k = ?", ("a",)) == (1,)


def test_a_connection_broken_while_idle_fails_one_call_then_is_replaced(db: Database,
                                                                        postgres_cluster: PostgresCluster) -> None:
    """As after a server restart: the pooled connection died while idle. Its next use fails (at BEGIN, or
    read_one's statement), the pool drops it, and the call after that works."""
    pid = _backend_pid(db)
    _terminate(postgres_cluster, pid)
    outcomes = []
    for _ in range(3):
        try:
            db.run(lambda tx: tx.execute("INSERT INTO t (k, n) VALUES (?, ?) ON CONFLICT DO NOTHING", ("b", 1)))
            outcomes.append("ok")
        except DatabaseError:
            outcomes.append("failed")
    assert outcomes[1:] == ["ok", "ok"]
    assert _backend_pid(db) != pid
    pid = _backend_pid(db)
    _terminate(postgres_cluster, pid)
    failures = 0                                            # the pool may hand out another connection first
    for _ in range(db.pool_size + 2):
        try:
            assert db.read_one("SELECT n FROM t WHERE k = ?", ("b",)) == (1,)
        except DatabaseError:
            failures += 1
    assert failures <= 1


def test_no_free_connection_within_the_wait_is_busy(postgres_cluster: PostgresCluster,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pooled connection taken for longer than the pool's wait: the next caller is told busy
    (BusyError, the services' 503), not left waiting, and the pool serves again once one comes back."""
    import threading
    import time

    from semper.client.support import db as dbmod
    monkeypatch.setattr(dbmod, "BUSY_TIMEOUT_S", 0.5)
    d = Database(postgres_cluster.new_database("busy"), pool_size=1)
    try:
        outcome: list[BaseException | None] = []
        with d.transaction(write=False) as tx:
            assert tx.one("SELECT 1") == (1,)

            def other() -> None:
                try:
                    d.read_one("SELECT 1")
                    outcome.append(None)
                except BaseException as e:
                    outcome.append(e)

            t0 = time.monotonic()
            worker = threading.Thread(target=other)
            worker.start()
            worker.join(timeout=10)
            assert not worker.is_alive()
            assert time.monotonic() - t0 < 5
        assert isinstance(outcome[0], dbmod.BusyError) and "became free" in str(outcome[0])
        assert d.read_one("SELECT 2") == (2,)
    finally:
        d.close()


def test_prepared_statements_survive_deallocate_all(db: Database) -> None:
    """``DEALLOCATE ALL`` (a pooler's reset; psycopg's own rollback sent it once psycopg had prepared
    something on the connection) drops our prepared names: one statement may fail, then each is prepared
    afresh. Before (review of the fifth round), every run of those statements failed until the pool
    retired the connection, an hour later."""
    with db.transaction() as tx:
        tx.execute("INSERT INTO t (k, n) VALUES (?, ?)", ("a", 1))
    for _ in range(3):
        assert db.read_one("SELECT n FROM t WHERE k = ?", ("a",)) == (1,)      # prepared by now
    db.run(lambda tx: tx.execute("DEALLOCATE ALL"))
    errors = []
    for _ in range(5):
        try:
            assert db.read_one("SELECT n FROM t WHERE k = ?", ("a",)) == (1,)
        except DatabaseError as e:
            errors.append(str(e))
    assert len(errors) <= 1, errors


def test_the_pool_never_lets_psycopg_prepare_its_own(postgres_cluster: PostgresCluster) -> None:
    """psycopg's own preparing is off on the pool's connections, so its rollback never sends DEALLOCATE
    ALL under our prepared statements (an exclusive transaction refused its lock is returned in a failed
    transaction, and the pool rolls it back)."""
    one = Database(postgres_cluster.new_database("stm1"), pool_size=1)      # every call on one connection
    try:
        for _ in range(8):
            with one.transaction(exclusive=True) as tx:
                tx.execute("SELECT 1")
        rows = one.read_one("SELECT COUNT(*) FROM pg_prepared_statements WHERE name LIKE '_pg3_%'")
        assert rows == (0,)
    finally:
        one.close()


def test_a_single_read_runs_one_statement_only(db: Database) -> None:
    """``read_one`` runs one statement: a second one after a semicolon is refused, not run (psycopg's
    simple protocol ran both, in autocommit)."""
    with db.transaction() as tx:
        tx.execute("INSERT INTO t (k, n) VALUES (?, ?)", ("a", 1))
    with pytest.raises(DatabaseError):
        db.read_one("SELECT 1; DELETE FROM t")
    assert db.read_one("SELECT COUNT(*) FROM t") == (1,)
