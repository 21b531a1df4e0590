"""``semper bench all``: every figure of every bench command in one JSON document, with the machine.

Why one document: ``docs/performance.md`` quotes figures from several benches, and figures are only
comparable when they come from one run on one machine with one commit. This module calls each
bench's own function in this process (the same code its command runs) with full or ``--quick``
(CI-size) sizes, one after the other so they do not compete for the two cores, and collects:

* ``machine``: CPU count and model, memory, Python, platform, the git commit of the code measured;
* ``sections``: each bench's full result (its own ``machine`` entry dropped: there is one machine);
* ``sizes``: the arguments each bench ran with, so a figure can be reproduced by its own command;
* ``summary``: the headline figures, flat, for the docs and for comparing runs;
* ``skipped`` / ``errors``: what did not run and why (a failing bench does not hide the others;
  the command then exits with status 1).

Benches that need pcscd (``apdu``, the card part of ``sign``, ``purchase``, ``throughput``) are skipped with
``no_pcscd=True``; ``apdu`` then still measures its in-process figures. A bench added later joins by
one entry in :data:`SECTIONS`.
"""
from __future__ import annotations

import datetime as dt
import importlib
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import card_pair, machine, stats_us

FORMAT = 1
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Section:
    """One bench: where its function is, its sizes (full and quick), whether it needs pcscd."""

    name: str
    function: str                      # "module:function"
    full: dict[str, Any]
    quick: dict[str, Any]
    pcscd: str = "no"                  # "no", "yes" (skipped without pcscd), "part" (runs with no_pcscd_args)
    no_pcscd_args: dict[str, Any] = field(default_factory=dict)
    optional: bool = False             # a bench that may not exist in this checkout (reported as not available)
    command: str = ""


SECTIONS: tuple[Section, ...] = (
    Section("apdu", "semper.bench.apdu:bench_apdu", {"count": 2000, "purchases": 50, "progress": True},
            {"count": 50, "purchases": 5, "progress": True}, pcscd="yes", command="semper bench apdu --count 2000"),
    Section("sign", "semper.bench.sign:bench_sign", {"count": 1000, "card": True, "progress": True},
            {"count": 20, "card": True, "progress": True}, pcscd="part", no_pcscd_args={"card": False},
            command="semper bench sign --count 1000"),
    Section("exchange", "semper.bench.exchange:bench_exchange", {"runs": 20, "resolved_runs": 5, "patience": 0.05},
            {"runs": 2, "resolved_runs": 1, "patience": 0.05},
            command="semper bench exchange --runs 20 --resolved-runs 5"),
    Section("clearing", "semper.bench.clearing:bench_clearing", {"count": 2000, "cards": 4}, {"count": 50, "cards": 2},
            command="semper bench clearing --count 2000 --cards 4"),
    Section("purchase", "semper.bench.purchase:bench_purchase", {"runs": 30, "floor_runs": 30},
            {"runs": 3, "floor_runs": 3}, pcscd="yes", optional=True,
            command="semper bench purchase --runs 30 --floor-runs 30"),
    Section("throughput", "semper.bench.throughput:bench_throughput",
            {"buyers": 16, "seconds": 10.0, "processes": 2, "warmup": 2.0, "profile_seconds": 4.0},
            {"buyers": 2, "seconds": 1.5, "processes": 1, "warmup": 0.5, "profile_seconds": 1.0}, pcscd="yes",
            command="semper bench throughput --buyers 16 --seconds 10 --processes 2"),
)


def machine_facts() -> dict[str, Any]:
    """``bench.common.machine()`` plus what tells two machines (and two commits) apart."""
    out: dict[str, Any] = dict(machine())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                out["memory_mib"] = int(line.split()[1]) // 1024
                break
    except OSError:
        pass
    try:
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False)
        if rev.returncode == 0:
            out["git_commit"] = rev.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def _load(function: str) -> Callable[..., dict[str, Any]]:
    module, _, name = function.partition(":")
    fn: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), name)
    return fn


def _in_checkout(function: str) -> bool:
    """Whether the bench's module is a file of this checkout. An editable install can resolve a module
    missing here from another checkout; its figures would then not belong to the commit reported."""
    import importlib.util
    try:
        spec = importlib.util.find_spec(function.partition(":")[0])
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and Path(spec.origin).resolve().is_relative_to(REPO)


def _in_process_apdu(count: int) -> dict[str, Any]:
    """The part of ``bench apdu`` that needs no pcscd: READ PURSE in process, raw signatures."""
    from semper.hardware.purse import PurseSession
    from semper.hardware.simulator import open_card

    from .apdu import READ_PURSE, _raw_signatures, _time_transmit
    with card_pair(sync=True) as pair, open_card(pair.buyer) as conn:
        PurseSession(conn)
        inproc = stats_us(_time_transmit(conn.transmit, count))
    return {"apdu": "READ PURSE " + READ_PURSE.hex(" ").upper(), "in_process": inproc,
            "raw_cryptography_sign": _raw_signatures(max(count // 10, 50)),
            "pcscd_figures": "skipped: --no-pcscd"}


def summary(sections: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, flat (``None`` where a section did not run)."""
    def get(path: str) -> Any:
        node: Any = sections
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node
    return {
        "apdu_in_process_median_us": get("apdu.in_process.median_us"),
        "apdu_pcscd_median_us": get("apdu.pcscd.median_us"),
        "purchase_two_cards_pcscd_median_us": get("apdu.purchase_pcscd.median_us"),
        "piv_sign_9a_pcscd_median_us": get("apdu.piv_sign_9a_pcscd.median_us"),
        "raw_p256_sign_median_us": get("sign.raw_cryptography.median_us")
        or get("apdu.raw_cryptography_sign.median_us"),
        "softhsm_sign_median_us": get("sign.softhsm_pkcs11.median_us"),
        "card_piv_9a_pcscd_sign_median_us": get("sign.card_piv_9a_pcscd.median_us"),
        "gen_ver_fault_free_median_ms": get("exchange.protocols.gen-ver.fault_free.latency.median_ms"),
        "gen_ver_resolved_ms": get("exchange.protocols.gen-ver.resolved.resolution_ms"),
        "rev_rev_fault_free_median_ms": get("exchange.protocols.rev-rev.fault_free.latency.median_ms"),
        "plain_fault_free_median_ms": get("exchange.protocols.plain.fault_free.latency.median_ms"),
        "clearing_proofs_per_s": get("clearing.cleared_per_s"),
        "clearing_raw_verify_per_s": get("clearing.raw_verify_per_s"),
        "purchase_end_to_end_median_ms": get("purchase.latency.median_ms"),
        "purchase_ratio_to_floor": get("purchase.ratio_to_floor"),
        "throughput_purchases_per_s": get("throughput.purchases_per_s"),
        "throughput_latency_p50_ms": get("throughput.latency.p50_ms"),
        "throughput_latency_p99_ms": get("throughput.latency.p99_ms"),
        "throughput_seller_cpu_ms_per_purchase": get("throughput.cpu_ms_per_purchase.seller (semper serve shop)"),
    }


def bench_all(*, quick: bool = False, no_pcscd: bool = False, only: tuple[str, ...] = (),
              progress: bool = True) -> dict[str, Any]:
    """Run every bench (or ``only`` these) and return the one document."""
    known = {s.name for s in SECTIONS}
    unknown = sorted(set(only) - known)
    if unknown:
        raise ValueError(f"no bench called {', '.join(unknown)}; benches: {', '.join(sorted(known))}")

    def say(msg: str) -> None:
        if progress:
            print(f"[bench all] {msg}", file=sys.stderr, flush=True)

    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    doc: dict[str, Any] = {"format": FORMAT, "bench": "all", "quick": quick, "no_pcscd": no_pcscd,
                           "started": started.isoformat(timespec="seconds"), "machine": machine_facts(),
                           "sections": {}, "sizes": {}, "commands": {}, "elapsed_s": {}, "skipped": {}, "errors": {}}
    for s in SECTIONS:
        if only and s.name not in only:
            continue
        args = dict(s.quick if quick else s.full)
        doc["commands"][s.name] = s.command          # the bench's own command, at full size
        if s.optional and not _in_checkout(s.function):
            doc["skipped"][s.name] = f"not available in this checkout ({s.function.partition(':')[0]} is not in {REPO})"
            continue
        if s.pcscd == "yes" and no_pcscd:
            if s.name == "apdu":
                say("apdu: in-process figures only (--no-pcscd)")
                doc["sections"]["apdu"] = _in_process_apdu(args["count"])
            doc["skipped"][s.name] = "needs pcscd (--no-pcscd)" if s.name != "apdu" else \
                "the pcscd figures (--no-pcscd); in-process figures measured"
            continue
        if s.pcscd == "part" and no_pcscd:
            args.update(s.no_pcscd_args)
        try:
            fn = _load(s.function)
        except (ImportError, AttributeError) as e:
            if s.optional:
                doc["skipped"][s.name] = f"not available in this checkout ({e})"
                continue
            raise
        if "progress" in args and not progress:
            args["progress"] = False
        say(f"{s.name}: {', '.join(f'{k}={v}' for k, v in args.items() if k != 'progress')}")
        t = time.perf_counter()
        try:
            result = dict(fn(**args))
        except Exception as e:
            doc["errors"][s.name] = f"{type(e).__name__}: {e}"
            say(f"{s.name} failed: {type(e).__name__}: {e}")
            if os.environ.get("SEMPER_DEBUG"):
                traceback.print_exc()
            continue
        finally:
            doc["elapsed_s"][s.name] = round(time.perf_counter() - t, 1)
        result.pop("machine", None)
        doc["sections"][s.name] = result
        doc["sizes"][s.name] = {k: v for k, v in args.items() if k != "progress"}
    doc["summary"] = summary(doc["sections"])
    doc["total_elapsed_s"] = round(time.perf_counter() - t0, 1)
    doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return doc
