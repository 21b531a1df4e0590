"""Where a process spends its CPU: yappi over every thread, summed by area of the system.

Why yappi and not cProfile: a service answers in an event-loop thread and a pool of worker
threads, and cProfile sees only the thread that started it. yappi (CPU clock) sees them all, so the
seller's profile covers TLS, aiohttp, the handlers in the pool and the devices they wait for. The
profile costs time itself (about 2x), so a benchmark reports it from a separate, profiled run and
never mixes its figures with the timed ones.

A process being profiled from outside (``python -m semper.bench.profiled_shop --profile FILE``) starts on SIGUSR1 and
writes its summary to FILE on SIGUSR2, so the window is exactly the benchmark's.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

from semper.hardware.errors import SemperError

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


class ProfilerMissing(SemperError):
    """yappi, the profiler, is an extra (``semper[bench]``)."""


class CpuProfile:
    """Profile every thread's CPU between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        try:
            import yappi
        except ImportError:
            raise ProfilerMissing("the profiled window needs yappi: pip install 'semper[bench]', or pass "
                                  "--no-profile") from None
        self._yappi = yappi
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._yappi.stop()
            self._yappi.clear_stats()
            self._yappi.set_clock_type("cpu")
            self._yappi.start(builtins=False, profile_threads=True)

    def stop(self, top: int = int(os.environ.get("SEMPER_PROFILE_TOP", "25"))) -> dict[str, Any]:
        with self._lock:
            self._yappi.stop()
            out = summarise(self._yappi.get_func_stats(), top)
            self._yappi.clear_stats()
            return out


def serve_profile_on_signals(path: Path) -> None:
    """SIGUSR1: start profiling this process; SIGUSR2: stop and write the summary (JSON) to ``path``."""
    profile = CpuProfile()

    def begin(*_: Any) -> None:
        profile.start()

    def end(*_: Any) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(profile.stop(), indent=1))
        tmp.replace(path)
    signal.signal(signal.SIGUSR1, begin)
    signal.signal(signal.SIGUSR2, end)
