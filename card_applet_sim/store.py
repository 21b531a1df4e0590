"""The card's persistent memory: one image file per card, with Java Card-style transactions.

Why a journal: a card image is a key/value map, and a commit appends one record holding every key
the transaction changed, written with a single ``write`` call and closed by a keyed digest. When the
process dies mid-write (a *tear*), the last record is incomplete or fails its digest, is recognised
as torn and dropped on the next open: the card comes back with the state before that transaction,
never a mix. A damaged record anywhere else is corruption and is reported, never repaired silently.
The journal is compacted into a fresh snapshot file that replaces the old one atomically (rename).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

MAGIC = b"SEMPER-CARD-IMAGE\x00v1\x00"
_REC_HDR = struct.Struct(">cI")        # kind, payload length
_DIGEST_LEN = 16
_DELETE = 0xFFFFFFFF
_MAX_RECORD = 16 * 1024 * 1024


class CardImageError(Exception):
    """The card image cannot be used; the message says which file and what to do."""


def _digest(header: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(header + payload, digest_size=_DIGEST_LEN, person=b"semper-card").digest()


def _encode_changes(changes: dict[str, bytes | None]) -> bytes:
    out = bytearray()
    for key, value in changes.items():
        k = key.encode()
        out += struct.pack(">H", len(k)) + k
        if value is None:
            out += struct.pack(">I", _DELETE)
        else:
            out += struct.pack(">I", len(value)) + value
    return bytes(out)


def _decode_changes(payload: bytes) -> dict[str, bytes | None]:
    changes: dict[str, bytes | None] = {}
    i, n = 0, len(payload)
    while i < n:
        (klen,) = struct.unpack_from(">H", payload, i)
        i += 2
        key = payload[i:i + klen].decode()
        i += klen
        (vlen,) = struct.unpack_from(">I", payload, i)
        i += 4
        if vlen == _DELETE:
            changes[key] = None
        else:
            if i + vlen > n:
                raise ValueError("value runs past the record")
            changes[key] = payload[i:i + vlen]
            i += vlen
    return changes


def _intact_record_after(raw: bytes, start: int) -> int | None:
    """Offset of a complete record with a good digest beginning after ``start``, or None.

    A torn record is always the last thing in the file. When a record that looks torn (it runs
    past the end, or fails its digest at the very end) is followed by an intact record, its header
    was damaged instead: that is corruption, and treating it as a tear would silently drop every
    commit after it.
    """
    n = len(raw)
    for j in range(start + 1, n - _REC_HDR.size - _DIGEST_LEN + 1):
        if raw[j] not in (0x52, 0x53):                  # b"R", b"S"
            continue
        _kind, plen = _REC_HDR.unpack_from(raw, j)
        body = j + _REC_HDR.size
        end = body + plen + _DIGEST_LEN
        if end <= n and _digest(raw[j:body], raw[body:end - _DIGEST_LEN]) == raw[end - _DIGEST_LEN:end]:
            return j
    return None


def _record(kind: bytes, changes: dict[str, bytes | None]) -> bytes:
    payload = _encode_changes(changes)
    header = _REC_HDR.pack(kind, len(payload))
    return header + payload + _digest(header, payload)


@dataclass
class LoadReport:
    records: int = 0
    torn_bytes: int = 0          # bytes of an interrupted last commit that were dropped


@dataclass
class Store:
    """An open card image. One process at a time: the file is locked while open."""

    path: Path
    sync: bool = True
    _data: dict[str, bytes] = field(default_factory=dict)
    _live: int = 0                 # live_size(), kept up to date so a commit does not rescan the image
    write_chunk: int = 0           # >0: write records in pieces of this size, like EEPROM pages (tear tests)
    _pending: dict[str, bytes | None] | None = None
    _fd: int = -1
    _size: int = 0
    report: LoadReport = field(default_factory=LoadReport)

    # ----- opening and creating -------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], initial: dict[str, bytes], *, sync: bool = True) -> "Store":
        p = Path(path)
        if p.exists():
            raise CardImageError(f"{p} already exists; choose another path or delete it first")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".new")
        with open(tmp, "wb") as f:
            f.write(MAGIC + _record(b"S", dict(initial)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        return cls.open(p, sync=sync)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, sync: bool = True) -> "Store":
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDWR)
        except FileNotFoundError:
            raise CardImageError(f"no card image at {p}; create one with 'semper card new --image {p}'") from None
        in_use = f"card image {p} is in use by another process (is 'semper card serve' running?)"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CardImageError(in_use) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(p))
        except FileNotFoundError:
            same = False
        if not same:                # the holder compacted (renamed a new file over p) before we locked
            os.close(fd)
            raise CardImageError(in_use)
        # Only the lock holder may judge a .new file: while another process holds the image, its
        # .new is a compaction in progress, not a leftover.
        stale = p.with_name(p.name + ".new")
        if stale.exists():          # a compaction that died before its rename: the old file rules
            stale.unlink()
        store = cls(p, sync)
        store._fd = fd
        try:
            store._load()
        except BaseException:
            os.close(fd)
            store._fd = -1
            raise
        return store

    def _load(self) -> None:
        raw = b""
        with os.fdopen(os.dup(self._fd), "rb") as f:
            raw = f.read()
        if not raw.startswith(MAGIC):
            raise CardImageError(f"{self.path} is not a semper card image (bad header); it was not changed")
        data: dict[str, bytes] = {}
        i = len(MAGIC)
        good_end = i
        records = 0
        while i < len(raw):
            hdr_end = i + _REC_HDR.size
            if hdr_end > len(raw):
                break                                   # torn inside the header
            kind, plen = _REC_HDR.unpack_from(raw, i)
            if kind not in (b"R", b"S") or plen > _MAX_RECORD:
                raise CardImageError(f"{self.path} is corrupt at byte {i} (unknown record); restore it from a backup")
            end = hdr_end + plen + _DIGEST_LEN
            payload = raw[hdr_end:hdr_end + plen]
            if end > len(raw) or _digest(raw[i:hdr_end], payload) != raw[hdr_end + plen:end]:
                if end >= len(raw) and _intact_record_after(raw, i) is None:
                    break                               # the last write never completed (torn)
                raise CardImageError(
                    f"{self.path} is corrupt at byte {i} (checksum mismatch before the last record); "
                    "restore it from a backup")
            try:
                changes = _decode_changes(payload)
            except (ValueError, UnicodeDecodeError, struct.error):
                raise CardImageError(f"{self.path} is corrupt at byte {i} (bad record body)") from None
            if kind == b"S":
                data = {}
            for k, v in changes.items():
                if v is None:
                    data.pop(k, None)
                else:
                    data[k] = v
            records += 1
            i = good_end = end
        if records == 0:
            raise CardImageError(f"{self.path} holds no complete snapshot; restore it from a backup")
        if good_end < len(raw):
            # The tail is a commit that never finished: drop it so the next append starts clean.
            self.report.torn_bytes = len(raw) - good_end
            os.ftruncate(self._fd, good_end)
        self.report.records = records
        self._data = data
        self._live = sum(self._entry_size(k, v) for k, v in data.items())
        self._size = good_end
        os.lseek(self._fd, good_end, os.SEEK_SET)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- reading --------------------------------------------------------------------------
    def get(self, key: str, default: bytes | None = None) -> bytes | None:
        if self._pending is not None and key in self._pending:
            v = self._pending[key]
            return default if v is None else v
        return self._data.get(key, default)

    def keys(self, prefix: str = "") -> Iterator[str]:
        seen = set(k for k in self._data if k.startswith(prefix))
        if self._pending:
            for k, v in self._pending.items():
                if k.startswith(prefix):
                    if v is None:
                        seen.discard(k)
                    else:
                        seen.add(k)
        return iter(sorted(seen))

    def get_int(self, key: str, default: int = 0) -> int:
        v = self.get(key)
        return default if v is None else int.from_bytes(v, "big", signed=True)

    # ----- transactions ---------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._pending is not None

    def begin(self) -> None:
        if self._pending is not None:
            raise RuntimeError("transaction already open (Java Card forbids nesting)")
        self._pending = {}

    def put(self, key: str, value: bytes) -> None:
        if self._pending is None:
            raise RuntimeError("write outside a transaction")
        self._pending[key] = bytes(value)

    def put_int(self, key: str, value: int) -> None:
        self.put(key, value.to_bytes(8, "big", signed=True))

    def delete(self, key: str) -> None:
        if self._pending is None:
            raise RuntimeError("write outside a transaction")
        self._pending[key] = None

    def abort(self) -> None:
        self._pending = None

    def commit(self) -> None:
        """Make every write of the open transaction persistent at once, then close it."""
        if self._pending is None:
            raise RuntimeError("no open transaction")
        changes, self._pending = self._pending, None
        changes = {k: v for k, v in changes.items() if self._data.get(k) != v}
        if not changes:
            return
        rec = _record(b"R", changes)
        self._append(rec)
        for k, v in changes.items():
            old = self._data.get(k)
            if old is not None:
                self._live -= self._entry_size(k, old)
            if v is None:
                self._data.pop(k, None)
            else:
                self._data[k] = v
                self._live += self._entry_size(k, v)
        if self._size > 4 * self._live + 64 * 1024:
            try:
                self.compact()
            except OSError:
                pass        # the commit is already on disk; the journal is compacted at a later commit

    def checkpoint(self) -> None:
        """Commit what is pending and keep a transaction open (for try counters written first)."""
        self.commit()
        self.begin()

    def _append(self, rec: bytes) -> None:
        if self.write_chunk > 0:
            # Several system calls per record widen the window in which a kill tears the record,
            # the way a card writes EEPROM page by page; recovery must cope with any prefix.
            written = 0
            for i in range(0, len(rec), self.write_chunk):
                written += os.write(self._fd, rec[i:i + self.write_chunk])
        else:
            written = os.write(self._fd, rec)
        if written != len(rec):      # a short write on a full disk: treat like a tear
            os.ftruncate(self._fd, self._size)
            os.lseek(self._fd, self._size, os.SEEK_SET)
            raise CardImageError(f"could not write {self.path} (disk full?); the last change was not made")
        if self.sync:
            os.fsync(self._fd)
        self._size += written

    @staticmethod
    def _entry_size(key: str, value: bytes) -> int:
        return len(key) + len(value) + 6

    def live_size(self) -> int:
        """Bytes the committed state would take as one snapshot (keys, values, framing)."""
        return self._live

    def compact(self) -> None:
        """Rewrite the image as one snapshot; the rename makes the switch atomic."""
        tmp = self.path.with_name(self.path.name + ".new")
        body = MAGIC + _record(b"S", dict(self._data))
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.write(fd, body) != len(body):     # disk full: never rename a cut snapshot over the image
                raise OSError(errno.ENOSPC, f"could not write {tmp}")
            if self.sync:
                os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        self._size = len(body)
        os.lseek(fd, self._size, os.SEEK_SET)

    def snapshot(self) -> dict[str, bytes]:
        """A copy of the committed state (tests and the tearing checker read it)."""
        return dict(self._data)
