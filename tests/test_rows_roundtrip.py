"""What a seller writes per purchase reads back as it was written, on both back ends: a deal's row (inserted
with its order, then updated paid, confirmed and delivered), a payment session and its record, and the
evidence archive's entries (their hashes are the chain's formula, and the archive verifies). These pin the
rows while their writing is made cheaper (docs/performance.md, "Cheaper rows and archive appends")."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from postgres import Storage, storages

from semper.client.commerce.archive import SharedArchive
from semper.client.commerce.catalogue import demo_catalogue
from semper.client.commerce.deal import Deal, deal_attributes, new_deal_id
from semper.client.payment.model import Record, Status, Terms
from semper.client.payment.sessions import DatabaseSessions, PayeeState
from semper.client.servers.shop_store import DealStore, ShopDeal
from semper.client.support.archive import GENESIS, Archive, ArchiveError, entry_hash, schema_sql
from semper.client.support.db import Database


def _lp(b: bytes) -> bytes:
    return len(b).to_bytes(8, "big") + b


def _chain_hash(index: int, prev: bytes, deal_id: str, kind: str, created_at: str, content: bytes) -> bytes:
    """The chain's formula as docs/evidence.md writes it, computed here on its own."""
    deal = hashlib.sha256(b"semper-archive/deal\x00" + deal_id.encode()).digest()
    body = hashlib.sha256(b"semper-archive/body\x00" + _lp(kind.encode()) + _lp(created_at.encode())
                          + _lp(content)).digest()
    return hashlib.sha256(b"semper-archive/entry\x00" + index.to_bytes(8, "big") + prev + deal + body).digest()


def _fields(sd: ShopDeal) -> dict[str, object]:
    """Everything a deal's row holds, comparable."""
    out = {k: v for k, v in vars(sd).items() if k != "deal"}
    d = sd.deal
    out["deal"] = (d.deal_id, d.workflow, d.attributes, d.decisions, d._archived)
    out["lines"] = [(i.sku, q) for i, q in sd.lines]
    return out


def _terms(payee_name: str = "Teapot Shop") -> Terms:
    return Terms.new(1_250, 978, "A7C2A7F5ED474F9E5", b"an order", payee_name)


@storages()
def test_a_deal_reads_back_as_each_step_wrote_it(storage: Storage, tmp_path: Path) -> None:
    db = Database(storage.url("shop", tmp_path))
    try:
        catalogue = demo_catalogue()
        store = DealStore(db, catalogue, None)
        deal = Deal(new_deal_id(), "mail-order", deal_attributes("mail-order"), None)
        offer = {"valid_until": "2999-01-01T00:00:00Z", "total": 1_250, "items": [{"sku": "teapot", "qty": 1}],
                 "shop": "Teapot Shöp ✓"}
        sd = ShopDeal(deal, offer, b"\x30\x82offer-der\x00\xff", "d" * 64, [(catalogue.get("teapot"), 1)], "psam-1",
                      order={"deal": deal.deal_id, "payment": "card-purse", "note": "ünïcode"},
                      order_bytes=b"\x30order\x00", order_digest="o" * 64, form={"name": "Alice", "city": "Zürich"},
                      terms=_terms(), buyer="b" * 64, started=True)
        sd.deal.decide("order", "satisfied", "signed by the buyer")
        assert store.insert(sd) and sd.version == 1
        fresh = store.get(sd.deal.deal_id, fresh=True)
        assert fresh is not None and _fields(fresh) == _fields(sd)

        # the payment step: paid, confirmed and delivered; the rest of the row as it was
        step = store.get(sd.deal.deal_id)
        assert step is not None
        step.paid = True
        step.payment = {"module": "card-purse", "payment_id": step.terms.payment_id, "amount": 1_250,  # type: ignore
                        "currency": 978, "status": "paid"}
        step.confirmation, step.delivery = b"\x30confirmation", b"\x30delivery\x00"
        step.deal.decide("payment", "satisfied", "card-purse: paid")
        step.deal.decide("delivery", "satisfied")
        step.deal._archived = 3
        assert store.save(step) and step.version == 2
        fresh = store.get(sd.deal.deal_id, fresh=True)
        assert fresh is not None and _fields(fresh) == _fields(step) and fresh.finished

        # a stale copy still fails, and the row stays the step's
        stale = store.get(sd.deal.deal_id)
        assert stale is not None
        stale.version = 1
        assert not store.save(stale)
        again = store.get(sd.deal.deal_id, fresh=True)
        assert again is not None and _fields(again) == _fields(step)
    finally:
        db.close()


@storages()
def test_a_session_and_its_record_read_back_as_saved(storage: Storage, tmp_path: Path) -> None:
    db = Database(storage.url("shop", tmp_path))
    try:
        sessions = DatabaseSessions(db)
        terms = _terms("Thé & Café ✓")
        state = PayeeState(terms, {"card-purse": {"psam": "psam-1"}}, "card-purse",
                           {"stage": "challenged", "batch": 1, "nested": {"b": [1, 2], "a": None}},
                           '{"hello":1}', '{"challenge":"x"}', False, 1)
        record = Record(terms.payment_id, "card-purse", "payee", terms, Status.PENDING, "card 42",
                        {"proof": "UFJPT0Y=", "index": 0, "names": ["ä", "b"]})
        assert sessions.create(state, record) and state.version == 1
        assert not sessions.create(state, record)                     # the session exists: nothing written
        got, rec = sessions.get_with_record(terms.payment_id, "payee")
        assert got == state and rec == record
        assert sessions.get(terms.payment_id) == state

        got.rounds, got.done, got.last_in, got.last_out = 2, True, '{"proof":1}', '{"result":"paid"}'
        got.flow = {"stage": "done"}
        assert rec is not None
        rec.status, rec.evidence = Status.PAID, {**rec.evidence, "proof_signature": "U0lH"}
        assert sessions.save(got, rec) and got.version == 2
        again, rec2 = sessions.get_with_record(terms.payment_id, "payee")
        assert again == got and rec2 == rec
        assert sessions.records.get(terms.payment_id, "payee") == rec
        assert not sessions.save(state, record)                       # a stale session is not written
        assert sessions.get_with_record(terms.payment_id, "payee") == (got, rec)
    finally:
        db.close()


def test_a_record_reads_back_from_its_json_and_from_the_json_written_before() -> None:
    terms = _terms("Café ✓")
    record = Record(terms.payment_id, "card-purse", "payee", terms, Status.PARTLY_REFUNDED, "card",
                    {"z": 1, "a": {"y": [1, "é"], "b": None}}, 300)
    text = record.as_json()
    assert Record.from_json(text) == record and Record.from_json(text.encode()) == record
    assert json.loads(text) == json.loads(json.dumps(json.loads(text), sort_keys=True))
    assert list(json.loads(text)) == sorted(json.loads(text))                  # keys sorted, nested ones too
    assert list(json.loads(text)["evidence"]) == ["a", "z"] and list(json.loads(text)["evidence"]["a"]) == ["b", "y"]
    # what json.dumps wrote before 2026-12-07 (", " and ": ", non-ASCII escaped) reads back the same
    before = json.dumps(json.loads(text), sort_keys=True)
    assert before != text and Record.from_json(before) == record


def test_archived_entries_hash_as_the_chain_says_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "evidence.sqlite3"
    archive = SharedArchive(path)
    try:
        deal = new_deal_id()
        archive.append(deal, "note", b"one", when=dt.datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=dt.UTC))
        with archive.batch():
            archive.append(deal, "statement:offer", bytes(range(256)) * 8)
            archive.append(deal, "kïnd ✓", b"")
            archive.append(new_deal_id(), "note", b"x" * 5000)
        entries = archive.entries()
        assert [e.index for e in entries] == [1, 2, 3, 4]
        prev = GENESIS
        for e in entries:
            assert e.prev_hash == prev
            assert e.entry_hash == _chain_hash(e.index, prev, e.deal_id, e.kind, e.created_at, e.content)
            assert e.entry_hash == entry_hash(e.index, prev, e.deal_id, e.kind, e.created_at, e.content)
            prev = e.entry_hash
        assert entries[0].created_at == "2026-12-07T10:00:00.123456Z"
        assert archive.verify().ok
    finally:
        archive.close()


def _archive_file(path: Path, schema: str) -> None:
    """An archive file with the tables ``schema`` makes, as an older semper made them."""
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    conn.executemany("INSERT INTO archive_meta (name, value) VALUES (?, ?)",
                     [("format", "semper-evidence-archive/1"), ("archive_id", "0" * 8),
                      ("created_at", "2026-01-01T00:00:00.000000Z")])
    conn.commit()
    conn.close()


#: the tables of new archives on 2026-12-07 before the chain's trigger (no unique index on the entry hash)
_MORNING = schema_sql("sqlite").split("CREATE TRIGGER")[0]


def _copy_at(conn: sqlite3.Connection, source: int, index: int) -> None:
    """Copy entry ``source``'s row, as it is, to ``index`` (plain SQL, as anyone who can write the file)."""
    conn.execute("INSERT INTO archive_entry (entry_index, prev_hash, deal_id, kind, created_at, content, entry_hash) "
                 "SELECT ?, prev_hash, deal_id, kind, created_at, content, entry_hash FROM archive_entry "
                 "WHERE entry_index = ?", (index, source))


def _triggers(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    finally:
        conn.close()


def test_an_archive_made_with_the_schema_before_still_appends_and_verifies(tmp_path: Path) -> None:
    """An archive file made before 2026-12-07 (``BIGINT PRIMARY KEY``, a unique index on the entry hash) keeps
    its tables; this semper appends to it and verifies it as before, adds nothing to it (its appends cost
    what they did), and its unique index still refuses a copied entry."""
    path = tmp_path / "old.sqlite3"
    old = _MORNING.replace("entry_index INTEGER PRIMARY KEY", "entry_index BIGINT PRIMARY KEY")
    old = old.replace("entry_hash  CHAR(64) NOT NULL\n", "entry_hash  CHAR(64) NOT NULL UNIQUE\n")
    assert "BIGINT PRIMARY KEY" in old and "UNIQUE" in old and "TRIGGER" not in old
    _archive_file(path, old)
    with Archive.open(path) as archive:
        archive.append_many([("d1", "note", b"a", None), ("d2", "note", b"b", None)])
        archive.append("d1", "note", b"c")
        assert archive.verify().ok and [e.index for e in archive.entries()] == [1, 2, 3]
    assert _triggers(path) == []
    conn = sqlite3.connect(path)
    try:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "sqlite_autoindex_archive_entry_2" in indexes                # its tables are as they were
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            _copy_at(conn, 2, 4)
    finally:
        conn.close()


@pytest.mark.parametrize("made", ["new", "morning"])
def test_a_copied_entry_is_refused_when_it_is_inserted(tmp_path: Path, made: str) -> None:
    """Review of 2026-12-07 (low): new archives (no unique index on the entry hash, to write one b-tree less
    per append) took a copy of an entry's row at another index, which only ``verify`` then found; before, the
    unique index refused the insert. The chain's trigger refuses it again, at insert time: an entry must
    carry the stored hash of the entry before it. A copy at the next index, far beyond, at 0, or of the last
    entry; an entry chained to nothing, or to the wrong entry. An archive made the morning of 2026-12-07,
    without the trigger, gets it when opened. What is refused changes nothing: the archive still appends and
    verifies."""
    path = tmp_path / f"{made}.sqlite3"
    if made == "morning":
        _archive_file(path, _MORNING)
        assert _triggers(path) == []
    with Archive.open(path, create=True) as archive:
        archive.append_many([("d1", "note", b"a", None), ("d2", "note", b"b", None), ("d1", "note", b"c", None)])
        head = archive.entries()[-1]
    conn = sqlite3.connect(path)
    try:
        for source, index in ((2, 4), (1, 4), (3, 4), (2, 100), (1, 0), (2, -5)):
            with pytest.raises(sqlite3.IntegrityError, match="not chained"):
                _copy_at(conn, source, index)
        for prev in (GENESIS.hex(), "f" * 64, head.prev_hash.hex()):            # chained to nothing, or another
            with pytest.raises(sqlite3.IntegrityError, match="not chained"):
                conn.execute("INSERT INTO archive_entry (entry_index, prev_hash, deal_id, kind, created_at, "
                             "content, entry_hash) VALUES (4, ?, 'd3', 'note', 'x', x'00', ?)", (prev, "1" * 64))
        conn.commit()
    finally:
        conn.close()
    assert _triggers(path) == ["archive_entry_chained"]
    with Archive.open(path) as archive:
        assert [e.index for e in archive.entries()] == [1, 2, 3]
        archive.append("d2", "note", b"d")
        report = archive.verify()
        assert report.ok and report.entries == 4, report.problems
    conn = sqlite3.connect(path)
    conn.execute("UPDATE archive_entry SET entry_hash = upper(entry_hash) WHERE entry_index = 4")    # verify reads it
    conn.commit()
    conn.close()
    with Archive.open(path) as archive:
        archive.append("d1", "note", b"e")
        assert archive.verify().ok
        # an appender whose tail is not the row stored is told so at once, not that the file stayed busy
        archive._tail = lambda: (5, bytes(32))                                                  # type: ignore
        with pytest.raises(ArchiveError, match="last entry is damaged"):
            archive.append("d1", "note", b"f")


def test_a_new_archive_keeps_one_index_per_entry_besides_its_key(tmp_path: Path) -> None:
    """New archives: the entry's index is SQLite's row key (no second b-tree for the primary key) and the entry
    hash has no index of its own (the chain and the key already make it unique): an append touches the
    table and the deal index only (docs/performance.md). The key still refuses a second entry at an index."""
    path = tmp_path / "new.sqlite3"
    with Archive.open(path, create=True) as archive:
        archive.append("d1", "note", b"a")
    conn = sqlite3.connect(path)
    try:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                              "AND tbl_name = 'archive_entry'")}
        assert indexes == {"archive_entry_deal"}
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO archive_entry (entry_index, prev_hash, deal_id, kind, created_at, content, "
                         "entry_hash) VALUES (1, ?, 'd2', 'note', 'x', x'00', ?)", ("0" * 64, "1" * 64))
        with pytest.raises(sqlite3.IntegrityError):        # integers only (the chain's trigger refuses it first)
            conn.execute("INSERT INTO archive_entry (entry_index, prev_hash, deal_id, kind, created_at, content, "
                         "entry_hash) VALUES ('two', ?, 'd2', 'note', 'x', x'00', ?)", ("0" * 64, "1" * 64))
    finally:
        conn.close()
    assert "BIGINT PRIMARY KEY" in schema_sql("postgresql") and "INTEGER PRIMARY KEY" not in schema_sql("postgresql")
