"""The seller's phase timer (bench/phases.py) and ``semper bench throughput --phases``.

What must hold for its figures to mean anything: a phase is charged its own CPU and not that of the phases
it calls, each call is counted once, the wrappers come out when the window ends (the shop runs on as it
was), a phase whose function was renamed is reported missing instead of measuring nothing, and in a real
run the phases a purse purchase must go through are there, once or twice per purchase as the protocol says.
"""
from __future__ import annotations

import sys
import time
import types
from collections.abc import Iterator

import pytest

from semper.bench.phases import Phase, PhaseTimer

MOD = "semper_test_phases_fake"


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.fixture
def fake() -> Iterator[types.ModuleType]:
    """A module with a class whose method calls a module function, and a second module that imported that
    function by name (as `from x import f` does)."""
    m = types.ModuleType(MOD)

    def inner() -> str:
        _spin(0.02)
        return "inner"

    class Outer:
        def run(self) -> str:
            _spin(0.03)
            return m.inner() + "+" + inner_by_name()

    async def later() -> None:
        return None

    m.inner = inner                         # type: ignore[attr-defined]
    m.Outer = Outer                         # type: ignore[attr-defined]
    m.later = later                         # type: ignore[attr-defined]
    user = types.ModuleType(MOD + "_user")
    user.inner = inner                      # type: ignore[attr-defined]

    def inner_by_name() -> str:
        return str(user.inner())            # type: ignore[attr-defined]
    sys.modules[MOD], sys.modules[MOD + "_user"] = m, user
    try:
        yield m
    finally:
        del sys.modules[MOD], sys.modules[MOD + "_user"]


PHASES = (Phase(MOD, "Outer.run", "outer"), Phase(MOD, "inner", "inner"))


def test_each_phase_is_charged_its_own_cpu_and_calls_per_purchase(fake: types.ModuleType) -> None:
    timer = PhaseTimer(PHASES, per="outer")
    timer.start()
    assert fake.Outer().run() == "inner+inner"
    assert fake.Outer().run() == "inner+inner"
    out = timer.stop()
    assert out["missing"] == [] and out["purchases"] == 2
    rows = {r["phase"]: r for r in out["phases_us_per_purchase"]}
    # per purchase: outer's own 30 ms, and two calls of inner at 20 ms each (one through the imported name)
    assert rows["outer"]["calls"] == 1 and rows["inner"]["calls"] == 2
    assert 29_000 <= rows["outer"]["us"] < 36_000, rows
    assert 39_000 <= rows["inner"]["us"] < 48_000, rows
    assert out["covered_us_per_purchase"] == pytest.approx(rows["outer"]["us"] + rows["inner"]["us"], abs=1)
    assert out["process_cpu_us_per_purchase"] >= out["covered_us_per_purchase"]


def test_the_wrappers_come_out_when_the_window_ends(fake: types.ModuleType) -> None:
    run, inner, user_inner = fake.Outer.run, fake.inner, sys.modules[MOD + "_user"].inner
    timer = PhaseTimer(PHASES, per="outer")
    timer.start()
    assert fake.Outer.run is not run and fake.inner is not inner
    timer.stop()
    assert fake.Outer.run is run and fake.inner is inner and sys.modules[MOD + "_user"].inner is user_inner
    timer.start()                           # a second window wraps again, counting from zero
    fake.Outer().run()
    again = timer.stop()
    assert again["purchases"] == 1 and fake.Outer.run is run


def test_a_phase_that_is_not_there_or_a_coroutine_is_reported_missing(fake: types.ModuleType) -> None:
    timer = PhaseTimer(PHASES + (Phase(MOD, "Outer.renamed", "gone"), Phase("no.such.module", "f", "nowhere"),
                                 Phase(MOD, "later", "a coroutine")), per="outer")
    timer.start()
    fake.Outer().run()
    out = timer.stop()
    assert out["missing"] == [f"{MOD}:Outer.renamed", "no.such.module:f", f"{MOD}:later"]
    assert {r["phase"] for r in out["phases_us_per_purchase"]} == {"outer", "inner"}


def test_no_purchase_in_the_window_says_so(fake: types.ModuleType) -> None:
    timer = PhaseTimer(PHASES, per="outer")
    timer.start()
    out = timer.stop()
    assert out["purchases"] == 0 and "nothing to divide by" in out["error"]


@pytest.mark.pcsc
def test_throughput_phases_time_a_real_purse_purchase() -> None:
    from semper.bench.throughput import bench_throughput
    r = bench_throughput(buyers=2, seconds=1.0, processes=1, warmup=0.5, profile_seconds=1.5, phases=True)
    assert r["failed"] == 0 and r["money"]["conserved"] is True, r
    assert "profile" not in r                       # the buyers are not profiled in this mode
    seller = r["phases"]["seller"]
    assert seller["missing"] == [] and seller["purchases"] > 0, seller
    calls = {row["phase"]: row["calls"] for row in seller["phases_us_per_purchase"]}
    # what a purse mail-order purchase is made of, per purchase
    assert calls["order (Shop.order)"] == pytest.approx(1, abs=0.3)
    assert calls["payment: PSAM APDUs"] == pytest.approx(2, abs=0.3)          # begin and complete the debit
    assert calls["database: write transactions (SQL, commit)"] == pytest.approx(2, abs=0.3)
    assert calls["statement signed: the token's signature"] >= 1
    assert calls["statement signed: the token's signature"] == calls["statement signed: CMS and self-check"]
    assert seller["process_cpu_us_per_purchase"] >= seller["covered_us_per_purchase"] > 0


def test_phases_need_the_window_and_one_shop_process() -> None:
    from semper.bench.throughput import bench_throughput
    with pytest.raises(ValueError, match="--phases"):
        bench_throughput(buyers=1, seconds=1.0, profile_seconds=0.0, phases=True)
    with pytest.raises(ValueError, match="--phases"):
        bench_throughput(buyers=1, seconds=1.0, workers=2, phases=True)
