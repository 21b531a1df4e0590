"""The seller's CPU per purchase by phase: signing, the token, the database, the PSAM, the archive, HTTP.

Why a timer of its own next to the profiler (:mod:`.profiling`): yappi sees every function, but it slows
the shop about twofold, so its figures are shares of a slower process, and a share is all it can give.
Issue 14's question is absolute: how many microseconds of the seller's CPU each part of a purchase costs,
and so what a change to that part can save. This timer wraps a few functions the purchase goes through
(:data:`PHASES`), reads the calling thread's CPU clock at their edges, and charges each its *exclusive*
time (a phase called inside another is charged to the inner one). Each wrapped call costs about a
microsecond, so the process runs at nearly its unprofiled speed, and what no phase covers (the event
loop, TLS, the request handlers' own code) is reported as the remainder of the process's CPU.

The wrappers go in when the window starts and come out when it ends (:meth:`PhaseTimer.stop`), in the
running shop; they replace class attributes and module functions by name, so a phase renamed in the code
shows as ``missing`` in the report instead of silently measuring nothing.
"""
from __future__ import annotations

import functools
import inspect
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: what a purchase is counted by: the payment step's calls (one per purse purchase; a retransmitted step
#: would count again, and the report says how many there were)
PER = "payment step (Shop.pay_and_deliver)"


@dataclass(frozen=True)
class Phase:
    module: str         # where the function is defined, e.g. "semper.client.support.db"
    name: str           # "Class.method" or "function"
    label: str          # what the report calls it


PHASES: tuple[Phase, ...] = (
    Phase("semper.client.support.fast_http", "FastConnection.data_received", "HTTP: request bytes in (TLS read, head)"),
    Phase("semper.client.support.fast_http", "_serialise", "HTTP: response made"),
    Phase("semper.client.support.http_service", "json_response", "JSON: response body"),
    Phase("semper.client.servers.shop", "Shop.new_deal", "offer (Shop.new_deal)"),
    Phase("semper.client.servers.shop", "Shop.order", "order (Shop.order)"),
    Phase("semper.client.servers.shop", "Shop._offered", "order: the offer checked (Shop._offered)"),
    Phase("semper.client.support.verify", "verify_statement", "order: signature and chain verified"),
    Phase("semper.client.servers.shop", "Shop.pay_and_deliver", PER),
    Phase("semper.client.payment.modules.purse", "PayeeFlow.step", "payment: purse flow (PayeeFlow.step)"),
    Phase("semper.client.payment.psam_desk", "PsamDesk._call", "payment: PSAM APDUs"),
    Phase("semper.client.exchange.identity", "Identity.sign", "statement signed: CMS and self-check"),
    Phase("semper.hsm.signer", "Pkcs11Signer.sign_digest", "statement signed: the token's signature"),
    Phase("semper.client.support.db", "Database.run", "database: write transactions (SQL, commit)"),
    Phase("semper.client.support.db", "Database.read_one", "database: reads"),
    Phase("semper.client.servers.shop_store", "DealStore._write", "database: deal rows made"),
    Phase("semper.client.payment.store", "put_record", "database: payment records made"),
    Phase("semper.client.support.archive", "entry_row", "archive: entries made (hashes)"),
    Phase("semper.client.commerce.archive", "SharedArchive._flush", "archive: entries written"),
    Phase("semper.client.commerce.archive", "SharedArchive.sync", "archive: flushed to disk"),
)


@dataclass
class _Counts:
    """One thread's totals: kept per thread so that no two threads add to one number."""
    exclusive_ns: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    stack: list[int] = field(default_factory=list)       # the CPU time of inner phases, per open call


class PhaseTimer:
    """Charge each of ``phases`` the CPU its calls take, less that of the phases they call."""

    def __init__(self, phases: tuple[Phase, ...] = PHASES, per: str = PER) -> None:
        self.phases = phases
        self.per = per
        self._local = threading.local()
        self._all: list[_Counts] = []
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []
        self.missing: list[str] = []
        self._started_cpu = 0.0

    # ---- the window ------------------------------------------------------------------------------
    def start(self) -> None:
        """Wrap the phases (again) and count from zero."""
        self._unwrap()
        with self._lock:
            self._all = []
        self._local = threading.local()
        self.missing = [f"{p.module}:{p.name}" for p in self.phases if not self._wrap(p)]
        self._started_cpu = time.process_time()

    def stop(self) -> dict[str, Any]:
        """Unwrap, and the window's summary (see :meth:`summary`)."""
        cpu = time.process_time() - self._started_cpu
        self._unwrap()
        return self.summary(cpu)

    def summary(self, process_cpu_s: float) -> dict[str, Any]:
        """Each phase's exclusive CPU and calls per purchase, largest first, and the process's CPU that no
        phase covers; per purchase means per call of :attr:`per`."""
        exclusive: dict[str, int] = {}
        calls: dict[str, int] = {}
        with self._lock:
            counted = list(self._all)
        for c in counted:
            for k, v in list(c.exclusive_ns.items()):
                exclusive[k] = exclusive.get(k, 0) + v
            for k, v in list(c.calls.items()):
                calls[k] = calls.get(k, 0) + v
        n = calls.get(self.per, 0)
        out: dict[str, Any] = {"purchases": n, "per": self.per, "process_cpu_s": round(process_cpu_s, 4),
                               "missing": self.missing}
        if not n:
            out["error"] = f"no call of {self.per} in the window: nothing to divide by"
            return out
        rows = sorted(((v, k) for k, v in exclusive.items()), reverse=True)
        out["phases_us_per_purchase"] = [{"phase": k, "us": round(v / n / 1000, 1),
                                          "calls": round(calls.get(k, 0) / n, 2)} for v, k in rows]
        covered = sum(exclusive.values()) / 1e9
        out["process_cpu_us_per_purchase"] = round(process_cpu_s / n * 1e6, 1)
        out["covered_us_per_purchase"] = round(covered / n * 1e6, 1)
        out["rest_us_per_purchase"] = round((process_cpu_s - covered) / n * 1e6, 1)
        return out

    # ---- wrapping --------------------------------------------------------------------------------
    def _counts(self) -> _Counts:
        c: _Counts | None = getattr(self._local, "counts", None)
        if c is None:
            c = self._local.counts = _Counts()
            with self._lock:
                self._all.append(c)
        return c

    def _timed(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.thread_time_ns

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            c = self._counts()
            c.stack.append(0)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                took = clock() - t0
                inner = c.stack.pop()
                c.exclusive_ns[label] = c.exclusive_ns.get(label, 0) + took - inner
                c.calls[label] = c.calls.get(label, 0) + 1
                if c.stack:
                    c.stack[-1] += took
        return timed

    def _wrap(self, phase: Phase) -> bool:
        """Put the timed function in place of ``phase``'s; False when it is not there (or not a plain
        function: a coroutine's CPU would be charged at its creation, not while it runs)."""
        module = sys.modules.get(phase.module)
        if module is None:
            return False
        owner_name, _, attr = phase.name.rpartition(".")
        if owner_name:
            owner = getattr(module, owner_name, None)
            original = None if owner is None else owner.__dict__.get(attr)
            if owner is None or not inspect.isfunction(original) or inspect.iscoroutinefunction(original):
                return False
            setattr(owner, attr, self._timed(phase.label, original))
            self._undo.append(functools.partial(setattr, owner, attr, original))
            return True
        original = getattr(module, attr, None)
        if not inspect.isfunction(original) or inspect.iscoroutinefunction(original):
            return False
        timed = self._timed(phase.label, original)
        # the function as other modules imported it by name, too
        for m in list(sys.modules.values()):
            d = getattr(m, "__dict__", None)
            if isinstance(d, dict) and d.get(attr) is original:
                d[attr] = timed
                self._undo.append(functools.partial(d.__setitem__, attr, original))
        return True

    def _unwrap(self) -> None:
        undo, self._undo = self._undo, []
        for restore in reversed(undo):
            restore()
