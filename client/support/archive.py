"""The evidence archive: append-only, hash-chained, with checkpoints signed by the owner's card or token.

Why a chain: evidence is only worth something if nobody (including the owner, later) can quietly
change it. Each entry's hash covers its index, the previous entry's hash and its own fields, so
editing, deleting, inserting or reordering anything breaks the chain; a signed checkpoint over
(index, chain head) pins everything before it to the owner's signature, so even a chain rewritten
with fresh hashes is caught. :meth:`Archive.verify` says which entry is wrong and how.

The hash of entry *i* (``lp(x)`` = 8-byte big-endian length, then *x*)::

    deal_digest = SHA-256("semper-archive/deal\\0" || deal_id)
    body_digest = SHA-256("semper-archive/body\\0" || lp(kind) || lp(created_at) || lp(content))
    entry_hash  = SHA-256("semper-archive/entry\\0" || u64be(i) || prev_hash || deal_digest || body_digest)

with ``prev_hash`` of entry 1 = 32 zero bytes. The two inner digests let an export show the chain
through *other* deals' entries without revealing them, and prove that no entry of the exported deal
was left out (its deal digest would give it away).

Storage is plain SQL (CREATE TABLE / INSERT / SELECT ... ORDER BY ... LIMIT) on SQLite; PostgreSQL
can take over with :func:`schema_sql` ("postgresql") and the ``%s`` parameter style. Rows are only
ever inserted.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import sqlite3
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from semper.hardware.errors import HardwareError
from semper.hardware.signer import Signer

from .cms import EvidenceError, check_integrity, parse_statement, sign_statement
from .db import DatabaseError, commit_held_groups
from .trust import TrustStore
from .verify import VerifiedStatement, verify_statement

FORMAT = "semper-evidence-archive/1"
BUNDLE_FORMAT = "semper-evidence-bundle/1"
GENESIS = bytes(32)
STATEMENT_KIND = "statement:"          # kind prefix of entries whose content is a CMS statement
MOVE_WINDOW = 256                      # how far from its place verify() looks for a moved entry
_BUSY_RETRIES = 6

StatementSigner = Callable[[Mapping[str, Any]], bytes]
_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS archive_meta (
    name        VARCHAR(64) PRIMARY KEY,
    value       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS archive_entry (
    entry_index {key} PRIMARY KEY,
    prev_hash   CHAR(64) NOT NULL,
    deal_id     VARCHAR(200) NOT NULL,
    kind        VARCHAR(100) NOT NULL,
    created_at  VARCHAR(40) NOT NULL,
    content     {blob} NOT NULL,
    entry_hash  CHAR(64) NOT NULL{unique}
);
CREATE INDEX IF NOT EXISTS archive_entry_deal ON archive_entry (deal_id);
CREATE TABLE IF NOT EXISTS archive_checkpoint (
    entry_index {key} PRIMARY KEY,
    head        CHAR(64) NOT NULL,
    created_at  VARCHAR(40) NOT NULL,
    statement   {blob} NOT NULL
);
"""
_BLOB = {"sqlite": "BLOB", "postgresql": "BYTEA"}
# The entry's index: a 64-bit integer key on both. SQLite's INTEGER PRIMARY KEY is its 64-bit row key, so the
# entries' table is the key's one b-tree; a BIGINT PRIMARY KEY would be a second one, written at every append.
_KEY = {"sqlite": "INTEGER", "postgresql": "BIGINT"}
# What refuses a copy of an entry at insert time: on SQLite the trigger below (no b-tree written); PostgreSQL's
# DDL keeps the unique constraint on the entry hash, as every archive had before 2026-12-07 (the saving was
# SQLite's, and a trigger there needs a procedural function).
_UNIQUE = {"sqlite": "", "postgresql": " UNIQUE"}
#: Refuses an entry not chained to the entry before it: its ``prev_hash`` must be the stored ``entry_hash``
#: at ``entry_index - 1`` (32 zero bytes for entry 1; hex compared in either case, as ``verify`` reads it),
#: so an insert with no entry before it, or one whose entry before it is another, is refused
#: (``sqlite3.IntegrityError``). A copy of entry *i* put at any other index *j* carries entry *i - 1*'s
#: hash, and entry *j - 1*'s differs (a hash covers its index). One lookup of the entry before by the row
#: key, whose page the appender has just read (the tail), and nothing written. In :func:`schema_sql`, and
#: made by :meth:`Archive.open` in archives that have neither it nor the unique index of archives made
#: before.
CHAINED_TRIGGER = f"""CREATE TRIGGER IF NOT EXISTS archive_entry_chained BEFORE INSERT ON archive_entry
WHEN lower(NEW.prev_hash) IS NOT (CASE WHEN NEW.entry_index = 1 THEN '{bytes(32).hex()}'
     ELSE (SELECT lower(entry_hash) FROM archive_entry WHERE entry_index = NEW.entry_index - 1) END)
BEGIN SELECT RAISE(ABORT, 'archive entry not chained to the entry before it (copied or out of place)'); END"""


def schema_sql(dialect: str = "sqlite") -> str:
    """The archive's DDL; the dialects differ in the binary column type, the key's type name, and what refuses
    a copied entry (SQLite: :data:`CHAINED_TRIGGER`; PostgreSQL: a unique constraint on the entry hash).

    Since 2026-12-07 (new files only: an archive made before keeps its tables, and reads, appends and
    verifies the same) a SQLite append writes one b-tree fewer twice over, a third of its pages
    (docs/performance.md, "Cheaper rows and archive appends"): the entry index is the row key itself (it
    was a BIGINT key beside the row id), and the entry hash has no unique index. That index was random hex
    keys, so every append touched leaves of its own (2 to 6 pages a batch). It did refuse one thing the key
    does not: a copy of an entry's row at another index (its hash is the original's, valid for the
    original's index only), which ``verify`` finds but the insert took (review of 2026-12-07). The trigger
    refuses that insert again and writes nothing: about 1.5 µs of CPU per entry, where the index cost
    about 10 (docs/evidence.md, 4.1). Nothing looks an entry up by its hash."""
    return "".join(stmt + ";\n" for stmt in _schema_statements(dialect))


def _schema_statements(dialect: str) -> list[str]:
    """:func:`schema_sql` one statement at a time (the trigger's body holds a ``;`` of its own)."""
    tables = _SCHEMA.format(blob=_BLOB[dialect], key=_KEY[dialect], unique=_UNIQUE[dialect])
    return [stmt.strip() for stmt in tables.split(";") if stmt.strip()] + ([CHAINED_TRIGGER] if dialect == "sqlite"
                                                                           else [])


# ---- errors -------------------------------------------------------------------------------------
class ArchiveError(EvidenceError):
    """The archive cannot do what was asked (missing file, busy, no signer, ...); in a service, its own
    fault (500)."""

    http_status = 500
    code = "internal"


class NoArchive(ArchiveError):
    """There is no archive where one was named."""


class UnknownDeal(ArchiveError):
    """The archive holds nothing under this deal or exchange id."""

    http_status = 404
    code = "unknown_deal"


class BadBundle(EvidenceError):
    """The file is not a readable evidence bundle."""

    http_status = 400
    code = "bad_bundle"


# ---- the chain formula --------------------------------------------------------------------------
def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def deal_digest(deal_id: str) -> bytes:
    return hashlib.sha256(b"semper-archive/deal\x00" + deal_id.encode("utf-8")).digest()


def body_digest(kind: str, created_at: str, content: bytes) -> bytes:
    return hashlib.sha256(b"semper-archive/body\x00" + _lp(kind.encode("utf-8")) + _lp(created_at.encode("ascii"))
                          + _lp(content)).digest()


def link_hash(index: int, prev_hash: bytes, deal_d: bytes, body_d: bytes) -> bytes:
    return hashlib.sha256(b"semper-archive/entry\x00" + index.to_bytes(8, "big") + prev_hash + deal_d + body_d).digest()


def entry_hash(index: int, prev_hash: bytes, deal_id: str, kind: str, created_at: str, content: bytes) -> bytes:
    return link_hash(index, prev_hash, deal_digest(deal_id), body_digest(kind, created_at, content))


def _rfc3339(when: dt.datetime) -> str:
    """The archive's time form, ``%Y-%m-%dT%H:%M:%S.%fZ`` in UTC. Written by isoformat() where that gives
    the same characters (years 1000-9999; strftime does not pad smaller years on Linux): it is the
    cheaper of the two, and every entry has a time."""
    when = when.astimezone(dt.UTC)
    if when.year >= 1000:
        return when.isoformat(timespec="microseconds")[:-6] + "Z"
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Row = tuple[str, str, bytes, str]           # deal id, kind, content, time as written (_rfc3339)


def entry_row(deal_id: str, kind: str, content: bytes, when: dt.datetime | None = None) -> Row:
    """An entry checked (:func:`check_entry`) and timed (now unless ``when``), as the archive writes it."""
    check_entry(deal_id, kind, content)
    return (deal_id, kind, bytes(content), _rfc3339(when or dt.datetime.now(dt.UTC)))


def check_entry(deal_id: str, kind: str, content: bytes) -> None:
    """What every entry must be: a printable deal id and kind of 1-200 characters, bytes as content."""
    for name, value in (("deal id", deal_id), ("kind", kind)):
        if not isinstance(value, str) or not value or len(value) > 200 or not value.isprintable():
            raise ArchiveError(f"the {name} must be 1-200 printable characters, got {value!r}")
    if not isinstance(content, (bytes, bytearray)):
        raise ArchiveError("entry content must be bytes")


def statement_kind(statement_der: bytes, statement_type: str | None = None) -> str:
    """The entry kind of a statement: ``statement:<type>``. Without ``statement_type`` the statement is
    parsed and its signature checked first; a caller that has just verified it (``verify_statement``)
    or signed it itself names the type instead, and saves doing that twice (half a millisecond)."""
    if statement_type is None:
        statement = parse_statement(statement_der)
        check_integrity(statement.parts)
        statement_type = statement.type
    return STATEMENT_KIND + statement_type


def statement_signer(signer: Signer, pin: bytes | None = None) -> StatementSigner:
    """Checkpoints signed on ``signer``; ``pin`` for keys that need it before every signature (PIV 9C)."""
    return lambda statement: sign_statement(signer, statement, pin=pin)


# ---- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    index: int
    prev_hash: bytes
    deal_id: str
    kind: str
    created_at: str
    content: bytes
    entry_hash: bytes

    def computed_hash(self, index: int | None = None) -> bytes:
        return entry_hash(self.index if index is None else index, self.prev_hash, self.deal_id, self.kind,
                          self.created_at, self.content)


@dataclass(frozen=True)
class Checkpoint:
    index: int
    head: bytes
    created_at: str
    statement: bytes


@dataclass(frozen=True)
class Problem:
    """One thing wrong, located: ``index`` is the entry (or checkpoint's entry) it concerns."""

    index: int | None
    kind: str          # edited, deleted, inserted, reordered, replaced, checkpoint, bundle
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class ArchiveReport:
    entries: int
    checkpoints: int
    head: str
    archive_id: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checkpoint_signers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "archive": self.archive_id, "entries": self.entries, "checkpoints": self.checkpoints,
                "head": self.head, "checkpoint_signers": self.checkpoint_signers,
                "problems": [{"index": p.index, "kind": p.kind, "message": p.message} for p in self.problems],
                "warnings": self.warnings}


def _ranges(indices: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in sorted(indices):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _span(a: int, b: int) -> str:
    return f"entry {a}" if a == b else f"entries {a}-{b}"


# ---- the archive --------------------------------------------------------------------------------
def commit_groups_of(path: Path) -> None:
    """This thread's commit groups on the archive's file committed, before a connection of the archive's own
    reads or writes it (``support.db.commit_held_groups``: a group holds the file's write lock, and its work
    is seen only on its own connection); a lost one is the archive's error to its caller."""
    try:
        commit_held_groups(path)
    except DatabaseError as e:
        raise ArchiveError(f"cannot use {path}: {e}") from None


_INSERT_ENTRY = ("INSERT INTO archive_entry (entry_index, prev_hash, deal_id, kind, created_at, content, entry_hash)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)")


_TAIL = "SELECT entry_index, entry_hash FROM archive_entry ORDER BY entry_index DESC LIMIT 1"


def _tail_of(row: Sequence[Any] | None) -> tuple[int, bytes]:
    """The last entry's index and hash from :data:`_TAIL`'s row (the genesis before the first entry)."""
    return (0, GENESIS) if row is None else (int(row[0]), bytes.fromhex(row[1]))


def _chained(rows: Sequence[Row], index: int, prev: bytes) -> list[Entry]:
    """The entries of ``rows`` appended after entry ``index`` whose hash is ``prev``."""
    entries = []
    for deal_id, kind, content, created in rows:
        index += 1
        digest = entry_hash(index, prev, deal_id, kind, created, content)
        entries.append(Entry(index, prev, deal_id, kind, created, content, digest))
        prev = digest
    return entries


def _entry_params(e: Entry) -> tuple[Any, ...]:
    return (e.index, e.prev_hash.hex(), e.deal_id, e.kind, e.created_at, e.content, e.entry_hash.hex())


class Archive:
    """One owner's evidence, in one SQLite file. Open with :meth:`open`; close when done."""

    def __init__(self, db: sqlite3.Connection, path: Path, archive_id: str, checkpoint_every: int | None,
                 sign: StatementSigner | None) -> None:
        self._db = db
        self.path = path
        self.archive_id = archive_id
        self.checkpoint_every = checkpoint_every
        self.sign = sign

    @classmethod
    def open(cls, path: Path, *, create: bool = False, checkpoint_every: int | None = None,
             sign: StatementSigner | None = None) -> Archive:
        """Open the archive at ``path``; with ``create``, make it if missing.

        ``checkpoint_every`` N: after every N-th entry a checkpoint is signed with ``sign`` (when
        given; otherwise :meth:`checkpoint_due` tells the owner to make one).
        """
        path = Path(path)
        if not path.exists() and not create:
            raise NoArchive(f"no evidence archive at {path}; check --db (or create it by recording evidence)")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ArchiveError("checkpoint_every must be at least 1")
        try:
            db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        except sqlite3.Error as e:
            raise ArchiveError(f"cannot open the evidence archive {path}: {e}") from None
        try:
            meta = cls._meta(db)
            made = meta is None
            if meta is None:
                if not create:
                    raise NoArchive(f"{path} is not a semper evidence archive (no archive tables in it)")
                db.execute("BEGIN")
                for stmt in _schema_statements("sqlite"):
                    db.execute(stmt)
                meta = {"format": FORMAT, "archive_id": str(uuid.uuid4()),
                        "created_at": _rfc3339(dt.datetime.now(dt.UTC))}
                if checkpoint_every is not None:
                    meta["checkpoint_every"] = str(checkpoint_every)
                db.executemany("INSERT INTO archive_meta (name, value) VALUES (?, ?)", sorted(meta.items()))
                db.execute("COMMIT")
            if meta.get("format") != FORMAT:
                raise ArchiveError(f"{path} is an archive of format {meta.get('format')!r}; this semper reads {FORMAT}")
            if not made:
                cls._guard_chain(db, path)
        except sqlite3.DatabaseError as e:
            db.close()
            raise NoArchive(f"{path} is not a semper evidence archive ({e})") from None
        except BaseException:
            db.close()
            raise
        every = checkpoint_every or (int(meta["checkpoint_every"]) if meta.get("checkpoint_every") else None)
        return cls(db, path, meta["archive_id"], every, sign)

    @staticmethod
    def _guard_chain(db: sqlite3.Connection, path: Path) -> None:
        """Give an archive made on 2026-12-07 before :data:`CHAINED_TRIGGER` existed (no unique index on the
        entry hash, no trigger) the trigger, so that it refuses a copied entry at insert time as every other
        archive does. An archive made before that day keeps its unique index and gets nothing (its appends
        cost what they did). A file this process may not write is left as it is: nothing can be appended
        through it either."""
        found = db.execute("SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'archive_entry'").fetchall()
        if any(kind == "trigger" and name == "archive_entry_chained" for kind, name, _sql in found) or any(
                kind == "table" and "UNIQUE" in str(sql).upper() for kind, _name, sql in found):
            return
        try:
            db.execute(CHAINED_TRIGGER)
        except sqlite3.OperationalError as e:
            if "readonly" in str(e):
                return
            raise ArchiveError(f"cannot open the evidence archive {path} for writing: {e}") from None

    @staticmethod
    def _meta(db: sqlite3.Connection) -> dict[str, str] | None:
        try:
            return dict(db.execute("SELECT name, value FROM archive_meta").fetchall())
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return None
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing --------------------------------------------------------------------------------
    def _tail(self) -> tuple[int, bytes]:
        return _tail_of(self._db.execute(_TAIL).fetchone())

    def append(self, deal_id: str, kind: str, content: bytes, *, when: dt.datetime | None = None) -> Entry:
        """Add one entry at the end of the chain (the only write the archive knows)."""
        return self.append_many([(deal_id, kind, content, when)])[0]

    def append_many(self, items: Sequence[tuple[str, str, bytes, dt.datetime | None]]) -> list[Entry]:
        """Add entries (deal id, kind, content, time or None for now) at the end of the chain, in order, in
        one transaction: all of them or none. Why: a commit writes every page it touched (the table's and
        its indexes') to the log again, so entries that are made together are written together
        (``commerce.archive.SharedArchive.batch``; docs/performance.md)."""
        return self.append_rows([entry_row(*item) for item in items])

    def append_rows(self, rows: Sequence[Row]) -> list[Entry]:
        """:meth:`append_many` for rows made by :func:`entry_row` (checked, content as bytes, the time
        written): ``SharedArchive``'s batch makes each row when its entry is made, and writes them later."""
        if not rows:
            return []
        commit_groups_of(self.path)              # this thread's group on the file holds its write lock
        for attempt in range(_BUSY_RETRIES):
            try:
                # the write lock first (a write as the transaction's first statement, plain SQL): appends
                # from several processes (a shop's workers) then queue on SQLite's busy timeout instead of
                # failing at once when a transaction that has read upgrades to a write
                self._db.execute("BEGIN")
                self._db.execute("UPDATE archive_entry SET entry_index = entry_index WHERE entry_index < 0")
                entries = _chained(rows, *self._tail())
                self._db.executemany(_INSERT_ENTRY, [_entry_params(e) for e in entries])
                self._db.execute("COMMIT")
                break
            except (sqlite3.IntegrityError, sqlite3.OperationalError) as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if "not chained" in str(e):              # the trigger: the tail as read is not the row stored
                    raise ArchiveError(f"cannot append to {self.path}: its last entry is damaged ({e}); check it "
                                       "with semper archive verify") from None
                if isinstance(e, sqlite3.OperationalError) and "locked" not in str(e) and "busy" not in str(e):
                    raise ArchiveError(f"cannot write to {self.path}: {e}") from None
                time.sleep(0.02 * 2 ** attempt)          # another writer took this index: read the tail again
        else:
            raise ArchiveError(f"{self.path} stayed busy (another process keeps writing); try again")
        self.checkpoint_if_due()
        return entries

    def append_rows_in(self, tx: Any, rows: Sequence[Row]) -> list[Entry]:
        """:meth:`append_rows` inside ``tx``, an open write transaction on this archive's file that another
        connection holds (``support.db.Transaction``: ``one`` and ``execute``): the entries commit with
        it or not at all. Its write lock is already taken (SQLite's writer begins with it), so nobody can
        append between the tail read here and the inserts. No checkpoint is signed here: the caller asks
        :meth:`checkpoint_due` once the transaction committed (``SharedArchive``)."""
        if not rows:
            return []
        entries = _chained(rows, *_tail_of(tx.one(_TAIL)))
        tx.executemany(_INSERT_ENTRY, [_entry_params(e) for e in entries])
        return entries

    def checkpoint_if_due(self) -> None:
        """Sign a checkpoint when one is due and a signer is set, after entries were appended. A failure is
        logged, not raised: the entries are stored, and raising would invite a second append of the same
        evidence; the checkpoint stays due (:meth:`checkpoint_due`) and is tried again after the next entry."""
        if self.sign is not None and self.checkpoint_due():
            try:
                self.checkpoint()
            except (EvidenceError, HardwareError) as e:
                _log.warning("entries archived, but the automatic checkpoint failed: %s", e)

    def append_statement(self, deal_id: str, statement_der: bytes, *, statement_type: str | None = None,
                         when: dt.datetime | None = None) -> Entry:
        """Archive a signed statement; its kind is ``statement:<type>`` so the export can verify it."""
        return self.append(deal_id, statement_kind(statement_der, statement_type), statement_der, when=when)

    def checkpoint_due(self) -> bool:
        if self.checkpoint_every is None:
            return False
        last, _ = self._tail()
        covered = self.last_checkpoint()
        return last - (covered.index if covered else 0) >= self.checkpoint_every

    def checkpoint(self, sign: StatementSigner | None = None) -> Checkpoint:
        """Sign (index, chain head) now; the signature pins every entry up to the head."""
        sign = sign or self.sign
        if sign is None:
            raise ArchiveError("no signer for checkpoints: open the archive with the owner's card or token")
        index, head = self._tail()
        if index == 0:
            raise ArchiveError("the archive is empty: there is nothing to checkpoint")
        existing = self._db.execute("SELECT entry_index, head, created_at, statement FROM archive_checkpoint "
                                    "WHERE entry_index = ?", (index,)).fetchone()
        if existing is not None:
            return Checkpoint(int(existing[0]), bytes.fromhex(existing[1]), existing[2], bytes(existing[3]))
        body = {"type": "checkpoint", "archive": self.archive_id, "index": index, "head": head.hex()}
        der = sign(body)
        statement = parse_statement(der)
        check_integrity(statement.parts)
        if statement.body != body:
            raise ArchiveError("the signer returned a statement other than the checkpoint it was asked to sign")
        created = _rfc3339(dt.datetime.now(dt.UTC))
        owner = self.owner()
        if owner is not None and _public_der(owner) != _public_der(statement.signer_cert):
            raise ArchiveError(f"this archive's checkpoints are signed by '{owner.subject.rfc4514_string()}'; "
                               f"'{statement.signer_cert.subject.rfc4514_string()}' is not its owner")
        commit_groups_of(self.path)
        try:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO archive_checkpoint (entry_index, head, created_at, statement) "
                             "VALUES (?, ?, ?, ?)", (index, head.hex(), created, der))
            if owner is None:
                self._db.execute("INSERT INTO archive_meta (name, value) VALUES (?, ?)",
                                 ("owner_cert", statement.signer_cert.public_bytes(Encoding.DER).hex()))
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK")                 # another process checkpointed meanwhile
        return Checkpoint(index, head, created, der)

    # ---- reading --------------------------------------------------------------------------------
    _ENTRY_COLS = "entry_index, prev_hash, deal_id, kind, created_at, content, entry_hash"

    @staticmethod
    def _entry(row: Sequence[Any]) -> Entry:
        def unhex(v: Any) -> bytes:
            try:
                return bytes.fromhex(str(v))
            except ValueError:
                return b"\xff" * 32 + str(v).encode()          # unreadable: guaranteed not to match any hash
        return Entry(int(row[0]), unhex(row[1]), str(row[2]), str(row[3]), str(row[4]),
                     bytes(row[5]) if isinstance(row[5], (bytes, bytearray, memoryview)) else str(row[5]).encode(),
                     unhex(row[6]))

    def entries(self, deal_id: str | None = None) -> list[Entry]:
        if deal_id is None:
            rows = self._db.execute(f"SELECT {self._ENTRY_COLS} FROM archive_entry ORDER BY entry_index").fetchall()
        else:
            rows = self._db.execute(f"SELECT {self._ENTRY_COLS} FROM archive_entry WHERE deal_id = ? "
                                    "ORDER BY entry_index", (deal_id,)).fetchall()
        return [self._entry(r) for r in rows]

    def checkpoints(self) -> list[Checkpoint]:
        rows = self._db.execute("SELECT entry_index, head, created_at, statement FROM archive_checkpoint "
                                "ORDER BY entry_index").fetchall()
        return [Checkpoint(int(r[0]), bytes.fromhex(r[1]) if _is_hex(r[1]) else b"", str(r[2]), bytes(r[3]))
                for r in rows]

    def owner(self) -> x509.Certificate | None:
        """The certificate of the first checkpoint's signer: the archive's owner."""
        row = self._db.execute("SELECT value FROM archive_meta WHERE name = ?", ("owner_cert",)).fetchone()
        if row is None:
            return None
        try:
            return x509.load_der_x509_certificate(bytes.fromhex(row[0]))
        except ValueError:
            raise ArchiveError(f"{self.path}: the recorded owner certificate is unreadable (archive_meta was "
                               "altered); verify with --owner CERT") from None

    def last_checkpoint(self) -> Checkpoint | None:
        cps = self.checkpoints()
        return cps[-1] if cps else None

    def deals(self) -> list[tuple[str, int]]:
        return [(str(d), int(n)) for d, n in self._db.execute(
            "SELECT deal_id, COUNT(*) FROM archive_entry GROUP BY deal_id ORDER BY MIN(entry_index)").fetchall()]

    # ---- verification ---------------------------------------------------------------------------
    def verify(self, trust: TrustStore | None = None, owner: x509.Certificate | None = None) -> ArchiveReport:
        """Check every link and checkpoint; each problem names its entry index and what is wrong.

        With ``trust``, checkpoint signers must chain to its roots (otherwise only their signatures
        are checked); with ``owner``, every checkpoint must be signed by that certificate's key.
        """
        entries = self.entries()
        report = ArchiveReport(len(entries), 0, entries[-1].entry_hash.hex() if entries else GENESIS.hex(),
                               self.archive_id)
        origin = _chain_problems(entries, report.problems)
        self._check_checkpoints(entries, origin, trust, owner, report)
        return report

    def _check_checkpoints(self, entries: list[Entry], origin: dict[int, Entry], trust: TrustStore | None,
                           owner: x509.Certificate | None, report: ArchiveReport) -> None:
        checkpoints = self.checkpoints()
        report.checkpoints = len(checkpoints)
        if owner is None:
            try:
                owner = self.owner()
            except ArchiveError as e:
                report.problems.append(Problem(None, "checkpoint", str(e)))
        owner_key = _public_der(owner) if owner is not None else None
        owner_name = owner.subject.rfc4514_string() if owner is not None else None
        last_good = 0
        for cp in checkpoints:
            where = f"checkpoint at entry {cp.index}"
            try:
                if trust is not None:
                    verified: VerifiedStatement | None = verify_statement(cp.statement, trust)
                    statement = verified.statement if verified else None
                else:
                    statement = parse_statement(cp.statement)
                    check_integrity(statement.parts)
            except EvidenceError as e:
                report.problems.append(Problem(cp.index, "checkpoint", f"{where} is forged or damaged: {e}"))
                continue
            assert statement is not None
            signer = statement.signer_cert
            name = signer.subject.rfc4514_string()
            if name not in report.checkpoint_signers:
                report.checkpoint_signers.append(name)
            if owner_key is None:
                owner_key, owner_name = _public_der(signer), name
            elif _public_der(signer) != owner_key:
                report.problems.append(Problem(cp.index, "checkpoint", f"{where} is signed by '{name}', not by the "
                                               f"archive's owner '{owner_name}': forged"))
                continue
            body = statement.body
            expected = {"type": "checkpoint", "archive": self.archive_id, "index": cp.index, "head": cp.head.hex()}
            if body != expected:
                diffs = ", ".join(f"{k} {body.get(k)!r} (stored {v!r})" for k,
                                  v in expected.items() if body.get(k) != v)
                report.problems.append(Problem(cp.index, "checkpoint", f"{where} does not match its signed statement: "
                                               f"the statement says {diffs}; the checkpoint row was altered"))
                continue
            genuine = origin.get(cp.index)
            if genuine is None:
                last = entries[-1].index if entries else 0
                report.problems.append(Problem(cp.index, "deleted", f"{where}: entry {cp.index} is gone "
                                               f"(the archive holds {len(entries)} entries, the last numbered {last})"
                                               f"; entries were deleted"))
            elif genuine.entry_hash != cp.head:
                report.problems.append(Problem(cp.index, "rewritten",
                                               f"{where}: the chain no longer ends in the signed "
                                               f"head; {_span(last_good + 1, cp.index)} were rewritten "
                                               "(hashes recomputed) after the checkpoint was signed"))
            else:
                last_good = cp.index
        last_index = entries[-1].index if entries else 0
        covered = checkpoints[-1].index if checkpoints else 0
        if last_index > covered:
            report.warnings.append(f"{_span(covered + 1, last_index)} not yet covered by a signed checkpoint "
                                   "(anyone with write access could still change them unnoticed)")
        if trust is None and checkpoints:
            report.warnings.append("checkpoint signers were not checked against a CA root (pass the CA to do so)")

    # ---- export ---------------------------------------------------------------------------------
    def export(self, deal_id: str, path: Path, *, crls: Iterable[x509.CertificateRevocationList] = (),
               extra_certs: Iterable[x509.Certificate] = ()) -> Path:
        """Write a self-contained evidence bundle (zip) for one deal, checkable offline.

        It holds the deal's entries, the chain from entry 1 to the first checkpoint covering them
        (other deals' entries reduced to their two digests), that checkpoint, every certificate the
        statements carry, and the CRLs given.
        """
        mine = self.entries(deal_id)
        if not mine:
            known = ", ".join(d for d, _ in self.deals()[:10]) or "none"
            raise UnknownDeal(f"no evidence for deal {deal_id!r} in {self.path} (deals here: {known})")
        last = mine[-1].index
        cover = next((cp for cp in self.checkpoints() if cp.index >= last), None)
        if cover is None:
            if self.sign is None:
                raise ArchiveError(f"no signed checkpoint covers entry {last} of deal {deal_id!r} yet; make one "
                                   "(semper archive checkpoint) and export again")
            cover = self.checkpoint()
        chain = [e for e in self.entries() if e.index <= cover.index]
        certs: dict[bytes, x509.Certificate] = {}
        for der in [cover.statement] + [e.content for e in mine if e.kind.startswith(STATEMENT_KIND)]:
            try:
                for c in parse_statement(der).certificates:
                    certs.setdefault(c.public_bytes(Encoding.DER), c)
            except EvidenceError:
                pass                                   # exported as is; the bundle check will name it
        for c in extra_certs:
            certs.setdefault(c.public_bytes(Encoding.DER), c)
        files: dict[str, bytes] = {"checkpoint.der": cover.statement}
        manifest_entries = []
        for e in mine:
            name = f"entries/{e.index:08d}.{'der' if e.kind.startswith(STATEMENT_KIND) else 'bin'}"
            files[name] = e.content
            manifest_entries.append({"index": e.index, "kind": e.kind, "created_at": e.created_at, "file": name})
        cert_names = []
        for i, c in enumerate(certs.values(), 1):
            cert_names.append(f"certs/{i:03d}.pem")
            files[cert_names[-1]] = c.public_bytes(Encoding.PEM)
        crl_names = []
        for i, crl in enumerate(crls, 1):
            crl_names.append(f"crls/{i:03d}.pem")
            files[crl_names[-1]] = crl.public_bytes(Encoding.PEM)
        manifest = {
            "format": BUNDLE_FORMAT, "archive": self.archive_id, "deal": deal_id,
            "exported_at": _rfc3339(dt.datetime.now(dt.UTC)),
            "checkpoint": {"index": cover.index, "head": cover.head.hex(), "file": "checkpoint.der"},
            "entries": manifest_entries,
            # entry i (from 1) -> [deal_digest, body_digest]; entry hashes follow from the formula
            "chain": [[deal_digest(e.deal_id).hex(), body_digest(e.kind, e.created_at, e.content).hex()]
                      for e in chain],
            "certificates": cert_names, "crls": crl_names,
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
            for name, data in files.items():
                z.writestr(name, data)
        tmp.replace(path)
        return path


def _is_hex(v: Any) -> bool:
    try:
        return len(bytes.fromhex(str(v))) == 32
    except ValueError:
        return False


def _public_der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import PublicFormat
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _original_index(e: Entry, limit: int) -> int | None:
    """The index an entry's stored hash was made for: its own, a nearby one (moved), or None (edited)."""
    if e.computed_hash() == e.entry_hash:
        return e.index
    dd, bd = deal_digest(e.deal_id), body_digest(e.kind, e.created_at, e.content)
    for delta in range(1, MOVE_WINDOW + 1):
        for j in (e.index - delta, e.index + delta):
            if 1 <= j <= limit and link_hash(j, e.prev_hash, dd, bd) == e.entry_hash:
                return j
    return None


def _chain_problems(entries: list[Entry], problems: list[Problem]) -> dict[int, Entry]:
    """Classify every entry against the chain; return original index -> the genuine entry there.

    An entry whose stored hash matches its fields at its own index is in place; at another index
    it was moved (reordered, or renumbered to hide a deletion or insertion); at none it was edited.
    """
    if not entries:
        return {}
    limit = max(e.index for e in entries) + MOVE_WINDOW
    origin_of = {e.index: _original_index(e, limit) for e in entries}
    by_origin: dict[int, list[Entry]] = {}
    for e in entries:
        o = origin_of[e.index]
        if o is None:
            problems.append(Problem(e.index, "edited", f"entry {e.index} was edited: its deal, kind, time or "
                                    "content no longer matches its hash"))
            o = e.index                     # assume it was edited in place
        by_origin.setdefault(o, []).append(e)
    genuine: dict[int, Entry] = {}
    inserted: set[int] = set()
    for o in sorted(by_origin):
        group = by_origin[o]
        if len(group) == 1:
            genuine[o] = group[0]
            continue
        successors = by_origin.get(o + 1, [])
        referenced = [g for g in group if any(s.prev_hash == g.entry_hash for s in successors)]
        moved = [g for g in group if origin_of[g.index] not in (None, g.index)]
        keep = (referenced or moved or group)[0]
        genuine[o] = keep
        for g in group:
            if g is not keep:
                inserted.add(g.index)
                problems.append(Problem(g.index, "inserted", f"entry {g.index} was inserted: it is not part of the "
                                        f"original chain (the entry that followed entry {o - 1} is now at "
                                        f"{keep.index})"))
    renumbered = any(origin_of[e.index] not in (None, e.index) for e in entries)
    for a, b in _ranges(set(range(1, max(genuine) + 1)) - set(genuine)):
        problems.append(Problem(a, "deleted", f"{_span(a, b)} {'is' if a == b else 'are'} missing (deleted)"
                                + ("; the entries after it were renumbered to hide the gap" if renumbered else "")))
    kept = [e for e in entries if e.index not in inserted]
    origins = [origin_of[e.index] or e.index for e in kept]
    if any(x >= y for x, y in itertools.pairwise(origins)):
        for e, o in zip(kept, origins, strict=True):
            if o != e.index:
                problems.append(Problem(e.index, "reordered", f"entry {e.index} is out of order: it was entry {o}"))
    for o, e in sorted(genuine.items()):
        prev = genuine.get(o - 1)
        expected_prev = GENESIS if o == 1 else (prev.entry_hash if prev is not None else None)
        if expected_prev is not None and e.prev_hash != expected_prev and origin_of[e.index] is not None:
            problems.append(Problem(o - 1 if o > 1 else e.index, "replaced",
                                    f"entry {o - 1} was replaced or rewritten: entry {e.index} was chained to a "
                                    f"different entry {o - 1}" if o > 1 else
                                    f"entry {e.index} does not start the chain (its previous hash is not zero)"))
    problems.sort(key=lambda p: (p.index or 0, p.kind))
    return genuine


# ---- bundles ------------------------------------------------------------------------------------
@dataclass
class BundleEntry:
    index: int
    kind: str
    created_at: str
    statement: VerifiedStatement | None = None


@dataclass
class BundleReport:
    deal: str
    archive_id: str
    checkpoint_index: int
    checkpoint_signer: str | None
    checkpoint_time: dt.datetime | None
    entries: list[BundleEntry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "deal": self.deal, "archive": self.archive_id,
                "checkpoint": {"index": self.checkpoint_index, "signer": self.checkpoint_signer,
                               "signed_at": self.checkpoint_time.isoformat() if self.checkpoint_time else None},
                "entries": [{"index": e.index, "kind": e.kind, "created_at": e.created_at,
                             **({"signer": e.statement.signer_name, "signed_at": e.statement.signing_time.isoformat(),
                                 "statement": e.statement.body} if e.statement else {})} for e in self.entries],
                "problems": [{"index": p.index, "kind": p.kind, "message": p.message} for p in self.problems],
                "notes": self.notes}


def _read_bundle(path: Path) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(path) as z:
            if len(z.infolist()) > 100_000:
                raise BadBundle(f"{path} has too many members to be an evidence bundle")
            return {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}
    except FileNotFoundError:
        raise BadBundle(f"no evidence bundle at {path}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise BadBundle(f"{path} is not an evidence bundle (a zip made by 'semper archive export'): {e}") from None


def verify_bundle(path: Path, trust: TrustStore) -> BundleReport:
    """Check an exported bundle offline against the verifier's own CA roots.

    The checkpoint must be a valid statement by a trusted signer; the chain recomputed from the
    deal's entries and the other entries' digests must end in the signed head; no entry of the deal
    may be missing; every statement must verify (CRLs shipped in the bundle are used: they are signed
    by the CA, while the roots always come from ``trust``).
    """
    files = _read_bundle(Path(path))
    try:
        manifest = json.loads(files["manifest.json"])
        deal = str(manifest["deal"])
        archive_id = str(manifest["archive"])
        cp_index = int(manifest["checkpoint"]["index"])
        chain = [(bytes.fromhex(d), bytes.fromhex(b)) for d, b in manifest["chain"]]
        listed = [(int(e["index"]), str(e["kind"]), str(e["created_at"]), str(e["file"])) for e in manifest["entries"]]
        if manifest.get("format") != BUNDLE_FORMAT:
            raise BadBundle(f"{path} is a bundle of format {manifest.get('format')!r}; this semper reads "
                            f"{BUNDLE_FORMAT}")
    except KeyError as e:
        raise BadBundle(f"{path} lacks {e} (manifest.json or one of its fields); it is not a complete bundle") from None
    except (ValueError, TypeError) as e:
        raise BadBundle(f"{path} has an unreadable manifest.json ({e})") from None
    crls = []
    for name in manifest.get("crls", []):
        try:
            crls.append(x509.load_pem_x509_crl(files[name]))
        except (KeyError, ValueError) as e:
            raise BadBundle(f"{path}: the CRL {name} is missing or unreadable ({e})") from None
    trust = trust.with_crls(crls)
    report = BundleReport(deal, archive_id, cp_index, None, None)
    problems = report.problems

    # the checkpoint: who vouches for the head
    head: bytes | None = None
    try:
        cp = verify_statement(files.get("checkpoint.der", b""), trust)
        report.checkpoint_signer, report.checkpoint_time = cp.signer_name, cp.signing_time
        report.notes.extend(cp.notes)
        body = cp.body
        if body.get("type") != "checkpoint" or body.get("archive") != archive_id or body.get("index") != cp_index:
            problems.append(Problem(cp_index, "checkpoint", f"the checkpoint statement is for archive "
                                    f"{body.get('archive')!r} entry {body.get('index')!r}, not what the manifest says"))
        else:
            head = bytes.fromhex(str(body.get("head")))
    except EvidenceError as e:
        problems.append(Problem(cp_index, "checkpoint", f"the checkpoint does not verify: {e}"))
    except ValueError:
        problems.append(Problem(cp_index, "checkpoint", "the checkpoint's head is not a hash"))
    if len(chain) != cp_index:
        problems.append(Problem(cp_index, "bundle", f"the chain lists {len(chain)} entries but the checkpoint covers "
                                f"{cp_index}"))

    # the deal's entries, recomputed into the chain
    mine_digest = deal_digest(deal)
    listed_at = {i: (kind, created, name) for i, kind, created, name in listed}
    prev = GENESIS
    for i, (dd, bd) in enumerate(chain, 1):
        if i in listed_at:
            kind, created, name = listed_at[i]
            content = files.get(name)
            if content is None:
                problems.append(Problem(i, "bundle", f"entry {i}: its file {name} is missing from the bundle"))
            elif dd != mine_digest or bd != body_digest(kind, created, content):
                problems.append(Problem(i, "edited", f"entry {i} was altered: its deal, kind, time or content does "
                                        "not match the chain"))
            entry = BundleEntry(i, kind, created)
            report.entries.append(entry)
            if content is not None and kind.startswith(STATEMENT_KIND):
                try:
                    entry.statement = verify_statement(content, trust)
                    report.notes.extend(f"entry {i}: {n}" for n in entry.statement.notes)
                    if entry.statement.type != kind[len(STATEMENT_KIND):]:
                        problems.append(Problem(i, "edited", f"entry {i} is filed as {kind} but is a "
                                                f"{entry.statement.type} statement"))
                except EvidenceError as e:
                    problems.append(Problem(i, "statement", f"entry {i}'s statement does not verify: {e}"))
        elif dd == mine_digest:
            problems.append(Problem(i, "deleted", f"entry {i} belongs to deal {deal!r} but was left out of the bundle"))
        prev = link_hash(i, prev, dd, bd)
    for i in sorted(set(listed_at) - set(range(1, len(chain) + 1))):
        problems.append(Problem(i, "bundle", f"entry {i} is listed but lies outside the checkpointed chain"))
    if head is not None and prev != head:
        problems.append(Problem(cp_index, "rewritten", "the chain recomputed from the bundle does not end in the head "
                                "the checkpoint signed: entries were altered, added or removed"))
    problems.sort(key=lambda p: (p.index or 0, p.kind))
    return report
