"""``semper bench throughput --lean-buyers`` at CI size: lean buyers make real purchases, and the checks after the
window can fail.

No timing is asserted. What is asserted: the lean buyers' purchases happened (money moved card to PSAM to the
cent, every purchase's note checked after the window with nothing asked of the shop for it), the report says
which buyers ran; and a note that does not verify, or that is another order's, is reported as a failed
purchase (so the checks are not a formality), with the command's exit status then 1.
"""
from __future__ import annotations

import argparse
from typing import Any

import pytest

from semper.bench.throughput import ITEM_PRICE, bench_throughput

pytestmark = pytest.mark.pcsc


def _small(**kw: Any) -> dict[str, Any]:
    return bench_throughput(buyers=2, seconds=1.0, processes=1, warmup=0.5, profile_seconds=0.0, lean=True,
                            lean_orders=40, **kw)


def test_lean_buyers_complete_checked_purchases_and_conserve_money() -> None:
    r = _small()
    assert r["buyer_kind"] == "lean"
    assert r["failed"] == 0 and r["failed_whole_run"] == 0, r["failures"]
    assert r["purchases"] > 0
    lean = r["lean"]
    # every purchase that paid was checked after the window, and the check needed nothing more from the shop
    assert lean["check_failed"] == 0 and lean["check_requests"] == 0, lean
    money = r["money"]
    assert money["conserved"] is True, money
    assert money["completed_purchases"] == lean["paid"] + r["buyers"] >= r["purchases"] + r["buyers"]
    assert money["psam_received_cents"] == money["completed_purchases"] * ITEM_PRICE
    cpu = r["cpu_ms_per_purchase"]
    assert cpu["seller (semper serve shop)"] > 0 and cpu["buyers (worker processes)"] > 0
    # the seller saw what a full client sends: an order on the standing offer with the card's hello, one payment
    # step with the proof, one signed note; no offer request (the offer is kept), no poll for the note
    shop = r["shop_per_purchase"]
    assert shop["standing_asked"] == 0 and 0.9 <= shop["orders_on_standing"] <= 1.1, shop


def test_a_tampered_note_and_another_orders_note_are_failed_purchases() -> None:
    r = _small(tamper=("note", "other-order"))
    assert r["buyer_kind"] == "lean"
    assert r["failed"] == 2 and r["lean"]["check_failed"] == 2, (r["failed"], r["failures"])
    why = " | ".join(r["failures"])
    assert "check after the window" in why and "does not verify" in why, why
    assert "does not confirm this order" in why, why
    assert r["met"] is False
    # the money moved all the same: the failures are the seller's documents, not a payment lost
    assert r["money"]["conserved"] is True, r["money"]


def test_the_command_exits_1_when_a_lean_purchase_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit status follows the report (the run itself is the tests above): failed or money not conserved, 1."""
    from semper.bench import commands, throughput
    reports = iter([{"failed": 0, "failed_whole_run": 0, "money": {"conserved": True}},
                    {"failed": 1, "failed_whole_run": 1, "money": {"conserved": True}},
                    {"failed": 0, "failed_whole_run": 0, "money": {"conserved": False}}])
    monkeypatch.setattr(throughput, "bench_throughput", lambda **_kw: next(reports))
    args = argparse.Namespace(buyers=2, seconds=1.0, processes=1, warmup=0.5, no_profile=True, profile_seconds=0.0,
                              quiet=True, workers=1, db="sqlite", phases=False, offer_every_purchase=False,
                              lean_buyers=True, psams=1)
    assert [commands.cmd_throughput(args) for _ in range(3)] == [0, 1, 1]
