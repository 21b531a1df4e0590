"""The third party's records: one row per exchange, decided once; answers kept for replays.

``ttp_exchange`` holds an exchange's final decision (resolved, revoked, originator-fault) with the
inputs it was made on; the primary key on ``xid`` makes "decided once" a property of the database,
not only of the process's lock. ``ttp_answer`` keeps the signed refusals given to authenticated
parties, keyed by the request's SHA-256, so a replayed request gets the identical answer.
Binary values are base64 text (``db.py``: the backends name binary types differently).
"""
from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass

from ..support.db import Transaction
from ..support.migrations import Schema

_VERSION_1 = (
    """CREATE TABLE IF NOT EXISTS ttp_exchange (
        xid TEXT PRIMARY KEY, protocol TEXT NOT NULL, originator TEXT NOT NULL, responder TEXT NOT NULL,
        outcome TEXT NOT NULL, decision TEXT NOT NULL, request_sha256 TEXT NOT NULL, request TEXT NOT NULL,
        proposal TEXT NOT NULL, decided_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ttp_answer (
        request_sha256 TEXT PRIMARY KEY, xid TEXT, outcome TEXT NOT NULL, answer TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
)
SCHEMA = Schema.baseline("ttp", _VERSION_1)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Record:
    xid: str
    protocol: str
    originator: str
    responder: str
    outcome: str
    decision: bytes
    request_sha256: str
    decided_at: str


def get_record(tx: Transaction, xid: str) -> Record | None:
    row = tx.one("SELECT xid, protocol, originator, responder, outcome, decision, request_sha256, decided_at "
                 "FROM ttp_exchange WHERE xid = ?", (xid,))
    if row is None:
        return None
    return Record(row[0], row[1], row[2], row[3], row[4], _unb64(row[5]), row[6], row[7])


def insert_record(tx: Transaction, rec: Record, request: bytes, proposal: bytes) -> bool:
    """False when another request decided this exchange first (the caller then answers with that).

    ``ON CONFLICT DO NOTHING``: the transaction stays usable on both back ends (a caught constraint
    error would end it on PostgreSQL), so the caller reads the earlier decision in it."""
    cur = tx.execute("INSERT INTO ttp_exchange (xid, protocol, originator, responder, outcome, decision, "
                     "request_sha256, request, proposal, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                     "ON CONFLICT (xid) DO NOTHING",
                     (rec.xid, rec.protocol, rec.originator, rec.responder, rec.outcome, _b64(rec.decision),
                      rec.request_sha256, _b64(request), _b64(proposal), rec.decided_at))
    return cur.rowcount == 1


def get_answer(tx: Transaction, request_sha256: str) -> bytes | None:
    row = tx.one("SELECT answer FROM ttp_answer WHERE request_sha256 = ?", (request_sha256,))
    return _unb64(row[0]) if row is not None else None


def insert_answer(tx: Transaction, request_sha256: str, xid: str | None, outcome: str, answer: bytes) -> bytes:
    """Keep an answer for replays; if one is kept already, that one (the first) is the answer."""
    existing = get_answer(tx, request_sha256)
    if existing is not None:
        return existing
    tx.execute("INSERT INTO ttp_answer (request_sha256, xid, outcome, answer, created_at) VALUES (?, ?, ?, ?, ?)",
               (request_sha256, xid, outcome, _b64(answer), now_iso()))
    return answer


def counts(tx: Transaction) -> dict[str, int]:
    out = {o: n for o, n in tx.all("SELECT outcome, COUNT(*) FROM ttp_exchange GROUP BY outcome")}
    out["refused"] = (tx.one("SELECT COUNT(*) FROM ttp_answer") or (0,))[0]
    return out
