"""Where a process spends its CPU: yappi over every thread, summed by area of the system.

Why yappi and not cProfile: a service answers in an event-loop thread and a pool of worker
threads, and cProfile sees only the thread that started it. yappi (CPU clock) sees them all, so the
seller's profile covers TLS, aiohttp, the handlers in the pool and the devices they wait for. The
profile costs time itself (about 2x), so a benchmark reports it from a separate, profiled run and
never mixes its figures with the timed ones.

A process being profiled from outside (``python -m semper.bench.profiled_shop --profile FILE``) starts on SIGUSR1 and
writes its summary to FILE on SIGUSR2, so the window is exactly the benchmark's.

CPython 3.11.0 to 3.11.2 (Debian 12's ``python3.11`` is 3.11.2) crash under any profiler, yappi, cProfile or
``sys.setprofile`` alike: a generator or coroutine resumed while a profile function is set keeps a stale
stack top (CPython gh-101975, fixed in 3.11.3), so a garbage collection that runs before it next yields
or returns visits stack slots it has already popped and freed, and the process dies with a segmentation
fault (docs/performance.md, "The interpreter"). On such an interpreter :class:`CpuProfile` turns the
automatic collector off from the window's start to the process's end and says so in its summary.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from semper.hardware.errors import SemperError

from .phases import PhaseTimer

# (area, substrings of a function's module path or name); the first match wins
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("token signing (PKCS#11, SoftHSM2)", ("/pkcs11/", "/hsm/", "pkcs11.")),
    ("card and PSAM APDUs (PC/SC or in process)", ("/smartcard/", "/hardware/", "/card_applet_sim/", "SCard")),
    ("CMS encoding and parsing", ("/asn1crypto/", "/support/cms.py", "/support/cms_profile.py", "/support/der.py")),
    ("signature and certificate checks", ("/support/trust.py", "/support/tsa.py", "verify", "ClientVerifier")),
    ("evidence archive (SQLite)", ("/support/archive.py", "/commerce/archive.py", "sqlite3", "Connection.execute",
                                   "fsync")),
    ("HTTP and TLS", ("/aiohttp/", "/httpx/", "/httpcore/", "/h11/", "/anyio/", "/ssl.py", "_ssl.", "/http/client.py",
                      "/asyncio/", "/multidict/", "/yarl/",
                      "/services/http.py", "/support/channels.py", "/commerce/shop_client.py", "socket", "select.")),
    ("JSON", ("/json/",)),
    ("TINGUIN rendering (the confirmation text)", ("/tinguin/",)),
    ("commerce, payment and exchange logic", ("/commerce/", "/payment/", "/exchange/", "/transfer/")),
    ("threads and scheduling", ("/threading.py", "/concurrent/", "/queue.py")),
)


def area_of(module: str, name: str) -> str:
    key = f"{module} {name}"
    for area, marks in AREAS:
        if any(m in key for m in marks):
            return area
    return "other"


def summarise(stats: Any, top: int = 25) -> dict[str, Any]:
    """Own CPU time (yappi's tsub) by area and the functions that cost most."""
    by_area: dict[str, float] = {}
    rows = []
    total = 0.0
    for s in stats:
        own = float(s.tsub)
        total += own
        area = area_of(s.module or "", s.full_name or s.name)
        by_area[area] = by_area.get(area, 0.0) + own
        rows.append((own, s.ncall, float(s.ttot), s.full_name, area))
    rows.sort(reverse=True)
    share = {a: {"cpu_s": round(v, 3), "share": round(v / total, 3) if total else 0.0}
             for a, v in sorted(by_area.items(), key=lambda kv: -kv[1])}
    return {"cpu_s": round(total, 3), "by_area": share,
            "top_functions": [{"function": _short(n), "area": a, "calls": c, "own_cpu_s": round(o, 4),
                               "total_cpu_s": round(t, 4)} for o, c, t, n, a in rows[:top]]}


def _short(full_name: str) -> str:
    for cut in ("/site-packages/", "/work/main/", "/lib/python3"):
        if cut in full_name:
            return full_name.split(cut, 1)[1]
    return full_name


def stale_stack_top_under_profiler() -> bool:
    """Whether this interpreter has CPython's gh-101975: a generator resumed under a profile function keeps
    its stack top from the resumption instead of marking it unknown, so the collector walks slots the
    generator has since popped (freed objects: a segmentation fault). Fixed in 3.11.3; Debian 12 ships 3.11.2.

    Probed, not read from the version number, so that a build with the fix backported is not held back: the
    generator sends itself in, stores it in a local (popping it off the stack) and asks the collector what
    it refers to. A running frame with a correct (unknown) stack top shows the collector nothing; a stale
    one shows the popped slot, here still alive (the local holds it), so the probe itself is safe."""
    def body() -> Any:
        me = yield
        yield me in gc.get_referents(me)

    gen = body()
    next(gen)
    previous = sys.getprofile()
    sys.setprofile(lambda *_: None)
    try:
        stale = bool(gen.send(gen))
    finally:
        sys.setprofile(previous)
        gen.close()
    return stale


GC_HELD = ("the automatic garbage collector is off in this process from the profiled window's start to its end: "
           "this interpreter keeps a stale stack top in generators resumed under a profiler (CPython gh-101975, "
           "3.11.0-3.11.2, fixed in 3.11.3), and a collection then crashes the process; the collector's own "
           "CPU is missing from this profile")


class ProfilerMissing(SemperError):
    """yappi, the profiler, is an extra (``semper[bench]``)."""


class CpuProfile:
    """Profile every thread's CPU between :meth:`start` and :meth:`stop`.

    ``hold_gc``: whether the window turns the automatic collector off (default: when this interpreter has
    gh-101975, :func:`stale_stack_top_under_profiler`). It stays off after :meth:`stop`, to the process's end:
    a generator resumed during the window keeps its stale stack top until it next yields or returns, which
    has no bound. The benchmarks' profiled processes end soon after their window."""

    def __init__(self, hold_gc: bool | None = None) -> None:
        try:
            import yappi
        except ImportError:
            raise ProfilerMissing("the profiled window needs yappi: pip install 'semper[bench]', or pass "
                                  "--no-profile") from None
        self._yappi = yappi
        self._lock = threading.Lock()
        self.hold_gc = stale_stack_top_under_profiler() if hold_gc is None else hold_gc

    def start(self) -> None:
        with self._lock:
            self._yappi.stop()
            self._yappi.clear_stats()
            if self.hold_gc:
                gc.disable()             # before the profile function is set: no stale frame exists yet
            self._yappi.set_clock_type("cpu")
            self._yappi.start(builtins=False, profile_threads=True)

    def stop(self, top: int = int(os.environ.get("SEMPER_PROFILE_TOP", "25"))) -> dict[str, Any]:
        with self._lock:
            self._yappi.stop()
            out = summarise(self._yappi.get_func_stats(), top)
            self._yappi.clear_stats()
            out["gc"] = GC_HELD if self.hold_gc else "on"
            return out


def serve_profile_on_signals(path: Path, *, phases: bool = False) -> None:
    """SIGUSR1: start profiling this process; SIGUSR2: stop and write the summary (JSON) to ``path``.
    ``phases``: time the purchase's phases (:mod:`.phases`, near the unprofiled speed) instead of yappi."""
    profile: CpuProfile | PhaseTimer = PhaseTimer() if phases else CpuProfile()

    def begin(*_: Any) -> None:
        profile.start()

    def end(*_: Any) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(profile.stop(), indent=1))
        tmp.replace(path)
    signal.signal(signal.SIGUSR1, begin)
    signal.signal(signal.SIGUSR2, end)
