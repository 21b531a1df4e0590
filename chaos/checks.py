"""The checks after every chaos run: audit, archives, money, and what each honest party holds.

Why each check is a small pure function over plain figures and rulings: a check that cannot fail is
worthless, so ``tests/test_chaos.py`` feeds each one a world where money was created or lost, an
archive was altered or a deal left the honest party empty-handed, and asserts it says so. The
runner only gathers the figures (:func:`snapshot`, :func:`judge_buyer_deal`) and calls them.

What must hold after each run (paper and product brief, section 7):

* ``semper audit`` finds nothing at the bank (conservation, balances, evidence);
* every party's evidence archive verifies (the buyer's and the shop's: hash chain, checkpoints);
* money: after the shop cleared its PSAM batch, the bank's purse float equals what the card holds
  (no card debit lost on the way), the buyer's loss equals the seller's gain, and the seller's gain
  equals the payments the buyer's own evidence proves (nobody paid without proof, no proof unpaid);
* every deal leaves the honest buyer with what it was promised (the judge on its exported bundle
  rules "both fulfilled"), or with nothing given, or with evidence on which the judge rules that
  the seller owes; fair exchanges are ruled on by the exchange judge over the exchange's bundle;
* the honest shop never delivered without being paid.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Money:
    """Where the run's value can be, read after the shop cleared its PSAM batch."""

    buyer_account: int
    seller_account: int
    purse: int                  # the buyer's card
    purse_float: int            # the bank's view of value on cards and in uncleared PSAM batches
    issued: int

    @property
    def buyer_total(self) -> int:
        return self.buyer_account + self.purse


@dataclass
class DealFinding:
    deal: str
    workflow: str
    ok: bool
    outcome: str                # satisfied | nothing-given | buyer-wins | violation
    paid: int                   # what the buyer's evidence proves it paid
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"deal": self.deal, "workflow": self.workflow, "ok": self.ok, "outcome": self.outcome,
                "paid": self.paid, "why": self.why}


@dataclass
class Findings:
    violations: list[str] = field(default_factory=list)
    deals: list[DealFinding] = field(default_factory=list)

    def add(self, problems: list[str]) -> None:
        self.violations += problems


# ---- bank and archives ----------------------------------------------------------------------------------
def check_audit(report: dict[str, Any]) -> list[str]:
    """``semper audit``'s report (``AuditReport.as_dict()``): every violation is one."""
    return [f"audit: {v['cause']}: {v['detail']}" for v in report.get("violations", [])]


def check_archive(who: str, report: dict[str, Any]) -> list[str]:
    """``semper archive verify``'s report (``ArchiveReport.as_dict()``) for one party's archive."""
    if report.get("ok"):
        return []
    problems = report.get("problems") or [{"message": "not ok"}]
    return [f"{who}'s archive: {p.get('kind', '')} {p.get('message', p)}".replace("  ", " ") for p in problems]


# ---- money -------------------------------------------------------------------------------------------------
def stranded(m: Money) -> int:
    """Card debits the bank has not seen cleared: value on its way from the card to a PSAM's batch."""
    return m.purse_float - m.purse


def check_money(before: Money, after: Money, proven_paid: int) -> list[str]:
    """Value conserved within the run (figures after the shop cleared its batch, so nothing is on its way)."""
    out = []
    left = stranded(after) - stranded(before)
    if left:
        out.append(f"money: the card holds {after.purse} but the bank's purse float is {after.purse_float} after "
                   f"clearing: this run left {left} of card debits that reached no bank")
    if after.issued != before.issued:
        out.append(f"money: issued moved from {before.issued} to {after.issued} without any cash-in")
    gained = after.seller_account - before.seller_account
    lost = before.buyer_total - after.buyer_total
    if gained != lost:
        out.append(f"money: the buyer lost {lost}, the seller gained {gained}: "
                   f"{'created' if gained > lost else 'lost'} {abs(gained - lost)}")
    if gained != proven_paid:
        out.append(f"money: the seller gained {gained}, the buyer's evidence proves {proven_paid} paid")
    return out


# ---- deals ---------------------------------------------------------------------------------------------------
NOT_PAID = ("nothing was paid", "the seller made an offer; no order followed", "no offer signed by a seller")


def buyer_verdict(deal: str, workflow: str, ruling: dict[str, Any], exchange: dict[str, Any] | None,
                  total: int) -> DealFinding:
    """Does the honest buyer hold what it was promised, nothing given, or evidence that wins?

    ``ruling`` is ``judge_deal(...).as_dict()`` on the buyer's deal bundle; ``exchange`` the exchange
    judge's ruling on the deal's exchange bundle (information, contract), or None if no exchange ran.
    """
    def f(ok: bool, outcome: str, paid: int, why: str) -> DealFinding:
        return DealFinding(deal, workflow, ok, outcome, paid, why)
    text = str(ruling.get("ruling", ""))
    if not ruling.get("bundle", {}).get("ok"):
        problems = ruling.get("bundle", {}).get("problems")
        return f(False, "violation", 0, f"the buyer's bundle does not verify: {problems}")
    paid = total if not text.startswith(NOT_PAID) and "payment" in ruling.get("facts", {}) else 0
    if workflow in ("information", "contract"):
        if exchange is None:
            if paid:
                return f(False, "violation", paid, "paid, but no exchange is in the buyer's evidence")
            return f(True, "nothing-given", 0, "no exchange ran: nothing was given")
        if not exchange.get("bundle", {}).get("ok"):
            return f(False, "violation", paid, f"the exchange bundle does not verify: {exchange['bundle']}")
        o, r = exchange.get("originator", {}), exchange.get("responder", {})
        if workflow == "information" and r.get("fulfilled"):
            paid = total                  # the payment was the buyer's item in the exchange
        if o.get("fulfilled") and r.get("fulfilled"):
            return f(True, "satisfied", paid, str(exchange.get("ruling")))
        if not r.get("fulfilled") and not o.get("fulfilled"):
            return f(True, "nothing-given", paid, str(exchange.get("ruling")))
        if r.get("fulfilled") and o.get("how") == "commitment false":
            return f(True, "buyer-wins", paid, str(exchange.get("ruling")))
        return f(False, "violation", paid, f"unfair exchange: {exchange.get('ruling')}")
    if text.endswith("both fulfilled"):
        return f(True, "satisfied", paid, text)
    if ruling.get("seller_owes"):
        return f(True, "buyer-wins", paid, text)
    if not paid:
        return f(True, "nothing-given", 0, text)
    return f(False, "violation", paid, f"paid, and neither the goods nor winning evidence: {text}")


def check_shop_deliveries(kinds_by_deal: dict[str, list[str]], totals: dict[str, int]) -> list[str]:
    """The honest shop delivered only what was paid (from the shop's archive: entry kinds per deal)."""
    out = []
    for deal, kinds in kinds_by_deal.items():
        delivered = "statement:delivery" in kinds or "statement:registration" in kinds
        if delivered and totals.get(deal, 0) > 0 and "payment" not in kinds:
            out.append(f"the shop delivered deal {deal[:8]} without a payment in its archive")
    return out


# ---- gathering (needs the market) -----------------------------------------------------------------------
def snapshot(market: Any) -> Money:
    from semper.client.servers.bank_audit import audit
    w = market.world
    report = audit(w.bank.db, w.scheme.root_cert, signatures=False)
    totals = report.totals.get(978, {})
    return Money(w.bank.balance(w.accounts["buyer"]), w.bank.balance(w.accounts["seller"]), market.purse_balance(),
                 int(totals.get("purse_float", 0)), int(totals.get("issued", 0)))


def judge_buyer_deal(market: Any, deal: str, out_dir: Path) -> DealFinding:
    from semper.client.commerce.judge import judge_deal
    from semper.client.exchange.judge import judge as judge_exchange
    from semper.client.payment.item import item_verifiers
    from semper.client.support.trust import TrustStore
    b, w = market.buyer, market.world
    trust = TrustStore([w.ca_root])
    entries = b.archive.entries(deal)
    offer = next((e for e in entries if e.kind == "statement:offer"), None)
    workflow, total = "?", 0
    if offer is not None:
        from semper.client.support.verify import verify_statement
        body = verify_statement(offer.content, trust).body
        workflow, total = str(body.get("workflow")), int(body.get("total", 0))
    bundle = b.archive.export(deal, out_dir / f"{deal}.zip")
    ruling = judge_deal(bundle, trust, w.scheme.root_cert).as_dict()
    exchange = None
    xids = [json.loads(e.content).get("xid") for e in entries if e.kind == "exchange"]
    if xids and xids[-1]:
        xb = b.archive.export(str(xids[-1]), out_dir / f"{xids[-1]}.zip")
        exchange = judge_exchange(xb, trust, item_verifiers(purse_root=w.scheme.root_cert)).as_dict()
    return buyer_verdict(deal, workflow, ruling, exchange, total)
