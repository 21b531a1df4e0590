"""The card's persistent memory: one sealed image file per card, with Java Card-style transactions.

Why a journal: a card image is a key/value map, and a commit appends one record holding every key
the transaction changed, written with a single ``write`` call. When the process dies mid-write (a
*tear*), the last record is incomplete, is recognised as torn and dropped on the next open: the card
comes back with the state before that transaction, never a mix. The journal is compacted into a
fresh snapshot file that replaces the old one atomically (rename, then an fsync of the folder so
that the rename itself survives power loss).

Why sealed: the image is the simulated card's secure element. Every record is encrypted and
authenticated (AES-256-GCM) under a per-card key that is not in the file (``keys.py``), and each
record's authentication covers the tag of the record before it, so a record cannot be edited,
added, dropped from the middle, reordered or spliced in from another copy of the card. Anything
that does not authenticate is a damaged card: it is reported, never repaired or skipped silently.
The file is created 0600 and written only through descriptors opened with that mode.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keys import ID_LEN, KEY_LEN, KeySource, KeyUnavailable

MAGIC = b"SEMPER-CARD-IMAGE\x00v2\x00"
MAGIC_V1 = b"SEMPER-CARD-IMAGE\x00v1\x00"   # unsealed images of earlier versions: refused
HEADER_LEN = len(MAGIC) + ID_LEN                # magic, then the image id that names the sealing key
_REC_HDR = struct.Struct(">cI")        # kind, body length (nonce + ciphertext)
_NONCE_LEN = 12
_TAG_LEN = 16
_DELETE = 0xFFFFFFFF
_MAX_RECORD = 16 * 1024 * 1024
_KINDS = (b"R", b"S")


class CardImageError(Exception):
    """The card image cannot be used; the message says which file and what to do."""


class _Sealer:
    """Seals and opens records: AES-256-GCM, fresh random nonce, the previous tag bound in.

    A record is ``kind(1) ‖ length(4) ‖ nonce(12) ‖ ciphertext ‖ tag(16)`` with length = 12 +
    len(ciphertext). The associated data is the 16 bytes just before the record (the previous
    record's tag, or the image id for the first record of a file) and the record's own header, so
    each record authenticates its place in the chain.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("a card sealing key is 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, prev: bytes, kind: bytes, payload: bytes) -> bytes:
        header = _REC_HDR.pack(kind, _NONCE_LEN + len(payload))
        nonce = os.urandom(_NONCE_LEN)
        return header + nonce + self._aead.encrypt(nonce, payload, prev + header)

    def open(self, raw: bytes, start: int, end: int) -> bytes | None:
        """The payload of the record at raw[start:end], or None when it does not authenticate."""
        body = start + _REC_HDR.size
        nonce = raw[body:body + _NONCE_LEN]
        try:
            return self._aead.decrypt(nonce, raw[body + _NONCE_LEN:end], raw[start - _TAG_LEN:body])
        except InvalidTag:
            return None


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


def _intact_record_after(raw: bytes, start: int, sealer: _Sealer) -> int | None:
    """Offset of a complete record that authenticates, beginning after ``start``, or None.

    A torn record is always the last thing in the file. When a record that looks torn (it runs
    past the end) is followed by an intact record, its header was damaged instead: that is damage,
    and treating it as a tear would silently drop every commit after it.
    """
    n = len(raw)
    for j in range(start + 1, n - _REC_HDR.size - _NONCE_LEN - _TAG_LEN + 1):
        if raw[j] not in (0x52, 0x53):                  # b"R", b"S"
            continue
        _kind, blen = _REC_HDR.unpack_from(raw, j)
        end = j + _REC_HDR.size + blen + _TAG_LEN
        if _NONCE_LEN <= blen <= _MAX_RECORD and end <= n and sealer.open(raw, j, end) is not None:
            return j
    return None


def _fsync_folder(path: Path) -> None:
    """Make a rename in ``path``'s folder durable: without this, power loss can bring the old file back."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_private_file(path: Path) -> int:
    """Create ``path`` 0600 from its first byte (umask cannot widen it; an existing file is an error)."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


@dataclass
class LoadReport:
    records: int = 0
    torn_bytes: int = 0          # bytes of an interrupted last commit that were dropped
    mode_tightened: bool = False  # the file was readable by others (a copy made with cp): now 0600
    mode_open: bool = False       # read-only: the file is readable by others, and was left so


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
    _image_id: bytes = b""
    read_only: bool = False        # opened to look: nothing is written, not even a repair
    _sealer: _Sealer | None = field(default=None, repr=False)
    _last_tag: bytes = b""         # the 16 bytes the next record chains to
    report: LoadReport = field(default_factory=LoadReport)

    # ----- opening and creating -------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], initial: dict[str, bytes], *, keys: KeySource,
               sync: bool = True) -> Store:
        """Make a new image with a fresh id and sealing key (kept by ``keys``), then open it.

        Creation is always durable (file and folder synced), whatever ``sync`` says for commits.
        """
        p = Path(path)
        if p.exists():
            raise CardImageError(f"{p} already exists; choose another path or delete it first")
        p.parent.mkdir(parents=True, exist_ok=True)
        image_id = os.urandom(ID_LEN)
        try:
            sealer = _Sealer(keys.new_key(image_id))
        except (KeyUnavailable, OSError) as e:
            raise CardImageError(f"cannot make a sealing key for {p}: {e}") from None
        tmp = p.with_name(p.name + ".new")
        tmp.unlink(missing_ok=True)            # p does not exist, so nobody holds it: a leftover
        body = MAGIC + image_id + sealer.seal(image_id, b"S", _encode_changes(dict(initial)))
        fd = _new_private_file(tmp)
        try:
            if os.write(fd, body) != len(body):
                raise CardImageError(f"could not write {tmp} (disk full?); no card was made")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, p)
        _fsync_folder(p)
        return cls.open(p, keys=keys, sync=sync)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, keys: KeySource, sync: bool = True,
             read_only: bool = False) -> Store:
        """Open an image; ``read_only`` for commands that only look (card info, log, cert): the file is
        not changed at all, so an interrupted last write stays for a command that writes to drop, and
        a commit that would change the card fails (the card answers 6F00)."""
        p = Path(path)
        try:
            fd = os.open(p, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CardImageError(f"no card image at {p}; create one with 'semper card new --image {p}'") from None
        except IsADirectoryError:
            raise CardImageError(f"{p} is a folder, not a card image") from None
        in_use = f"card image {p} is in use by another process (is 'semper card serve' running?)"
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
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
        if stale.exists() and not read_only:   # a compaction that died before its rename: the old file rules
            stale.unlink()
        store = cls(p, sync, read_only=read_only)
        store._fd = fd
        try:
            store._load(keys)
        except BaseException:
            os.close(fd)
            store._fd = -1
            raise
        return store

    def _damaged(self, at: int, why: str) -> CardImageError:
        return CardImageError(f"{self.path} is a damaged card: corrupt at byte {at} ({why}); the card refuses to "
                              "start and the file was not changed; restore it from a backup")

    def _load(self, keys: KeySource) -> None:
        raw = b""
        with os.fdopen(os.dup(self._fd), "rb") as f:
            raw = f.read()
        if raw.startswith(MAGIC_V1):
            raise CardImageError(f"{self.path} was made by an earlier semper that did not seal card images; "
                                 "it cannot be trusted as it is: issue a new card with 'semper card new'")
        if not raw.startswith(MAGIC) or len(raw) < HEADER_LEN:
            raise CardImageError(f"{self.path} is not a semper card image (bad header); it was not changed")
        self._image_id = raw[len(MAGIC):HEADER_LEN]
        try:
            sealer = _Sealer(keys.key(self._image_id))
        except KeyUnavailable as e:
            raise CardImageError(f"{self.path}: {e}") from None
        data: dict[str, bytes] = {}
        i = HEADER_LEN
        good_end = i
        records = 0
        n = len(raw)
        while i < n:
            hdr_end = i + _REC_HDR.size
            if hdr_end > n:
                break                                   # torn inside the header
            kind, blen = _REC_HDR.unpack_from(raw, i)
            if kind not in _KINDS or not _NONCE_LEN <= blen <= _MAX_RECORD:
                raise self._damaged(i, "unknown record")
            end = hdr_end + blen + _TAG_LEN
            if end > n:
                if _intact_record_after(raw, i, sealer) is None:
                    break                               # the last write never completed (torn)
                raise self._damaged(i, "a record's length is wrong, and intact records follow it")
            payload = sealer.open(raw, i, end)
            if payload is None:
                if end == n and raw[end - _TAG_LEN:end] == bytes(_TAG_LEN):
                    break                               # its last block never reached the disk (power loss)
                raise self._damaged(i, "a record does not authenticate under the card's key: the file was "
                                       "edited or added to, or this is not the key it was made with")
            try:
                changes = _decode_changes(payload)
            except (ValueError, UnicodeDecodeError, struct.error):
                raise self._damaged(i, "bad record body") from None
            if kind == b"S":
                data = {}
            elif records == 0:
                raise self._damaged(i, "the image does not begin with a snapshot")
            for k, v in changes.items():
                if v is None:
                    data.pop(k, None)
                else:
                    data[k] = v
            records += 1
            i = good_end = end
        if records == 0:
            raise CardImageError(f"{self.path} holds no complete snapshot; restore it from a backup")
        if good_end < n:
            # The tail is a commit that never finished: drop it so the next append starts clean.
            self.report.torn_bytes = n - good_end
            if not self.read_only:
                os.ftruncate(self._fd, good_end)
        st = os.fstat(self._fd)
        if stat.S_IMODE(st.st_mode) & 0o077:
            if self.read_only:
                self.report.mode_open = True
            else:
                os.fchmod(self._fd, 0o600)      # e.g. a copy made with cp: the image is nobody else's business
                self.report.mode_tightened = True
        self.report.records = records
        self._data = data
        self._sealer = sealer
        self._last_tag = raw[good_end - _TAG_LEN:good_end]
        self._live = sum(self._entry_size(k, v) for k, v in data.items())
        self._size = good_end
        os.lseek(self._fd, good_end, os.SEEK_SET)

    @property
    def image_id(self) -> bytes:
        """The random id in the image's header that names its sealing key."""
        return self._image_id

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Store:
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
        if self.read_only:
            raise CardImageError(f"{self.path} is open read-only (a command that only looks); the card's change "
                                 "was not made")
        assert self._sealer is not None, "a store is opened or created with its sealer"
        rec = self._sealer.seal(self._last_tag, b"R", _encode_changes(changes))
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
        self._last_tag = rec[-_TAG_LEN:]

    @staticmethod
    def _entry_size(key: str, value: bytes) -> int:
        return len(key) + len(value) + 6

    def live_size(self) -> int:
        """Bytes the committed state would take as one snapshot (keys, values, framing)."""
        return self._live

    def compact(self) -> None:
        """Rewrite the image as one snapshot; the rename makes the switch atomic, the folder fsync durable."""
        assert self._sealer is not None
        tmp = self.path.with_name(self.path.name + ".new")
        body = MAGIC + self._image_id + self._sealer.seal(self._image_id, b"S", _encode_changes(dict(self._data)))
        tmp.unlink(missing_ok=True)          # we hold the image's lock: a .new here is a leftover
        fd = _new_private_file(tmp)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.write(fd, body) != len(body):     # disk full: never rename a cut snapshot over the image
                raise OSError(errno.ENOSPC, f"could not write {tmp}")
            if self.sync:
                os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = fd
        self._size = len(body)
        self._last_tag = body[-_TAG_LEN:]
        os.lseek(fd, self._size, os.SEEK_SET)
        if self.sync:
            _fsync_folder(self.path)

    def snapshot(self) -> dict[str, bytes]:
        """A copy of the committed state (tests and the tearing checker read it)."""
        return dict(self._data)
