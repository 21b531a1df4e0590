"""The storage layer the services share (client/support/db.py, migrations.py), on both back ends:
URLs, explicit transactions, a failed statement ends its transaction, read snapshots cannot write,
conditional updates with one winner, serialization conflicts retried in one place, versioned
migrations (in order, once, all or nothing, adopted from files made before versions were kept)."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from postgres import Storage, storages

from semper.client.support import db as dbmod
from semper.client.support.db import BusyError, Database, DatabaseError, Dsn, IntegrityError
from semper.client.support.migrations import Migration, Schema, current_version, versions

COINS = Schema.baseline("coins", ["CREATE TABLE IF NOT EXISTS coins (id VARCHAR(32) PRIMARY KEY, "
                                  "spent_by VARCHAR(32))"])


@pytest.fixture
def db(storage: Storage, tmp_path: Path):
    d = Database(storage.url("store", tmp_path))
    yield d
    d.close()


def test_url_forms() -> None:
    assert Dsn.parse("sqlite:////tmp/x.db") == Dsn("sqlite", "/tmp/x.db")
    assert Dsn.parse("sqlite:///tmp/x.db") == Dsn("sqlite", "/tmp/x.db")
    assert Dsn.parse("/tmp/y.db") == Dsn("sqlite", "/tmp/y.db")
    assert Dsn.parse("postgresql://u@h/db").backend == "postgresql"
    assert Dsn.parse("postgres:///db?host=/run/pg").backend == "postgresql"
    assert Dsn.parse("postgresql://bank:s3cret@db.example:5433/ledger").display == \
        "postgresql://bank:***@db.example:5433/ledger"
    for bad in ("sqlite://x.db", "mysql://h/db", " "):
        with pytest.raises(DatabaseError, match="URL"):
            Dsn.parse(bad)


def test_postgresql_placeholders_only_outside_literals_and_comments() -> None:
    """A '?' in a string literal or a comment is text and numbers nothing; '%' is plain text to libpq."""
    from semper.client.support.db import dollar_params
    sql = "SELECT a FROM t WHERE b = ? AND c = 'why?' AND d LIKE '50%' AND \"q?\" = ? -- who?\n AND e = ? /* ? */"
    assert dollar_params(sql) == ("SELECT a FROM t WHERE b = $1 AND c = 'why?' AND d LIKE '50%' AND \"q?\" = $2 "
                                  "-- who?\n AND e = $3 /* ? */")
    assert dollar_params("SELECT 'it''s ?' , ?") == "SELECT 'it''s ?' , $1"


@storages()
def test_placeholders_and_percent_signs_reach_the_database_as_meant(db: Database) -> None:
    db.migrate(COINS)
    db.run(lambda tx: tx.execute("INSERT INTO coins (id, spent_by) VALUES (?, '50%?')", ("c?1",)))
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT id, spent_by FROM coins WHERE spent_by LIKE '50%' AND id = ?", ("c?1",)) == \
            [("c?1", "50%?")]


@storages()
def test_rollback_on_error_and_commit_on_success(db: Database, storage: Storage) -> None:
    assert db.backend == storage.backend
    assert db.migrate(COINS) == 1
    assert db.migrate(COINS) == 1                                       # nothing left to do
    with db.transaction() as tx:
        tx.execute("INSERT INTO coins (id) VALUES (?)", ("a",))
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute("INSERT INTO coins (id) VALUES (?)", ("b",))
        raise RuntimeError("half-way")
    with pytest.raises(IntegrityError), db.transaction() as tx:
        tx.execute("INSERT INTO coins (id) VALUES (?)", ("a",))
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT id FROM coins ORDER BY id") == [("a",)]
    url = db.dsn.target if db.backend == "postgresql" else f"sqlite:///{db.dsn.target}"
    db.close()
    with Database(url).transaction(write=False) as tx:                 # survives a reopen
        assert tx.one("SELECT COUNT(*) FROM coins") == (1,)


@storages()
def test_a_failed_statement_ends_the_transaction_on_both_back_ends(db: Database) -> None:
    """PostgreSQL refuses every statement after a failed one; SQLite is made to agree, so code that
    catches a constraint error and carries on fails in the SQLite tests too, not first in production."""
    db.migrate(COINS)
    db.run(lambda tx: tx.execute("INSERT INTO coins (id) VALUES (?)", ("a",)))
    with pytest.raises(DatabaseError, match="failed") as e, db.transaction() as tx:
        with pytest.raises(IntegrityError):
            tx.execute("INSERT INTO coins (id) VALUES (?)", ("a",))
        tx.execute("INSERT INTO coins (id) VALUES (?)", ("b",))
    assert not isinstance(e.value, IntegrityError)
    # what to write instead: the conflict as a row count, the transaction still usable
    with db.transaction() as tx:
        assert tx.execute("INSERT INTO coins (id) VALUES (?) ON CONFLICT (id) DO NOTHING", ("a",)).rowcount == 0
        assert tx.execute("INSERT INTO coins (id) VALUES (?) ON CONFLICT (id) DO NOTHING", ("b",)).rowcount == 1
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT id FROM coins ORDER BY id") == [("a",), ("b",)]


@storages()
def test_a_write_whose_failed_statement_was_caught_commits_nothing_and_says_so(db: Database) -> None:
    """Code that catches a failed statement and returns normally: PostgreSQL answered its COMMIT with
    ROLLBACK, as a success, so ``run`` returned as if committed with nothing written; SQLite committed what
    ran before the failure. Both now roll back and raise (review of the fifth round, 2026-12-07)."""
    db.migrate(COINS)
    db.run(lambda tx: tx.execute("INSERT INTO coins (id) VALUES (?)", ("a",)))

    def swallow(tx: dbmod.Transaction) -> str:
        tx.execute("INSERT INTO coins (id) VALUES (?)", ("b",))
        try:
            tx.execute("INSERT INTO coins (id) VALUES (?)", ("a",))
        except IntegrityError:
            pass
        return "done"
    with pytest.raises(DatabaseError, match="rolled back, nothing of it committed"):
        db.run(swallow)
    assert db.read_one("SELECT COUNT(*) FROM coins") == (1,)       # b was not committed either
    # a read transaction that caught its error (a table not there yet) still ends quietly
    with db.transaction(write=False) as tx:
        with pytest.raises(DatabaseError):
            tx.all("SELECT * FROM no_such_table")


@storages()
def test_read_transactions_see_a_snapshot_and_cannot_write(db: Database) -> None:
    db.migrate(COINS)
    with pytest.raises(DatabaseError), db.transaction(write=False) as tx:
        tx.execute("INSERT INTO coins (id) VALUES (?)", ("x",))
    with db.transaction(write=False) as tx:
        assert tx.one("SELECT COUNT(*) FROM coins") == (0,)
        done = threading.Event()
        threading.Thread(target=lambda: (db.run(lambda t: t.execute("INSERT INTO coins (id) VALUES ('y')")),
                                         done.set())).start()
        assert done.wait(15), "a writer waited for a reader"
        assert tx.one("SELECT COUNT(*) FROM coins") == (0,)            # still the snapshot it began with
    with db.transaction(write=False) as tx:
        assert tx.one("SELECT COUNT(*) FROM coins") == (1,)


@storages()
def test_a_single_read_sees_what_was_committed_holds_no_snapshot_and_is_counted(db: Database) -> None:
    """Database.read_one (a payment step's and a deal's one read): no BEGIN around it, yet no snapshot
    stays open after it, so the next one sees the next commit; a write through it fails as in a read
    transaction."""
    db.migrate(COINS)
    before = dict(db.counts)
    assert db.read_one("SELECT id FROM coins WHERE id = ?", ("x",)) is None
    db.run(lambda t: t.execute("INSERT INTO coins (id, spent_by) VALUES ('x', 'a')"))
    assert db.read_one("SELECT id, spent_by FROM coins WHERE id = ?", ("x",)) == ("x", "a")
    done = threading.Event()
    threading.Thread(target=lambda: (db.run(lambda t: t.execute("UPDATE coins SET spent_by = 'b'")), done.set())
                     ).start()
    assert done.wait(15), "a writer waited for a single read"
    assert db.read_one("SELECT spent_by FROM coins WHERE id = ?", ("x",)) == ("b",)
    assert db.counts["read"] - before["read"] == 3 and db.counts["write"] - before["write"] == 2
    with pytest.raises(DatabaseError):
        db.read_one("INSERT INTO coins (id) VALUES ('y') RETURNING id")
    assert db.read_one("SELECT COUNT(*) FROM coins") == (1,)


@storages()
def test_a_single_read_never_sees_a_transaction_still_open_on_its_thread(db: Database) -> None:
    """SQLite's read_one runs on the thread's writer connection when it is between transactions (its page
    cache survives its own commits): inside a write transaction of the same thread it must still read the
    last commit only, never the transaction's own rows, and after the commit it reads them."""
    db.migrate(COINS)
    db.run(lambda t: t.execute("INSERT INTO coins (id) VALUES ('a')"))         # the thread's writer exists
    with db.transaction() as tx:
        tx.execute("INSERT INTO coins (id) VALUES ('b')")
        assert db.read_one("SELECT COUNT(*) FROM coins") == (1,)
        assert db.read_one("SELECT id FROM coins WHERE id = ?", ("b",)) is None
    assert db.read_one("SELECT COUNT(*) FROM coins") == (2,)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute("INSERT INTO coins (id) VALUES ('c')")
        raise RuntimeError("rolled back")
    assert db.read_one("SELECT COUNT(*) FROM coins") == (2,)
    with pytest.raises(DatabaseError):                 # still a SELECT alone, on whichever connection
        db.read_one("DELETE FROM coins RETURNING id")
    assert db.read_one("SELECT COUNT(*) FROM coins") == (2,)


@storages()
def test_a_single_read_inside_a_read_transaction_reads_its_snapshot(db: Database) -> None:
    """read_one inside a read transaction open on its thread reads that transaction's snapshot, as the
    transaction's own statements do (review of 2026-12-07, low: SQLite's ran on the thread's writer,
    PostgreSQL's on another pooled connection, and both read a commit made after the snapshot). After it,
    and in a write transaction, read_one reads the last commit again."""
    db.migrate(COINS)
    db.run(lambda t: t.execute("INSERT INTO coins (id) VALUES ('a')"))         # the thread's writer exists

    def insert(coin: str) -> None:
        done = threading.Event()
        threading.Thread(target=lambda: (db.run(lambda t: t.execute("INSERT INTO coins (id) VALUES (?)", (coin,))),
                                         done.set())).start()
        assert done.wait(15), "a writer waited for a reader"

    with db.transaction(write=False) as tx:
        assert tx.one("SELECT COUNT(*) FROM coins") == (1,)
        insert("b")
        assert db.read_one("SELECT COUNT(*) FROM coins") == (1,)                # the snapshot, as tx.one
        assert db.read_one("SELECT id FROM coins WHERE id = ?", ("b",)) is None
        assert tx.one("SELECT COUNT(*) FROM coins") == (1,)
        with pytest.raises(DatabaseError):
            db.read_one("DELETE FROM coins RETURNING id")
    assert db.read_one("SELECT COUNT(*) FROM coins") == (2,)                    # the transaction is over
    with db.transaction() as w:
        w.execute("INSERT INTO coins (id) VALUES ('c')")
        assert db.read_one("SELECT COUNT(*) FROM coins") == (2,)                # a write transaction: last commit
    with pytest.raises(RuntimeError), db.transaction(write=False) as tx:
        assert db.read_one("SELECT COUNT(*) FROM coins") == (3,)
        raise RuntimeError("ended by an exception")
    insert("d")
    assert db.read_one("SELECT COUNT(*) FROM coins") == (4,)


@storages()
def test_sums_of_integers_are_integers(db: Database) -> None:
    """PostgreSQL's SUM of BIGINT is NUMERIC; the layer hands back an int, as SQLite does."""
    db.migrate(Schema.baseline("amounts", ["CREATE TABLE IF NOT EXISTS amounts (v BIGINT NOT NULL)"]))
    db.run(lambda tx: [tx.execute("INSERT INTO amounts (v) VALUES (?)", (v,)) for v in (2**40, 5, -3)])
    with db.transaction(write=False) as tx:
        total, count = tx.one("SELECT SUM(v), COUNT(*) FROM amounts") or (None, None)
    assert (total, count) == (2**40 + 2, 3) and type(total) is int and type(count) is int


@storages()
def test_binary_columns_hold_bytes_on_both_back_ends(db: Database) -> None:
    db.migrate(Schema.baseline("blobs", ["CREATE TABLE IF NOT EXISTS blobs (k TEXT PRIMARY KEY, v {blob} NOT NULL)"]))
    data = bytes(range(256)) + b"\x00?%s"
    db.run(lambda tx: tx.execute("INSERT INTO blobs (k, v) VALUES (?, ?)", ("a", data)))
    with db.transaction(write=False) as tx:
        (value,) = tx.one("SELECT v FROM blobs WHERE k = ?", ("a",)) or (None,)
    assert bytes(value) == data and isinstance(value, bytes)


@storages()
def test_a_conditional_update_has_exactly_one_winner_across_threads(db: Database) -> None:
    db.migrate(COINS)
    db.run(lambda tx: tx.execute("INSERT INTO coins (id) VALUES (?)", ("coin",)))
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def spend(who: str) -> None:
        barrier.wait(10)

        def attempt(tx: dbmod.Transaction) -> bool:
            return tx.execute("UPDATE coins SET spent_by = ? WHERE id = ? AND spent_by IS NULL",
                              (who, "coin")).rowcount == 1
        if db.run(attempt):
            wins.append(who)

    threads = [threading.Thread(target=spend, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 1
    with db.transaction(write=False) as tx:
        assert tx.one("SELECT spent_by FROM coins") == (wins[0],)


@storages()
def test_a_read_then_write_race_loses_no_update(db: Database, storage: Storage) -> None:
    """Two transactions read a counter and write it plus one, both reading before either writes. On
    PostgreSQL (SERIALIZABLE) one is refused as a conflict and run again by ``Database.run``; on SQLite
    the second writer waits at BEGIN IMMEDIATE. Either way the counter ends at 2."""
    db.migrate(Schema.baseline("counter", ["CREATE TABLE IF NOT EXISTS counter (n INTEGER NOT NULL)"]))
    db.run(lambda tx: tx.execute("INSERT INTO counter (n) VALUES (0)"))
    both_read = threading.Barrier(2, timeout=20) if storage.is_postgres else None
    first_attempt = threading.local()
    errors: list[BaseException] = []

    def increment(tx: dbmod.Transaction) -> None:
        (n,) = tx.one("SELECT n FROM counter") or (0,)
        if both_read is not None and not getattr(first_attempt, "done", False):
            first_attempt.done = True
            both_read.wait()                          # both have read 0 before either writes
        tx.execute("UPDATE counter SET n = ?", (n + 1,))

    def worker() -> None:
        try:
            db.run(increment)
        except BaseException as e:        # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with db.transaction(write=False) as tx:
        assert tx.one("SELECT n FROM counter") == (2,)
    if storage.is_postgres:
        assert db.retries >= 1


@storages()
def test_a_transaction_that_keeps_conflicting_ends_busy(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbmod, "RETRY_ATTEMPTS", 3)
    monkeypatch.setattr(dbmod, "RETRY_BACKOFF_S", 0.0)
    runs = []

    def always_conflicts(tx: dbmod.Transaction) -> None:
        runs.append(1)
        raise dbmod._Conflict("simulated serialization failure")

    with pytest.raises(BusyError, match="3 attempts"):
        db.run(always_conflicts)
    assert len(runs) == 3


@storages()
def test_a_forked_worker_opens_connections_of_its_own(db: Database) -> None:
    """A service process that forks workers after opening its database (issue 14's workers): the
    child writes through the same object on connections of its own, and the parent's still work."""
    import os
    import time
    db.migrate(COINS)
    db.run(lambda tx: tx.execute("INSERT INTO coins (id) VALUES ('parent-1')"))        # the parent's pool is open
    with db.transaction(write=False) as tx:              # the parent is using its connection while the child runs
        pid = os.fork()
        if pid == 0:                                                                       # the worker
            code = 1
            try:
                db.run(lambda t: t.execute("INSERT INTO coins (id) VALUES ('child')"))
                code = 0
            finally:
                os._exit(code)
        assert tx.one("SELECT COUNT(*) FROM coins") == (1,)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, "the forked worker hung"
            time.sleep(0.05)
        assert tx.one("SELECT COUNT(*) FROM coins") == (1,)                               # still its snapshot
    assert os.waitstatus_to_exitcode(status) == 0
    db.run(lambda tx: tx.execute("INSERT INTO coins (id) VALUES ('parent-2')"))        # the parent's connections live
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT id FROM coins ORDER BY id") == [("child",), ("parent-1",), ("parent-2",)]


# ---- migrations ---------------------------------------------------------------------------------------
def _schema(*extra: Migration) -> Schema:
    return Schema("shelf", (
        Migration(1, "books", ("CREATE TABLE IF NOT EXISTS books (isbn TEXT PRIMARY KEY, title TEXT NOT NULL)",)),
        *extra))


def _add_price(tx: dbmod.Transaction) -> None:
    tx.execute("UPDATE books SET price = LENGTH(title) * 100")


V2 = Migration(2, "prices", ("ALTER TABLE books ADD COLUMN price BIGINT",), apply=_add_price)
V3 = Migration(3, "shelves", ("CREATE TABLE shelves (name TEXT PRIMARY KEY)",
                              "INSERT INTO shelves (name) VALUES ('a')"))


def test_migrations_are_numbered_one_to_n() -> None:
    with pytest.raises(ValueError, match="numbered"):
        Schema("x", (Migration(1, "a"), Migration(3, "c")))


@storages()
def test_versions_apply_in_order_and_once(db: Database) -> None:
    assert db.migrate(_schema()) == 1
    db.run(lambda tx: tx.execute("INSERT INTO books (isbn, title) VALUES (?, ?)", ("1", "Semper")))
    assert db.migrate(_schema(V2)) == 2                                 # only version 2 runs
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT isbn, title, price FROM books") == [("1", "Semper", 600)]
        assert current_version(tx, "shelf") == 2
    assert db.migrate(_schema(V2, V3)) == 3
    assert db.migrate(_schema(V2, V3)) == 3                             # again: nothing (the INSERT ran once)
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT name FROM shelves") == [("a",)]
        assert [r[0] for r in tx.all("SELECT version FROM schema_versions WHERE store = ? ORDER BY version",
                                     ("shelf",))] == [1, 2, 3]
    assert versions(db) == {"shelf": 3}


@storages()
def test_a_failing_migration_leaves_the_version_before(db: Database) -> None:
    db.migrate(_schema())
    broken = Migration(2, "broken", ("CREATE TABLE half (x TEXT)", "ALTER TABLE no_such_table ADD COLUMN y TEXT"))
    with pytest.raises(DatabaseError):
        db.migrate(_schema(broken))
    assert versions(db) == {"shelf": 1}
    with db.transaction(write=False) as tx:                             # DDL rolled back with the rest
        with pytest.raises(DatabaseError):
            tx.one("SELECT COUNT(*) FROM half")


@storages()
def test_a_database_newer_than_the_program_is_refused(db: Database) -> None:
    db.migrate(_schema(V2, V3))
    with pytest.raises(DatabaseError, match="version 3 of the shelf schema.*up to 1"):
        db.migrate(_schema())


@storages()
def test_workers_starting_together_migrate_once(storage: Storage, tmp_path: Path) -> None:
    """Several processes of one service start at once (issue 14's workers): each runs migrate at open."""
    url = storage.url("shared", tmp_path)
    dbs = [Database(url) for _ in range(8)]
    start = threading.Barrier(len(dbs))
    errors: list[BaseException] = []

    def open_store(d: Database) -> None:
        start.wait(10)
        try:
            d.migrate(_schema(V2, V3))
        except BaseException as e:        # reported below
            errors.append(e)

    threads = [threading.Thread(target=open_store, args=(d,)) for d in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with dbs[0].transaction(write=False) as tx:
        assert tx.all("SELECT version FROM schema_versions ORDER BY version") == [(1,), (2,), (3,)]
        assert tx.all("SELECT name FROM shelves") == [("a",)]
    for d in dbs:
        d.close()


@storages()
def test_every_store_can_share_one_database(storage: Storage, tmp_path: Path) -> None:
    """The bank, the CA, the third party and a payment record store in one database: no name clashes."""
    from semper.client.payment.store import SCHEMA as PAYMENTS
    from semper.client.servers.bank_store import SCHEMA as BANK
    from semper.client.servers.ca_store import SCHEMA as CA
    from semper.client.servers.ttp_store import SCHEMA as TTP
    d = Database(storage.url("all", tmp_path))
    for schema in (BANK, CA, TTP, PAYMENTS):
        d.migrate(schema)
    assert versions(d) == {"bank": 1, "ca": 1, "ttp": 1, "payments": 1}
    d.close()


def test_a_sqlite_file_from_before_versions_is_adopted_as_version_1(tmp_path: Path) -> None:
    """A CA database as semper left it before schema versions: its tables made by the old
    ``migrate(statements)``, a registration and a certificate in them. Opened now: version 1 is
    recorded, nothing is lost, and the CA works on it."""
    from semper.client.servers import ca_store
    from semper.client.servers.ca import CertificationAuthority
    path = tmp_path / "ca.db"
    old = sqlite3.connect(path)
    for sql in ca_store._VERSION_1:                               # exactly the statements the old code ran
        old.execute(sql)
    old.execute("INSERT INTO ca_meta (name, value) VALUES ('ca_cert', 'AAAA')")
    old.execute("INSERT INTO registrations (reg_id, common_name, email, role, hosts, mac_key, created_at) "
                "VALUES ('r1', 'Alice Example', 'alice@example.org', 'person', '', '00ff', '2026-01-01T00:00:00Z')")
    old.execute("INSERT INTO certificates (serial, reg_id, common_name, role, key_sha256, not_after, der_b64, "
                "issued_at) VALUES ('1F', NULL, 'shop.example', 'server', 'ab', '2030-01-01T00:00:00Z', 'AAAA', "
                "'2026-01-01T00:00:00Z')")
    old.commit()
    old.close()
    d = Database(path)
    ca = CertificationAuthority(d)                                        # migrates at open
    assert versions(d) == {"ca": 1}
    listing = ca.listing()
    assert [r["reg_id"] for r in listing["registrations"]] == ["r1"]
    assert [c["serial"] for c in listing["certificates"]] == ["1F"]
    assert ca.initialised
    assert ca.revoke("1f", "superseded").revoked_at is not None          # and writes work on it
    d.close()


def test_a_transaction_asks_the_kernel_for_no_process_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every transaction checks that its connections are this process's; os.getpid() is a system call, and
    the shop asked it a dozen times per purchase. The id is kept, renewed in a forked child (the test above)."""
    db = Database(f"sqlite:///{tmp_path / 'pid.db'}")
    try:
        db.migrate(COINS)
        asked: list[int] = []
        real = dbmod.os.getpid

        def counted() -> int:
            asked.append(1)
            return real()
        monkeypatch.setattr(dbmod.os, "getpid", counted)
        for i in range(10):
            db.run(lambda tx, i=i: tx.execute("INSERT INTO coins (id) VALUES (?)", (f"c{i}",)))
            assert db.read_one("SELECT COUNT(*) FROM coins") == (i + 1,)
        assert asked == []
    finally:
        db.close()
