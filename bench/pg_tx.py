"""The storage layer's client CPU per purchase-shaped unit of work, in process (issue 14, item 4).

Why: the throughput bench's seller CPU moves by tenths of a millisecond from run to run on this machine,
more than the storage layer's whole share; this runs only the storage layer, on one thread (or a few),
and reads the thread's own CPU clock. A "purchase" here is what the shop asks of its database per
purchase: two single reads (``read_one``) and two write transactions (``run``) of 2 and 4 statements,
8 statements in all, like the shop's deal store and archive.

    python bench/pg_tx.py [--purchases 1000] [--rounds 5] [--threads 1] [--url URL]

Without ``--url`` it starts a PostgreSQL cluster of its own (not durable: the client's CPU is measured,
not the server's flushes) and stops it after; ``--url sqlite:////tmp/x.db`` measures SQLite. It prints
JSON: per round the thread CPU (µs per purchase, summed over threads), the process CPU and wall time.
Run by path, it measures whichever ``semper`` is importable (``PYTHONPATH`` picks another copy for A/B).
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any

from semper.client.support.db import Database, Transaction

TERMS = '{"a": 1, "b": "xyz"}' * 10


def _schema(db: Database) -> None:
    with db.transaction(exclusive=True) as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS deals (deal_id TEXT PRIMARY KEY, buyer TEXT, terms TEXT, "
                   "version INTEGER, finished INTEGER, updated_at BIGINT)")
        tx.execute("CREATE TABLE IF NOT EXISTS archive (id TEXT PRIMARY KEY, body TEXT, at BIGINT)")
        tx.execute("CREATE TABLE IF NOT EXISTS keys (name TEXT PRIMARY KEY, secret TEXT)")
        tx.execute("INSERT INTO keys (name, secret) VALUES ('offer', 'x') ON CONFLICT DO NOTHING")


def purchase(db: Database, deal: str) -> None:
    """One purchase's database work, shaped like the shop's (not its exact statements)."""
    db.read_one("SELECT secret FROM keys WHERE name = ?", ("offer",))

    def order(tx: Transaction) -> None:
        tx.execute("INSERT INTO deals (deal_id, buyer, terms, version, finished, updated_at) "
                   "VALUES (?, ?, ?, ?, ?, ?)", (deal, "buyer", TERMS, 1, 0, 123456))
        tx.execute("INSERT INTO archive (id, body, at) VALUES (?, ?, ?)", (deal + "o", "b" * 400, 1))

    db.run(order)
    db.read_one("SELECT deal_id, buyer, terms, version, finished, updated_at FROM deals WHERE deal_id = ?",
                (deal,))

    def settle(tx: Transaction) -> None:
        row = tx.one("SELECT version FROM deals WHERE deal_id = ?", (deal,))
        assert row is not None
        if tx.execute("UPDATE deals SET finished = 1, version = version + 1, updated_at = ? "
                      "WHERE deal_id = ? AND version = ?", (2, deal, row[0])).rowcount != 1:
            raise RuntimeError("the deal changed under the settlement")
        tx.execute("INSERT INTO archive (id, body, at) VALUES (?, ?, ?)", (deal + "p", "c" * 400, 2))
        tx.execute("UPDATE keys SET secret = secret WHERE name = ? AND 1 = 0", ("offer",))

    db.run(settle)


def measure(db: Database, purchases: int, rounds: int, threads: int) -> list[dict[str, Any]]:
    tag = os.urandom(4).hex()
    for k in range(50):
        purchase(db, f"{tag}-warm-{k}")
    out = []
    for r in range(rounds):
        spent: list[float] = []

        def work(t: int, r: int = r, spent: list[float] = spent) -> None:
            c0 = time.thread_time()
            for k in range(purchases):
                purchase(db, f"{tag}-{r}-{t}-{k}")
            spent.append(time.thread_time() - c0)

        s0, p0, w0 = db.counts["statements"], time.process_time(), time.perf_counter()
        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        n = purchases * threads
        out.append({"thread_us": round(sum(spent) / n * 1e6, 1),
                    "process_us": round((time.process_time() - p0) / n * 1e6, 1),
                    "wall_us": round((time.perf_counter() - w0) / n * 1e6, 1),
                    "statements": (db.counts["statements"] - s0) / n})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--purchases", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--url", default=None)
    args = ap.parse_args()
    cluster = None
    url = args.url
    if url is None:
        from semper.bench.postgres import PostgresCluster
        cluster = PostgresCluster.start(durable=False)
        url = cluster.new_database("pgtx")
    db = Database(url)
    try:
        _schema(db)
        rounds = measure(db, args.purchases, args.rounds, args.threads)
    finally:
        db.close()
        if cluster is not None:
            cluster.stop()
    print(json.dumps({"backend": db.backend, "threads": args.threads, "purchases": args.purchases,
                      "min_thread_us": min(r["thread_us"] for r in rounds), "rounds": rounds}))


if __name__ == "__main__":
    main()
