"""``python -m semper.bench.offer_cost`` at CI size: it runs against the real ``semper serve shop`` and reports
the shop's CPU for each kind of offer request (no timing is asserted: speed is the command's output)."""
from __future__ import annotations

import pytest

from semper.bench.offer_cost import bench_offer_cost

pytestmark = pytest.mark.pcsc


def test_offer_cost_reports_each_kind_of_request_from_the_shops_own_cpu() -> None:
    r = bench_offer_cost(requests=60, rounds=2)
    kinds = set(r["shop_cpu_ms_per_request"])
    assert kinds == set(r["mean_ms"]) and len(kinds) == 3, r
    assert any(k.startswith("POST /deals") for k in kinds) and any(k.startswith("POST /offer") for k in kinds)
    for k, per_round in r["shop_cpu_ms_per_request"].items():
        assert len(per_round) == 2 and all(v >= 0 for v in per_round), (k, per_round)
    # 120 requests that each sign a fresh offer (about 50 ms) cost the shop CPU that /proc sees (a clock tick is 10 ms)
    deals = next(v for k, v in r["shop_cpu_ms_per_request"].items() if k.startswith("POST /deals"))
    assert sum(deals) > 0, r
