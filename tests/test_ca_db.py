"""The storage layer the services share: DSNs, explicit transactions, atomic conditional updates."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from semper.client.support.db import Database, DatabaseError, Dsn, IntegrityError
from semper.client.support.migrations import Schema

SCHEMA = Schema.baseline("coins", ["CREATE TABLE IF NOT EXISTS coins (id VARCHAR(32) PRIMARY KEY, spent_by VARCHAR(32))"])


def test_dsn_parsing() -> None:
    assert Dsn.parse("sqlite:////tmp/x.db") == Dsn("sqlite", "/tmp/x.db")
    assert Dsn.parse("sqlite:///tmp/x.db") == Dsn("sqlite", "/tmp/x.db")
    assert Dsn.parse("/tmp/y.db") == Dsn("sqlite", "/tmp/y.db")
    assert Dsn.parse("postgresql://u@h/db").backend == "postgresql"
    for bad in ("sqlite://x.db", "mysql://h/db"):
        with pytest.raises(DatabaseError, match="DSN"):
            Dsn.parse(bad)


def test_rollback_on_error_and_commit_on_success(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db")
    db.migrate(SCHEMA)
    db.migrate(SCHEMA)                                           # idempotent
    with db.transaction() as tx:
        tx.execute("INSERT INTO coins (id) VALUES (?)", ("a",))
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute("INSERT INTO coins (id) VALUES (?)", ("b",))
        raise RuntimeError("half-way")
    with pytest.raises(IntegrityError), db.transaction() as tx:
        tx.execute("INSERT INTO coins (id) VALUES (?)", ("a",))
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT id FROM coins ORDER BY id") == [("a",)]
    db.close()
    with Database(f"sqlite:///{tmp_path / 't.db'}").transaction(write=False) as tx:   # survives a reopen
        assert tx.one("SELECT COUNT(*) FROM coins") == (1,)


def test_a_conditional_update_has_exactly_one_winner_across_threads(tmp_path: Path) -> None:
    db = Database(tmp_path / "race.db")
    db.migrate(SCHEMA)
    with db.transaction() as tx:
        tx.execute("INSERT INTO coins (id) VALUES (?)", ("coin",))
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def spend(who: str) -> None:
        barrier.wait(10)
        with db.transaction() as tx:
            if tx.execute("UPDATE coins SET spent_by = ? WHERE id = ? AND spent_by IS NULL",
                          (who, "coin")).rowcount == 1:
                wins.append(who)

    threads = [threading.Thread(target=spend, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 1
    with db.transaction(write=False) as tx:
        assert tx.one("SELECT spent_by FROM coins") == (wins[0],)
    db.close()


def test_postgresql_placeholders_only_outside_literals_and_comments():
    """A '?' in a string literal or a comment is text; '%' must reach psycopg doubled (issue 13)."""
    from semper.client.support.db import pyformat
    sql = "SELECT a FROM t WHERE b = ? AND c = 'why?' AND d LIKE '50%' AND \"q?\" = ? -- who?\n AND e = ? /* ? */"
    assert pyformat(sql) == ("SELECT a FROM t WHERE b = %s AND c = 'why?' AND d LIKE '50%%' AND \"q?\" = %s "
                             "-- who?\n AND e = %s /* ? */")
    assert pyformat("SELECT 'it''s ?' , ?") == "SELECT 'it''s ?' , %s"
