"""Issue 14, item 3: ``semper serve bank --workers N``: several bank processes on one socket, the state only
in the bank's database.

A worker killed with SIGKILL while it handles a request — an account payment's capture, a cheque's
deposit — loses nothing: the client's retry (the same idempotency key) reaches another worker, or the
one the parent started in the dead one's place, which answers from what the database committed: the
deal ends satisfied, the bank's audit is clean and money is conserved to the cent (the chaos runner's
checks). On SQLite the workers share one file (WAL, one writer at a time); on PostgreSQL one database.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workers import WorkerKiller, children

from semper.chaos.plan import Fault, RunPlan
from semper.chaos.runner import run_one

WORKERS = 2
# the bank's requests in a run: the shop's GET /info once per market, then per deal one POST (a SET
# authorisation or capture, a cheque's deposit); each case kills the worker handling that POST
CASES = [("setpay", 2, 3.0), ("setpay", 2, 15.0), ("setpay", 2, 40.0), ("cheque", 1, 8.0), ("cheque", 1, 30.0)]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def market(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from semper.bench.postgres import missing_reason
    from semper.chaos.market import Market
    if request.param == "postgresql" and missing_reason():
        pytest.skip(missing_reason() or "")
    m = Market.create(tmp_path_factory.mktemp("bank-workers") / "world", patience=2.0, db=request.param)
    bank = m.services["bank"]
    bank.stop()
    bank.argv = [*bank.argv, "--workers", str(WORKERS)]
    m.proxies["bank"].retarget(bank.start())
    yield m
    m.close()


def test_the_bank_runs_as_workers(market: Any) -> None:
    bank = market.services["bank"]
    assert len(children(bank.proc.pid)) == WORKERS


@pytest.mark.timeout(300)
@pytest.mark.parametrize("payment,at,delay", CASES, ids=[f"{p}-{a}-{d:g}ms" for p, a, d in CASES])
def test_a_bank_worker_killed_while_it_handles_a_request_loses_nothing(market: Any, tmp_path: Path, payment: str,
                                                                     at: int, delay: float) -> None:
    bank = market.services["bank"]
    proxy = market.proxies["bank"]
    killer = WorkerKiller(bank)
    before = children(bank.proc.pid)
    proxy.party = killer
    try:
        plan = RunPlan(6, "mail-order", payment, (Fault("crash", "bank", "during", at, delay),))
        report = run_one(market, plan, 0, tmp_path / "bundles")
    finally:
        proxy.party = bank
    assert report.violations == [] and not report.known_limits, report.line()
    assert len(killer.killed) == 1 and killer.killed[0] in before, report.line()
    assert any(i.startswith(f"crash bank at request {at} (POST /") for i in report.injected), report.line()
    # the client's retry reached another worker, which answered from the database: the first deal went through
    assert report.results == ["satisfied"] and [d.outcome for d in report.deals] == ["satisfied"], report.line()
    assert bank.alive()                                 # the parent never went down: only one worker did
    deadline = time.monotonic() + 30
    now = children(bank.proc.pid)
    while time.monotonic() < deadline and not (len(now) == WORKERS and killer.killed[0] not in now):
        time.sleep(0.2)                                 # the parent starts a worker in the dead one's place
        now = children(bank.proc.pid)
    assert len(now) == WORKERS and killer.killed[0] not in now
