"""The payment's last step and the deal it completes are one transaction: a shop killed inside it completes
the deal once when the buyer sends the proof again, on SQLite and on PostgreSQL.

The shop commits the payment step (the payee's session and record) and the deal, paid, confirmed and
delivered, in one transaction (docs/performance.md, "One transaction per request"). This test kills it
inside that transaction — the deal's row written, nothing committed, the PSAM already holding the
card's proof — with ``chaos/crashing_shop.py``, which ends the process at that instant (once). The
chaos market's proxy then starts it again and the buyer's client sends the proof once more: the
restarted shop must take it from the state before the step (the PSAM answers a proof it took before
with the same receipt), complete the same deal, and every check of ``semper chaos`` applies: one deal,
satisfied in its first attempt, the bank's audit clean, both archives verifying, money conserved to the
cent (the card paid once, the PSAM took it once, the seller's account got it once).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semper.chaos.plan import Fault, RunPlan
from semper.chaos.runner import run_one


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def market(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from semper.bench.postgres import missing_reason
    from semper.chaos.market import Market
    if request.param == "postgresql" and missing_reason():
        pytest.skip(str(missing_reason()))
    m = Market.create(tmp_path_factory.mktemp(f"settle-{request.param}") / "world", patience=2.0, db=request.param)
    yield m
    m.close()


def _run_shop(market: Any, argv: list[str], name: str) -> None:
    """Restart the market's shop as ``argv`` (the proxy in front of it follows)."""
    shop = market.services["shop"]
    shop.stop()
    shop.argv, shop.name = argv, name
    market.proxies["shop"].retarget(shop.start())


def _crash_and_resume(market: Any, tmp_path: Path, instant: str, plan: RunPlan) -> Any:
    """The shop as ``crashing_shop``, which ends itself once at ``instant``; one run of ``plan`` through the
    chaos proxy (which starts the honest shop again); the run's report, once the shop is sure to have died there
    and no money rule was broken."""
    w = market.world
    args = ["--dir", str(w.shop_dir), "--pin-file", str(w.pin_file), *w.db_args("shop")]
    once = tmp_path / "crashed"
    _run_shop(market, ["-m", "semper.chaos.crashing_shop", "--crash-at", instant, "--once", str(once), *args],
              "crashing shop")
    try:
        report = run_one(market, plan, 0, tmp_path / "bundles")
    finally:
        _run_shop(market, ["-m", "semper.client.cli", "serve", "shop", *args], "semper serve shop")
    assert once.exists() and once.read_text().startswith(f"{instant} "), f"the shop did not die at {instant}"
    assert report.violations == [], report.line()
    return report


@pytest.mark.timeout(300)
def test_a_shop_killed_inside_the_payment_step_transaction_completes_the_deal_once(market: Any,
                                                                                   tmp_path: Path) -> None:
    # the proxy cuts the buyer's connection of request 3 (the proof) and starts the shop again 2 s after
    # forwarding it; the shop has ended itself inside the step's transaction long before
    report = _crash_and_resume(market, tmp_path, "settling", RunPlan(4, "mail-order", "card-purse",
                                                                     (Fault("crash", "shop", "during", 3, 2000.0),)))
    assert not report.known_limits, report.line()
    assert report.results == ["satisfied"] and [d.outcome for d in report.deals] == ["satisfied"], report.line()
    assert report.deals[0].paid > 0, report.line()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("instant", ["ordering", "ordered"])
def test_a_shop_killed_around_the_commit_of_an_order_with_the_cards_hello_resumes_the_deal(
        market: Any, tmp_path: Path, instant: str) -> None:
    """The order and the card's hello are one request and one transaction (the deal ordered, the payment's
    terms, the PSAM's challenge in its session). Killed inside that transaction (``ordering``: nothing
    committed, the PSAM already holding the request) or between its commit and its answer (``ordered``:
    everything committed, nothing sent), the shop started again takes the order with its hello sent once
    more and answers it — from what it committed, or by taking it again (the PSAM gives the same request
    for the same payment, whose id the order fixes) — and the deal is paid once."""
    report = _crash_and_resume(market, tmp_path, instant, RunPlan(5, "mail-order", "card-purse",
                                                                  (Fault("crash", "shop", "during", 2, 2000.0),)))
    assert not report.known_limits, report.line()
    assert report.results == ["satisfied"] and [d.outcome for d in report.deals] == ["satisfied"], report.line()
    assert report.deals[0].paid > 0, report.line()
