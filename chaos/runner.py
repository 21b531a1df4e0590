"""The chaos runner: for each run, arm the plan's faults, drive the workflow as the buyer, settle, check.

One run, in order: make the shop cheat if the plan says so; top the purse up and clear the shop's
PSAM batch (a clean start); take the money figures; arm the card and the proxies; drive the
workflow through the buyer's real client (a failed deal in which nothing was given is tried again
once, as a user would); ask the shop to clear its batch at the bank while the faults are still
armed; disarm, wait for every party to be back, clear again; then run every check in
:mod:`chaos.checks`. A run's violations name what failed; its seed replays it.
"""
from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semper.hardware.simulator import card_keys_in

from . import buyer_cheats, checks
from .card import TearArm
from .plan import WORKFLOWS, RunPlan, make_plan, run_seed
from .proxy import LinkFault

ADDRESS = {"name": "Bob Buyer", "street": "1 Main Street", "postcode": "12345", "city": "Teatown", "country": "DE"}
CLEAR_TIMEOUT = 30.0


@dataclass
class RunReport:
    index: int
    plan: RunPlan
    injected: list[str] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)          # each attempt's outcome status
    deals: list[checks.DealFinding] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    known_limits: list[str] = field(default_factory=list)
    seconds: float = 0.0
    collected: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self) -> str:
        inj = "; ".join(self.injected) or ("no fault (control)" if not self.plan.faults else "nothing fired")
        if self.plan.faults:
            inj = f"{inj} (plan: {self.plan.describe()})"
        if self.not_reached:
            inj += f" [armed, not reached: {'; '.join(self.not_reached)}]"
        outcomes = ",".join(d.outcome for d in self.deals) or "no deal"
        found = "all checks passed" if self.ok else f"VIOLATIONS: {' | '.join(self.violations)}"
        if self.known_limits:
            found += f"; KNOWN LIMIT: {' | '.join(self.known_limits)}"
        return (f"run {self.index} seed {self.plan.run_seed} {self.plan.workflow}/{self.plan.payment}: "
                f"injected {inj}; result {'→'.join(self.results)}; deals {outcomes}; {found} "
                f"({self.seconds:.1f} s)")

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "plan": self.plan.as_dict(), "injected": self.injected,
                "not_reached": self.not_reached, "results": self.results, "deals": [d.as_dict() for d in self.deals],
                "violations": self.violations, "known_limits": self.known_limits, "seconds": round(self.seconds, 2)}


@dataclass
class Summary:
    seed: int | None
    db: str = "sqlite"
    runs: int = 0
    planned: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    workflows: Counter[str] = field(default_factory=Counter)
    violations: int = 0
    failing: list[dict[str, Any]] = field(default_factory=list)
    known_limits: list[dict[str, Any]] = field(default_factory=list)
    final_audit: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "db": self.db, "runs": self.runs, "workflows": dict(self.workflows),
                "faults_planned": dict(self.planned), "faults_injected": dict(self.injected),
                "deal_outcomes": dict(self.outcomes), "violations": self.violations, "failing_runs": self.failing,
                "known_limits": self.known_limits,
                "final_audit": self.final_audit, "seconds": round(self.seconds, 1)}


def replay_command(rs: int, workflows: Sequence[str], db: str = "sqlite") -> str:
    extra = "".join(f" --workflow {w}" for w in workflows) if tuple(workflows) != WORKFLOWS else ""
    if db != "sqlite":
        extra += f" --db {db}"
    return f"semper chaos --replay {rs}{extra}"


def run_chaos(runs: int, seed: int | None, *, workflows: Sequence[str] = WORKFLOWS, replay: int | None = None,
              keep: Path | None = None, on_run: Callable[[RunReport], None] | None = None,
              say: Callable[[str], None] | None = None, patience: float = 2.0, db: str = "sqlite") -> Summary:
    """``runs`` runs of seed ``seed`` (or the one run ``replay``); ``on_run`` gets each run's report. ``db``:
    ``sqlite`` (every service's default) or ``postgresql`` (every service on a cluster of the run's own)."""
    from .market import Market
    if replay is None and runs < 1:
        raise ValueError("--runs must be at least 1")
    seeds = [replay] if replay is not None else [run_seed(int(seed or 0), i) for i in range(runs)]
    summary = Summary(seed if replay is None else None, db)
    started = time.monotonic()
    tmp = None
    if keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="semper-chaos-")
        folder = Path(tmp.name)
    else:
        folder = Path(keep)
        if folder.exists() and any(folder.iterdir()):
            raise ValueError(f"--keep {folder}: the folder must be new or empty")
    try:
        with card_keys_in(folder):                 # the market's card keys stay in its folder
            market = Market.create(folder / "world", patience=patience, say=say, db=db)
            try:
                for i, rs in enumerate(seeds):
                    plan = make_plan(rs, workflows)
                    report = run_one(market, plan, i, folder / "bundles" / str(i))
                    summary.runs += 1
                    summary.workflows[plan.workflow] += 1
                    summary.planned.update(plan.kinds)
                    summary.injected.update(s.split(":")[0].split(" ")[0] for s in report.injected)
                    summary.outcomes.update(d.outcome for d in report.deals)
                    if not report.ok:
                        summary.violations += len(report.violations)
                        summary.failing.append({"run": i, "run_seed": rs, "violations": report.violations,
                                                "replay": replay_command(rs, workflows, db)})
                    if report.known_limits:
                        summary.known_limits.append({"run": i, "run_seed": rs, "limits": report.known_limits,
                                                     "replay": replay_command(rs, workflows, db)})
                    if on_run is not None:
                        on_run(report)
                summary.final_audit = final_audit(market)
                if summary.final_audit.get("exit") != 0:
                    summary.violations += 1
                    summary.failing.append({"run": None, "violations": ["semper audit (with signatures) failed at the "
                                                                        "end"], "replay": None})
            finally:
                market.close()
    finally:
        summary.seconds = time.monotonic() - started
        if tmp is not None:
            tmp.cleanup()
    return summary


# ---- one run ------------------------------------------------------------------------------------------------
def run_one(market: Any, plan: RunPlan, index: int, bundles: Path) -> RunReport:
    report = RunReport(index, plan)
    t0 = time.monotonic()
    try:
        market.set_cheat(plan.cheat)
        market.ensure_up()
        market.top_up()
        settle(market, report)
        before = checks.snapshot(market)
        b = market.buyer
        b.shop.close()                     # a fresh connection, as a new session would open
        b.offers.clear()                   # and no standing offer kept: a run's first request is the offer's, as
                                           # its plan counts them (its second attempt orders on the kept one)
        start = max((e.index for e in b.archive.entries()), default=0)
        arm(market, plan)
        drive(market, plan, report)
        if plan.buyer_cheat:                            # the buyer cheats once, after its honest attempt
            cheat_buyer(market, plan.buyer_cheat, [d for d, i in _first_entries(b).items() if i > start],
                        bundles / "cheat", report)
        clear(market)                                   # clearing at the bank, faults still armed
        collect(market, plan, report)
        disarm(market, plan, report)
        settle(market, report)
        resume_exchanges(market, plan, report)
        after = checks.snapshot(market)
        verify(market, plan, report, before, after, start, bundles)
    except Exception as e:                              # a crash of the runner or the client: a finding too
        import traceback
        where = traceback.extract_tb(e.__traceback__)[-1]
        report.violations.append(f"the run raised {type(e).__name__}: {e} (at {Path(where.filename).name}:"
                                 f"{where.lineno} {where.name})")
        try:
            collect(market, plan, report)
            disarm(market, plan, report)
        except Exception:                               # the next run's set-up reports what stays broken
            pass
    report.seconds = time.monotonic() - t0
    return report


def cheat_buyer(market: Any, kind: str, deals: list[str], bundles: Path, report: RunReport) -> None:
    from semper.client.commerce.errors import CommerceError
    from semper.hardware.errors import HardwareError
    try:
        what, won = buyer_cheats.attempt(market, kind, deals, bundles)
    except (CommerceError, HardwareError) as e:        # a fault of the run stopped the cheat itself
        what, won = f"could not be tried ({e})", []
    report.injected.append(f"cheat buyer {kind}: {what}")
    report.violations += [f"cheating buyer: {w}" for w in won]


def collect(market: Any, plan: RunPlan, report: RunReport) -> None:
    """What actually fired (once per run)."""
    if report.collected:
        return
    report.collected = True
    if plan.cheat:
        report.injected.append(f"cheat shop {plan.cheat} (in every deal of the run)")
    report.injected += market.card.torn
    for p in market.proxies.values():
        report.injected += p.fired


def arm(market: Any, plan: RunPlan) -> None:
    for f in plan.faults:
        if f.kind == "card-tear":
            market.card.set_arm(TearArm(f.at, f.mode, f.delay_ms))
        elif f.kind in ("drop", "crash"):
            market.proxies[f.where].arm(LinkFault(f.kind, f.mode, f.at, f.delay_ms))


def disarm(market: Any, plan: RunPlan, report: RunReport) -> None:
    if market.card.arm is not None:
        report.not_reached.append(f"card tear at APDU {market.card.arm.apdu} ({market.card.count} APDUs sent)")
    market.card.set_arm(None)
    for name, p in market.proxies.items():
        if p.fault is not None:
            report.not_reached.append(f"{p.fault.action} {name} at request {p.fault.at} ({p.requests} requests)")
        p.arm(None)


def drive(market: Any, plan: RunPlan, report: RunReport) -> None:
    """The workflow through the buyer's real client; one more try if it failed with nothing given."""
    from semper.client.commerce import workflows as wf
    from semper.client.tinguin.model import OutcomeStatus
    b = market.buyer
    market.ui.payment = None if plan.payment == "none" else plan.payment
    for _attempt in (1, 2):
        if plan.workflow == "mail-order":
            r = wf.mail_order(b, [("teapot", 1)], form=ADDRESS)
        elif plan.workflow == "registration":
            r = wf.register(b, "tea-club", {"name": "Bob Buyer", "email": "bob@buyer.example"})
        elif plan.workflow == "information":
            r = wf.buy_information(b, "market-report")
        else:
            r = wf.sign_contract(b, "supply-contract")
        report.results.append(r.status.value if r.ok else f"{r.status.value} ({r.summary[:120]})")
        if r.status not in (OutcomeStatus.FAILED, OutcomeStatus.CANCELLED):    # the policy user never cancels
            return


def resume_exchanges(market: Any, plan: RunPlan, report: RunReport) -> None:
    """An exchange that ended in a dispute — pending because the third party was unreachable, or
    failed because the card went away while the buyer's party was signing its request to the third
    party — is finished as a user would: card back in, every party back, the client asks again."""
    if plan.workflow not in ("information", "contract") or not any(r.startswith("dispute") for r in report.results):
        return
    outcomes = market.buyer.exchange.recover()
    report.results.append("asked the third party again: " + (", ".join(o.status for o in outcomes) or "nothing open"))


def clear(market: Any) -> dict[str, Any] | None:
    """Ask the shop (through its proxy, as its operator would) to clear its PSAM batch at the bank."""
    from semper.client.support.channels import ChannelError, JsonClient
    proxy = market.proxies["shop"]
    try:
        with JsonClient(f"https://127.0.0.1:{proxy.port}", market.world.root_pem, timeout=CLEAR_TIMEOUT,
                        name="the shop") as shop:
            return shop.post("/admin/clear", {}, {"Authorization": f"Bearer {market.shop_admin_secret()}"})
    except ChannelError:
        return None


def settle(market: Any, report: RunReport) -> None:
    """Every party back up, the card in, the PSAM batch cleared (bounded tries)."""
    market.ensure_up()
    if market.card.conn is None:
        market.card.reinsert()
    for _ in range(3):
        if clear(market) is not None:
            return
        market.ensure_up()
    report.violations.append("the shop could not clear its PSAM batch at the bank (three tries, no faults armed)")


def verify(market: Any, plan: RunPlan, report: RunReport, before: checks.Money, after: checks.Money, start: int,
           bundles: Path) -> None:
    from semper.client.servers.bank_audit import audit
    from semper.client.support.archive import Archive
    from semper.client.support.trust import TrustStore
    w, b = market.world, market.buyer
    trust = TrustStore([w.ca_root])
    report.violations += checks.check_audit(audit(w.bank.db, w.scheme.root_cert, signatures=False).as_dict())
    report.violations += checks.check_archive("the buyer", b.archive.verify(trust).as_dict())
    with Archive.open(w.shop_dir / "evidence.sqlite3") as shop_archive:
        report.violations += checks.check_archive("the shop", shop_archive.verify(trust).as_dict())
        first = _first_entries(b)
        # deals this run began (a replayed offer adds entries to an old deal: that deal is not this run's)
        deal_ids = [d for d, i in first.items() if i > start and any(
            e.kind == "statement:offer" for e in b.archive.entries(d))]
        bundles.mkdir(parents=True, exist_ok=True)
        totals: dict[str, int] = {}
        for d in deal_ids:
            finding = checks.judge_buyer_deal(market, d, bundles)
            report.deals.append(finding)
            totals[d] = finding.paid
            if not finding.ok:
                report.violations.append(f"deal {d[:8]}: {finding.why}")
        kinds = {d: [e.kind for e in shop_archive.entries(d)] for d in deal_ids}
        report.violations += checks.check_shop_deliveries(kinds, totals)
    # no known limit remains: a shop killed between the card's debit and the proof used to strand the
    # amount (it forgot the deal); its deals are in its database now, so any discrepancy is a violation
    report.violations += checks.check_money(before, after, sum(d.paid for d in report.deals))


def _first_entries(b: Any) -> dict[str, int]:
    """Each deal's (or exchange's) first archive entry."""
    first: dict[str, int] = {}
    for e in b.archive.entries():
        first.setdefault(e.deal_id, e.index)
    return first


def final_audit(market: Any) -> dict[str, Any]:
    """The real ``semper audit`` command on the bank's folder, every signature re-verified."""
    import subprocess
    import sys
    w = market.world
    proc = subprocess.run([sys.executable, "-m", "semper.client.cli", "audit", "--bank-dir", str(w.bank_dir), "--json",
                           *w.db_args("bank")],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
                          env={**market.services["bank"].env})
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = {"output": proc.stdout[-500:], "error": proc.stderr[-500:]}
    return {"exit": proc.returncode, "clean": report.get("clean"), "totals": report.get("totals"),
            "violations": report.get("violations")}
