"""``semper bench throughput`` at CI size: real purchases, counted honestly, money conserved.

No timing is asserted (speed is the command's output, docs/performance.md). What is asserted: the
purchases it counts happened — every completed purchase moved exactly the item's price from a
buyer's card to the seller's PSAM, and the cards, the PSAM and the count agree — no purchase
failed, the figures it reports are consistent with each other, the seller's CPU was read from
/proc, and the profile attributes the seller's CPU to the areas a purchase must touch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from semper.bench.profiling import GC_HELD, stale_stack_top_under_profiler
from semper.bench.throughput import ITEM_PRICE, bench_throughput

pytestmark = pytest.mark.pcsc
REPO = Path(__file__).resolve().parents[1]


def test_throughput_counts_real_purchases_and_conserves_money() -> None:
    r = bench_throughput(buyers=3, seconds=1.5, processes=2, warmup=0.5, profile_seconds=1.0)
    assert r["failed"] == 0, r["failures"]
    assert r["purchases"] > 0 and r["purchases_per_s"] == round(r["purchases"] / r["window_s"], 1)
    money = r["money"]
    assert money["conserved"] is True, money
    assert money["completed_purchases"] >= r["purchases"] + r["buyers"]          # plus warm-up and profiled ones
    assert money["psam_received_cents"] == money["completed_purchases"] * ITEM_PRICE
    lat = r["latency"]
    assert lat["n"] == r["purchases"]
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    cpu = r["cpu_ms_per_purchase"]
    assert cpu["seller (semper serve shop)"] > 0 and cpu["buyers (worker processes)"] > 0
    assert cpu["PSAM (simulated card process)"] > 0
    # the seller's CPU: the shop's process (and its children), pcscd for its PSAM; not the simulated PSAM card
    assert set(r["seller_cpu_parts"]) == {"seller (semper serve shop)", "pcscd"} & set(cpu)
    assert r["seller_cpu_ms_per_purchase"] == pytest.approx(sum(cpu[k] for k in r["seller_cpu_parts"]), abs=0.01)
    assert r["seller_capacity_per_core"] == pytest.approx(1000 / r["seller_cpu_ms_per_purchase"], rel=0.01)
    assert r["seller_capacity_per_s"] == pytest.approx(r["cores"] * r["seller_capacity_per_core"], rel=0.01)
    assert r["shop_workers"] == 1 and r["db"] == "sqlite"
    # where the card steps ran: every purchase has two (the order with the hello, the payment), on the loop
    # while they are quick (shop_http.LoopSteps); the bench says so, since the pool costs the shop more
    steps = r["card_steps_in_window"]
    assert set(steps) == {"on_loop", "in_pool", "sent_to_pool"}, steps
    assert steps["on_loop"] + steps["in_pool"] >= r["purchases"], (steps, r["purchases"])
    # the shop's evidence written in its deals' transactions (one file), none alone, no flush of its own
    arch = r["archive_per_purchase"]
    assert arch["in_deal"] >= 1.9 and arch["alone"] < 0.1 and arch["flushes"] < 0.1, arch
    # the steps of a turn of the shop's event loop share one commit (Database.grouped): with three buyers at
    # once, fewer commits than write transactions
    db = r["db_per_purchase"]
    assert db["write"] >= 1.9 and 0 < db["commits"] < db["write"], db
    parts = [v for k, v in cpu.items() if k != "all processes"]
    assert cpu["all processes"] == pytest.approx(sum(parts), abs=0.01)
    # the CPU the purchases used cannot exceed what the machine has: the rate stays under the ceiling
    assert r["purchases_per_s"] <= r["cpu_ceiling_per_s"] * 1.15
    assert r["met"] is (r["purchases_per_s"] >= r["target_per_s"])
    seller = r["profile"]["seller"]
    assert seller["cpu_s"] > 0
    for area in ("token signing (PKCS#11, SoftHSM2)", "card and PSAM APDUs (PC/SC or in process)",
                 "CMS encoding and parsing", "HTTP and TLS", "evidence archive (SQLite)"):
        assert seller["by_area"][area]["cpu_s"] > 0, area
    assert abs(sum(a["share"] for a in seller["by_area"].values()) - 1.0) < 0.01
    assert r["profile"]["buyers"] and r["profile"]["buyers"][0]["cpu_s"] > 0
    # each side says whether its collector ran: off where the interpreter would crash under the profiler
    # (CPython 3.11.0-3.11.2, Debian 12's python3.11; tests/test_bench_profiling.py), on elsewhere
    expected = GC_HELD if stale_stack_top_under_profiler() else "on"
    assert seller["gc"] == expected and r["profile"]["buyers"][0]["gc"] == expected


@pytest.mark.postgres
def test_throughput_with_shop_workers_on_postgresql_counts_every_seller_process() -> None:
    """``--workers 2 --db postgresql``: the shop as two workers and a PSAM device process, its deals in a
    durable PostgreSQL cluster; the seller's CPU counts the shop's whole process tree and the database
    server, the database's commits per purchase are read, and money is conserved to the cent."""
    from semper.bench.postgres import missing_reason
    if missing_reason():
        pytest.skip(missing_reason() or "")
    r = bench_throughput(buyers=2, seconds=1.5, processes=1, warmup=0.5, profile_seconds=1.0, workers=2,
                         db="postgresql")
    assert r["failed"] == 0 and r["purchases"] > 0, r["failures"]
    assert r["money"]["conserved"] is True, r["money"]
    assert r["shop_workers"] == 2 and r["db"] == "postgresql" and "profile" not in r     # no profile with workers
    cpu = r["cpu_ms_per_purchase"]
    assert cpu["seller (semper serve shop)"] > 0 and cpu["database server (PostgreSQL)"] > 0
    assert "database server (PostgreSQL)" in r["seller_cpu_parts"]
    assert r["seller_cpu_ms_per_purchase"] == pytest.approx(sum(cpu[k] for k in r["seller_cpu_parts"]), abs=0.01)
    assert r["db_commits_per_purchase"] > 1           # a purchase is several committed steps


def test_a_shop_with_two_psams_takes_payments_on_both_and_money_adds_up_across_them() -> None:
    """``--psams 2``: the shop's second PSAM is a card of its own in vpcd's second reader, linked at the bank to
    the seller's account like the first (``World.add_psam``); the shop gives each deal one of them
    (``PsamPool``), so both take payments, and what the cards lost is what the two PSAMs together took."""
    r = bench_throughput(buyers=4, seconds=1.5, processes=2, warmup=0.5, profile_seconds=0.0, psams=2)
    assert r["failed"] == 0 and r["purchases"] > 0, r["failures"]
    money = r["money"]
    assert r["psams"] == 2 and money["conserved"] is True, money
    each = money["psam_received_cents_each"]
    assert len(each) == 2 and all(cents > 0 for cents in each), each
    assert sum(each) == money["psam_received_cents"] == money["cards_spent_cents"]


def test_throughput_refuses_nonsense_sizes() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "semper.client.cli", "bench", "throughput", "--buyers", "0", "--quiet"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "must be positive" in out.stderr
    assert not out.stdout.strip() or "purchases" not in json.loads(out.stdout)


def test_a_buyer_process_that_dies_voids_the_run_at_once_and_says_how() -> None:
    """A buyer process killed by a signal sends nothing: the run waited out its whole timeout (minutes) and then
    said only that the buyers "stopped answering". Now it stops within about a second and names the signal."""
    import multiprocessing as mp
    import time

    from semper.bench.throughput import next_message
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    killed = ctx.Process(target=time.sleep, args=(60,))      # killed by a signal (SIGKILL: no core file)
    killed.start()
    killed.kill()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="killed by SIGKILL"):
        next_message(out, [killed], timeout=60)
    assert time.monotonic() - started < 15
    failed = ctx.Process(target=os._exit, args=(3,))
    failed.start()
    with pytest.raises(RuntimeError, match="exited with status 3"):
        next_message(out, [failed], timeout=60)
    for p in (killed, failed):
        p.join(5)
    alive = ctx.Process(target=time.sleep, args=(30,))
    alive.start()
    try:
        out.put({"ready": True})
        assert next_message(out, [alive], timeout=10) == {"ready": True}
        with pytest.raises(Exception) as waited:              # nothing more comes: the timeout, as before
            next_message(out, [alive], timeout=1.5)
        assert type(waited.value).__name__ == "Empty"
    finally:
        alive.kill()
        alive.join(5)


@pytest.mark.parametrize("bad", [{"warmup": -3.0}, {"profile_seconds": -1.0}, {"warmup": float("nan")},
                                 {"lean": True, "keep_offers": False}, {"db": "mysql"}, {"psams": 3},
                                 {"psams": 0}])
def test_bad_settings_are_refused_before_anything_starts(bad: dict[str, Any]) -> None:
    """A negative warm-up ran silently, its window starting before anybody bought; every refusal here is the
    command's usage error (bench/commands.py turns ValueError into one)."""
    with pytest.raises(ValueError):
        bench_throughput(**{"buyers": 1, "seconds": 1.0, **bad})
