"""docs/deployment.md: one PostgreSQL primary for the writers, a replica for the auditor.

``semper audit`` reads the bank's whole ledger in one read-only snapshot, so it can run on a hot
standby that follows the primary, and never loads the primary the bank's writers use. This test makes
the bank's database on a cluster of its own, streams a standby from it, and runs the real ``semper
audit --db <the standby>``: clean, the same totals as on the primary, and after more cash was paid
in on the primary, the standby's audit sees it too once it has caught up.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def primary() -> Iterator[Any]:
    from semper.bench.postgres import PostgresCluster, missing_reason
    if missing_reason():
        pytest.skip(missing_reason() or "")
    cluster = PostgresCluster.start()
    yield cluster
    cluster.stop()


def _audit(world: Any, url: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "semper.client.cli", "audit", "--bank-dir", str(world.bank_dir),
                           "--db", url, "--json"], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=world.child_env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.mark.timeout(240)
def test_the_auditor_reads_a_replica(primary: Any, tmp_path: Path) -> None:
    from semper.client.demo_world import World
    bank_url = primary.new_database("bank")
    world = World.create(tmp_path / "world", dbs={"bank": bank_url})
    replica = None
    try:
        replica = primary.replica()
        replica.caught_up(primary)
        import psycopg
        with psycopg.connect(replica.url(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        assert row is not None and row[0] is True                    # a read-only standby, not a copy
        on_replica = replica.url(urlsplit(bank_url).path.lstrip("/"))
        first = _audit(world, on_replica)
        assert first["clean"] and first["totals"] == _audit(world, bank_url)["totals"]
        world.bank.cash_in(world.accounts["buyer"], 2_500)           # the bank writes on the primary
        replica.caught_up(primary)
        second = _audit(world, on_replica)
        assert second["clean"]
        assert second["totals"]["978"]["issued"] == first["totals"]["978"]["issued"] + 2_500
    finally:
        world.bank.db.close()
        world.ca.db.close()
        if replica is not None:
            replica.stop()
