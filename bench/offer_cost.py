"""What one offer request costs the seller, alone: ``python -m semper.bench.offer_cost [--requests N]``.

Why beside ``semper bench throughput``: the offer request is about a tenth of the seller's CPU per purchase,
less than the run-to-run noise of a throughput run on a shared 2-core machine. Here the real ``semper serve
shop`` process (its key in its SoftHSM2 token, one worker) answers ``N`` offer requests of each kind in turn
from one client on one kept-alive HTTPS connection, nothing else running against it, and the shop process's
own CPU seconds (``/proc``, user and system) are read around each batch:

* ``POST /deals``: an offer signed for one deal (the buyer's nonce), as every mail order asked before
  standing offers, and as registration, information and contract deals still do;
* ``POST /offer``: the standing offer, kept by the shop after the first (what a client that keeps nothing
  asks at every purchase: bytes signed before, looked up);
* ``GET /catalogue``: the smallest JSON request, for the floor of a request on the lean path.

The batches alternate (``rounds`` times each) so a change of the machine's load falls on all three.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from semper.client.commands import positive_int

from .common import machine
from .throughput import ITEM_SKU, bench_catalogue


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_offer_cost(requests: int = 2000, rounds: int = 3) -> dict[str, Any]:
    from semper.client.commerce.shop_client import ShopClient
    from semper.client.demo_world import World
    from semper.hardware.pcscd import VirtualCards
    from semper.hardware.simulator import card_keys_in
    if requests < 1 or rounds < 1:
        raise ValueError("requests and rounds must be positive")
    items = [{"sku": ITEM_SKU, "quantity": 1}]
    asks = {
        "POST /deals (an offer signed for one deal)":
            lambda c: c.post("/deals", {"workflow": "mail-order", "nonce": secrets.token_hex(16), "items": items}),
        "POST /offer (the standing offer, kept)":
            lambda c: c.post("/offer", {"workflow": "mail-order", "items": items}),
        "GET /catalogue (a small JSON request)": lambda c: c.get("/catalogue"),
    }
    spent: dict[str, list[float]] = {k: [] for k in asks}
    with tempfile.TemporaryDirectory(prefix="semper-bench-offer-") as d, card_keys_in(Path(d)):
        world = World.create(Path(d))
        try:
            with VirtualCards([world.psam_card], sync=True) as vc:
                s = world.start_in_process(shop=False)
                proc = world.start_shop_process(psam_reader=vc.readers[0], catalogue=bench_catalogue(),
                                                extra=("--workers", "1"))
                client = ShopClient(s.shop, world.root_pem)
                try:
                    for ask in asks.values():           # warm: the connection, the kept offer, the caches
                        for _ in range(50):
                            ask(client)
                    for _ in range(rounds):
                        for name, ask in asks.items():
                            before = _cpu(proc.pid)
                            for _ in range(requests):
                                ask(client)
                            spent[name].append(_cpu(proc.pid) - before)
                finally:
                    client.close()
        finally:
            world.stop()
    per = {k: [round(v / requests * 1000, 4) for v in vs] for k, vs in spent.items()}
    return {"bench": "offer_cost", "requests_per_batch": requests, "rounds": rounds,
            "shop_cpu_ms_per_request": per,
            "mean_ms": {k: round(sum(v) / len(v), 4) for k, v in per.items()},
            "load_average": os.getloadavg(), "machine": machine(), "at": time.strftime("%H:%M:%S", time.gmtime())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=positive_int, default=2000, help="requests of each kind per batch (default 2000)")
    p.add_argument("--rounds", type=positive_int, default=3, help="batches of each kind, alternating (default 3)")
    a = p.parse_args()
    print(json.dumps(bench_offer_cost(a.requests, a.rounds), indent=2))


if __name__ == "__main__":
    main()
