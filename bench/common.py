"""Shared pieces of the benches: timing statistics, machine facts, a throwaway card pair."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semper.client.support.scheme import Scheme

# the throwaway schemes of the benchmarks live in temporary folders; their token PIN is this, never in them
SCHEME_PIN = b"bench-scheme-pin"


def stats_us(samples_s: list[float]) -> dict[str, float]:
    xs = sorted(samples_s)
    n = len(xs)
    return {
        "n": n,
        "median_us": round(statistics.median(xs) * 1e6, 1),
        "p95_us": round(xs[min(n - 1, int(n * 0.95))] * 1e6, 1),
        "mean_us": round(statistics.fmean(xs) * 1e6, 1),
        "min_us": round(xs[0] * 1e6, 1),
    }


def machine() -> dict[str, object]:
    """The machine, and which interpreter: the same code costs about 12 % more CPU on a plain shared-library build of
    CPython than on Debian's (static, profile-guided; docs/performance.md, "The interpreter")."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python_executable": os.path.realpath(sys.base_prefix + "/bin/python3"),
            "python_build": platform.python_build()[1]}


@dataclass
class CardPair:
    folder: Path
    buyer: Path
    psam: Path
    scheme: Scheme


@contextmanager
def card_pair(sync: bool = False, pin: bytes = b"1234") -> Iterator[CardPair]:
    """A scheme, a buyer card and a PSAM in a temporary folder (never the user's own keys)."""
    from semper.client.support.personalisation import CardProfile, personalise_psam, personalise_purse_card
    from semper.client.support.scheme import Scheme
    from semper.hardware.simulator import card_keys_in
    with tempfile.TemporaryDirectory(prefix="semper-bench-") as d, card_keys_in(Path(d)):
        folder = Path(d)
        with Scheme.load_or_create(folder / "scheme", SCHEME_PIN) as scheme:
            buyer, psam = folder / "buyer.card", folder / "psam.card"
            personalise_purse_card(buyer, scheme, CardProfile(pin, b"12345678", max_balance=2**31 - 1), sync=sync)
            personalise_psam(psam, scheme, sync=sync)
            yield CardPair(folder, buyer, psam, scheme)
