"""The seeded fault plan: which workflow a run drives, how it pays, and what is injected where.

Why the run seed carries everything: ``semper chaos --seed S`` derives one seed per run from S and
the run's index, and :func:`make_plan` reads nothing but that seed (and the workflows allowed), so
``semper chaos --replay RUN_SEED`` rebuilds exactly the same plan. The run seed's low byte is the
run's index modulo 240, which rotates the workflow and the primary fault kind: any 5 consecutive
runs meet every kind of fault (and a fault-free control), any 4 every workflow, and any 20 every
workflow with every kind.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

WORKFLOWS = ("mail-order", "information", "registration", "contract")
KINDS = ("none", "card-tear", "drop", "crash", "cheat")
CHEATS = ("wrong_goods", "no_delivery", "price_change", "replay_offer")          # what chaos/cheating_shop.py does
BUYER_CHEATS = ("buyer:replayed_order", "buyer:unpaid_delivery", "buyer:hidden_delivery")
ROTATION = 240                         # divisible by 1..6, 8, 10, 12, 15, 16, 20: every rotation is even

# APDUs a fault-free deal sends to the buyer's card, and HTTP requests each party's proxy sees in a
# fault-free run (the bank's for a card-purse deal are the shop's clearing); faults are drawn within.
APDUS = {("mail-order", "card-purse"): 30, ("mail-order", "cheque"): 26, ("mail-order", "setpay"): 50,
         ("registration", "card-purse"): 30, ("registration", "cheque"): 26, ("registration", "setpay"): 50,
         ("information", "card-purse"): 44, ("contract", "none"): 20}
# The shop's include the operator's clearing request at the end of the run.
REQUESTS: dict[str, dict[Any, int]] = {
    "shop": {("mail-order", "card-purse"): 5, ("registration", "card-purse"): 5, ("mail-order", "cheque"): 5,
             ("mail-order", "setpay"): 5, ("registration", "cheque"): 5, ("registration", "setpay"): 5,
             ("information", "card-purse"): 3, ("contract", "none"): 3},
    "bank": {"card-purse": 2, "cheque": 2, "setpay": 3},
    "ttp": {"information": 3, "contract": 3}}         # asked only when the seller stops


@dataclass(frozen=True)
class Fault:
    """One injection. ``kind``: card-tear | drop | crash | cheat; ``where``: card, shop, bank, ttp or the
    cheat's name; ``mode``: before/during (card), up/down (links), and for crashes also during (the
    party is killed ``delay_ms`` after the request reached it, while it may be handling it); ``at``: APDU
    or request number."""

    kind: str
    where: str
    mode: str = ""
    at: int = 0
    delay_ms: float = 0.0

    def describe(self) -> str:
        if self.kind == "card-tear":
            extra = f" +{self.delay_ms:.1f}ms" if self.mode == "during" else ""
            return f"card torn at APDU {self.at} ({self.mode}{extra})"
        if self.kind in ("drop", "crash"):
            what = "connection to" if self.kind == "drop" else "SIGKILL+restart of"
            when = {"up": "before forwarding it", "down": "after its answer, before delivering it",
                    "during": f"{self.delay_ms:.1f} ms after forwarding it, while it is handled"}[self.mode]
            return f"{self.kind}: {what} {self.where} at request {self.at} ({when})"
        if self.kind == "cheat":
            return f"cheating buyer: {self.where[6:]}" if self.where.startswith("buyer:") else \
                f"cheating shop: {self.where}"
        return self.kind


@dataclass(frozen=True)
class RunPlan:
    run_seed: int
    workflow: str
    payment: str
    faults: tuple[Fault, ...] = field(default_factory=tuple)

    @property
    def kinds(self) -> list[str]:
        return [f.kind for f in self.faults] or ["none"]

    @property
    def cheat(self) -> str | None:
        """The shop's cheat, if it cheats in this run."""
        return next((f.where for f in self.faults if f.kind == "cheat" and f.where in CHEATS), None)

    @property
    def buyer_cheat(self) -> str | None:
        """The buyer's cheat (without the ``buyer:`` prefix), if it cheats in this run."""
        return next((f.where.removeprefix("buyer:") for f in self.faults if f.kind == "cheat"
                     and f.where in BUYER_CHEATS), None)

    def describe(self) -> str:
        return "; ".join(f.describe() for f in self.faults) or "no fault (control)"

    def as_dict(self) -> dict[str, Any]:
        return {"run_seed": self.run_seed, "workflow": self.workflow, "payment": self.payment,
                "faults": [asdict(f) for f in self.faults]}


def run_seed(seed: int, index: int) -> int:
    """The seed of run ``index`` of ``semper chaos --seed seed``."""
    h = int.from_bytes(hashlib.sha256(f"semper-chaos:{seed}:{index}".encode()).digest()[:4], "big")
    return (h << 8) | (index % ROTATION)


def make_plan(seed: int, workflows: Sequence[str] = WORKFLOWS) -> RunPlan:
    """The whole plan of one run, from its seed alone (and the workflows allowed)."""
    if not workflows or any(w not in WORKFLOWS for w in workflows):
        raise ValueError(f"workflows must be among {', '.join(WORKFLOWS)}")
    rot = seed & 0xFF
    workflow = workflows[rot % len(workflows)]
    primary = KINDS[rot % len(KINDS)]      # 5 is prime to 1..4: 20 runs meet every (workflow, kind) pair
    rng = random.Random(seed)
    if workflow == "contract":
        payment = "none"
    elif workflow == "information":
        payment = "card-purse"
    else:
        payment = rng.choice(("card-purse", "card-purse", "card-purse", "cheque", "setpay"))
    faults: list[Fault] = []
    if primary != "none":
        faults.append(_fault(rng, primary, workflow, payment))
        if rng.random() < 0.3:                       # now and then a second fault of another kind
            second = rng.choice([k for k in ("card-tear", "drop", "crash") if k != primary])
            extra = _fault(rng, second, workflow, payment)
            if extra.kind in ("drop", "crash") and extra.where == faults[0].where:
                extra = _fault(rng, "card-tear", workflow, payment)      # one link fault per party and run
            faults.append(extra)
    if any(f.where == "ttp" for f in faults) and not any(f.where == "no_delivery" for f in faults):
        # the third party is asked only when the seller stops in the middle of the exchange: make it stop
        # there (the buyer has given its payment or signature), so the fault can matter
        stop = Fault("cheat", "no_delivery")
        faults = [stop if f.kind == "cheat" else f for f in faults]
        if stop not in faults:
            faults.append(stop)
    return RunPlan(seed, workflow, payment, tuple(faults))


def _fault(rng: random.Random, kind: str, workflow: str, payment: str) -> Fault:
    if kind == "card-tear":
        mode = rng.choice(("before", "during"))
        return Fault(kind, "card", mode, rng.randint(1, APDUS[(workflow, payment)]),
                     round(rng.uniform(0.0, 3.0), 2) if mode == "during" else 0.0)
    if kind in ("drop", "crash"):
        if workflow in ("information", "contract"):
            party = rng.choice(("shop", "shop", "ttp"))
        else:
            party = rng.choice(("shop", "bank", "bank") if payment != "card-purse" else ("shop", "shop", "bank"))
        key = {"shop": (workflow, payment), "bank": payment, "ttp": workflow}[party]
        limit = REQUESTS[party][key]
        if kind == "crash":           # a process killed at any moment: also while it handles the request
            mode = rng.choice(("up", "down", "during"))
            return Fault(kind, party, mode, rng.randint(1, limit),
                         round(rng.uniform(0.0, 25.0), 1) if mode == "during" else 0.0)
        return Fault(kind, party, rng.choice(("up", "down")), rng.randint(1, limit))
    if kind == "cheat":
        buyer = [c for c in BUYER_CHEATS if c != "buyer:hidden_delivery" or workflow in ("mail-order", "registration")]
        return Fault(kind, rng.choice(CHEATS + tuple(buyer)))
    raise ValueError(f"unknown fault kind {kind!r}")
