"""The card image store: transactions, persistence, compaction, locking, corruption and tearing."""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PIN

from semper.card_applet_sim import store as store_mod
from semper.card_applet_sim.keys import KeyFolder
from semper.card_applet_sim.os import CardOS
from semper.card_applet_sim.store import HEADER_LEN, MAGIC, CardImageError, Store
from semper.client.payment import card_purse
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.transport import InProcessConnection

REPO = Path(__file__).resolve().parents[1]
INITIAL = {"a": b"alpha", "b": b"beta", "gone": b"to be deleted", "n": (7).to_bytes(8, "big", signed=True)}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return tmp_path / "card.img"


def _keys() -> KeyFolder:
    """The session's folder of sealing keys (conftest sets SEMPER_CARD_KEYS)."""
    return KeyFolder.default()


def _reopen(path: Path) -> dict[str, bytes]:
    with Store.open(path, sync=False, keys=_keys()) as s:
        return s.snapshot()


def _records(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) of every record in a well-formed image."""
    out, i = [], HEADER_LEN
    while i < len(raw):
        _kind, plen = struct.unpack_from(">cI", raw, i)
        end = i + 5 + plen + 16
        out.append((i, end))
        i = end
    assert i == len(raw)
    return out


# ---- transactions ------------------------------------------------------------------------------
def test_create_then_read(image: Path) -> None:
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        assert s.snapshot() == INITIAL
        assert s.get("a") == b"alpha"
        assert s.get("missing") is None and s.get("missing", b"d") == b"d"
        assert s.get_int("n") == 7 and s.get_int("missing", -1) == -1
    assert _reopen(image) == INITIAL


def test_create_refuses_an_existing_image(image: Path) -> None:
    Store.create(image, INITIAL, sync=False, keys=_keys()).close()
    before = image.read_bytes()
    with pytest.raises(CardImageError, match="already exists"):
        Store.create(image, {"x": b"y"}, sync=False, keys=_keys())
    assert image.read_bytes() == before


def test_open_missing_image_says_so(image: Path) -> None:
    with pytest.raises(CardImageError, match="no card image"):
        Store.open(image, keys=_keys())


def test_commit_and_abort(image: Path) -> None:
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        s.begin()
        s.put("a", b"A")
        s.put("c", b"C")
        s.delete("gone")
        # the transaction sees its own writes, the committed state does not
        assert s.get("a") == b"A" and s.get("c") == b"C" and s.get("gone") is None
        assert list(s.keys()) == ["a", "b", "c", "n"]
        assert s.snapshot() == INITIAL
        s.commit()
        assert not s.in_transaction
        committed = {"a": b"A", "b": b"beta", "c": b"C", "n": INITIAL["n"]}
        assert s.snapshot() == committed

        s.begin()
        s.put("a", b"never")
        s.delete("b")
        s.put_int("n", -5)
        assert s.get_int("n") == -5
        s.abort()
        assert s.snapshot() == committed
        assert s.get("a") == b"A" and s.get("b") == b"beta"
    assert _reopen(image) == committed


def test_writes_outside_a_transaction_and_nesting_are_refused(image: Path) -> None:
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        with pytest.raises(RuntimeError):
            s.put("a", b"x")
        with pytest.raises(RuntimeError):
            s.delete("a")
        with pytest.raises(RuntimeError):
            s.commit()
        s.begin()
        with pytest.raises(RuntimeError):
            s.begin()
        s.abort()
    assert _reopen(image) == INITIAL


def test_reopen_shows_committed_state_only(image: Path) -> None:
    s = Store.create(image, INITIAL, sync=False, keys=_keys())
    s.begin()
    s.put("a", b"committed")
    s.commit()
    s.begin()
    s.put("b", b"uncommitted")
    s.delete("a")
    s.close()                      # the process goes away with a transaction open
    state = _reopen(image)
    assert state["a"] == b"committed"
    assert state["b"] == b"beta"


def test_checkpoint_commits_and_keeps_a_transaction_open(image: Path) -> None:
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        s.begin()
        s.put("tries", b"\x02")
        s.checkpoint()
        assert s.in_transaction
        assert s.snapshot()["tries"] == b"\x02"
        s.put("a", b"after checkpoint")
        s.abort()
        assert s.get("a") == b"alpha"
    state = _reopen(image)
    assert state["tries"] == b"\x02" and state["a"] == b"alpha"


def test_commit_without_a_change_appends_nothing(image: Path) -> None:
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        size = image.stat().st_size
        s.begin()
        s.put("a", b"alpha")           # same value
        s.commit()
        s.begin()
        s.commit()
        assert image.stat().st_size == size


def test_compaction_keeps_state_and_the_lock(image: Path) -> None:
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        expected = dict(INITIAL)
        for i in range(100):           # ~100 KiB of journal for < 2 KiB of live data
            s.begin()
            s.put("big", bytes([i]) * 1000)
            s.put(f"k{i % 3}", str(i).encode())
            s.commit()
            expected["big"] = bytes([i]) * 1000
            expected[f"k{i % 3}"] = str(i).encode()
        assert s.snapshot() == expected
        assert image.stat().st_size < 64 * 1024, "the journal was never compacted"
        assert not image.with_name(image.name + ".new").exists()
        # after the switch to the new file the image is still locked and still appendable
        with pytest.raises(CardImageError, match="in use"):
            Store.open(image, keys=_keys())
        s.begin()
        s.put("after", b"compaction")
        s.commit()
        expected["after"] = b"compaction"
    assert _reopen(image) == expected


def test_explicit_compaction_leaves_one_snapshot(image: Path) -> None:
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        for i in range(5):
            s.begin()
            s.put_int("n", i)
            s.commit()
        state = s.snapshot()
        s.compact()
        assert len(_records(image.read_bytes())) == 1
        assert s.snapshot() == state
    with Store.open(image, sync=False, keys=_keys()) as s:
        assert s.snapshot() == state
        assert s.report.records == 1


def _short_snapshot_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every write of a compaction snapshot stop half-way, as on a full disk."""
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if bytes(data[:len(MAGIC)]) == MAGIC:
            return real_write(fd, data[: len(data) // 2])
        return real_write(fd, data)
    monkeypatch.setattr(store_mod.os, "write", write)


def test_short_write_during_compaction_keeps_the_old_image(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        s.begin()
        s.put("a", b"committed")
        s.commit()
        state = s.snapshot()
        _short_snapshot_writes(monkeypatch)
        with pytest.raises(OSError):
            s.compact()
        monkeypatch.undo()
        s.begin()
        s.put("b", b"still appendable")
        s.commit()
    assert _reopen(image) == {**state, "b": b"still appendable"}


def test_failed_compaction_does_not_fail_the_commit(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The change is on disk before compaction starts: the commit must not report a failure."""
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        _short_snapshot_writes(monkeypatch)
        for i in range(80):                   # well past the compaction threshold
            s.begin()
            s.put("big", bytes([i]) * 1000)
            s.commit()
        monkeypatch.undo()
        assert image.stat().st_size > 64 * 1024
        expected = s.snapshot()
        s.begin()
        s.put("big", b"small now")
        s.commit()                            # compaction succeeds at a later commit
        assert image.stat().st_size < 4096
        expected["big"] = b"small now"
    assert _reopen(image) == expected


# ---- one user at a time -----------------------------------------------------------------------
def test_second_open_in_process_is_refused(image: Path) -> None:
    s = Store.create(image, INITIAL, sync=False, keys=_keys())
    try:
        with pytest.raises(CardImageError, match="in use by another process"):
            Store.open(image, keys=_keys())
    finally:
        s.close()
    assert _reopen(image) == INITIAL          # closing releases the lock


def test_second_open_from_another_process_is_refused(image: Path) -> None:
    code = ("import sys\nfrom semper.card_applet_sim.store import Store, CardImageError\n"
            "from semper.card_applet_sim.keys import KeyFolder\n"
            "try:\n    Store.open(sys.argv[1], keys=KeyFolder.default())\nexcept CardImageError as e:\n    print(e)\n  "
            "  sys.exit(3)\n")
    with Store.create(image, INITIAL, sync=False, keys=_keys()):
        r = subprocess.run([sys.executable, "-c", code, str(image)], cwd=REPO, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 3, r.stderr
        assert "in use" in r.stdout and str(image) in r.stdout
    r = subprocess.run([sys.executable, "-c", code, str(image)], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_failed_open_leaves_the_holders_compaction_file_alone(image: Path) -> None:
    """A .new beside an image that is in use is the holder's compaction in progress, not a leftover."""
    stale = image.with_name(image.name + ".new")
    with Store.create(image, INITIAL, sync=False, keys=_keys()):
        stale.write_bytes(b"compaction in progress")
        with pytest.raises(CardImageError, match="in use"):
            Store.open(image, keys=_keys())
        assert stale.exists()


def test_leftover_compaction_file_is_dropped_and_the_old_image_rules(image: Path) -> None:
    Store.create(image, INITIAL, sync=False, keys=_keys()).close()
    stale = image.with_name(image.name + ".new")
    stale.write_bytes(MAGIC + b"half a snapshot")
    with Store.open(image, sync=False, keys=_keys()) as s:
        assert s.snapshot() == INITIAL
    assert not stale.exists()


def test_open_racing_a_compaction_is_refused(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Holder A compacts (renames a new file over the path) and exits between B's open and B's lock.

    B then holds a lock on the old, unlinked file: its reads are stale and its writes are lost.
    It must refuse instead.
    """
    a = Store.create(image, INITIAL, sync=False, keys=_keys())
    real_flock = fcntl.flock
    raced: list[int] = []

    def flock(fd: int, op: int) -> None:
        if not raced:
            raced.append(fd)
            a.begin()
            a.put("a", b"written by A before it compacted")
            a.commit()
            a.compact()
            a.close()
        real_flock(fd, op)

    monkeypatch.setattr(store_mod.fcntl, "flock", flock)
    with pytest.raises(CardImageError, match="in use"):
        Store.open(image, sync=False, keys=_keys())
    monkeypatch.undo()
    assert _reopen(image)["a"] == b"written by A before it compacted"


def test_short_write_is_undone(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store.create(image, INITIAL, sync=False, keys=_keys())
    size = image.stat().st_size
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        if fd == s._fd:
            return real_write(fd, data[: len(data) // 2])
        return real_write(fd, data)

    monkeypatch.setattr(store_mod.os, "write", short_write)
    s.begin()
    s.put("a", b"x" * 100)
    with pytest.raises(CardImageError, match="disk full"):
        s.commit()
    monkeypatch.undo()
    assert image.stat().st_size == size
    assert s.snapshot() == INITIAL
    s.begin()
    s.put("b", b"later")
    s.commit()
    s.close()
    assert _reopen(image) == {**INITIAL, "b": b"later"}


# ---- corruption is reported, never repaired silently ------------------------------------------
def test_corrupt_header_is_refused_and_left_alone(image: Path) -> None:
    Store.create(image, INITIAL, sync=False, keys=_keys()).close()
    raw = bytearray(image.read_bytes())
    raw[3] ^= 0xFF
    image.write_bytes(bytes(raw))
    with pytest.raises(CardImageError, match=r"not a semper card image \(bad header\)") as e:
        Store.open(image, keys=_keys())
    assert str(image) in str(e.value)
    assert image.read_bytes() == bytes(raw)


@pytest.mark.parametrize("content", [b"", MAGIC[:-1], b"hello world, not a card"])
def test_not_an_image(image: Path, content: bytes) -> None:
    image.write_bytes(content)
    with pytest.raises(CardImageError, match="bad header"):
        Store.open(image, keys=_keys())
    assert image.read_bytes() == content


def test_header_without_a_complete_snapshot_is_refused(image: Path) -> None:
    Store.create(image, INITIAL, sync=False, keys=_keys()).close()
    raw = image.read_bytes()
    for cut in (HEADER_LEN, HEADER_LEN + 3, len(raw) - 1):
        image.write_bytes(raw[:cut])
        with pytest.raises(CardImageError, match="no complete snapshot"):
            Store.open(image, keys=_keys())
        assert image.stat().st_size == cut, "a failed open must not change the file"


def _image_with_commits(image: Path) -> tuple[bytes, dict[str, bytes], dict[str, bytes]]:
    """An image with a snapshot and three commits; returns (bytes, state before last, state after)."""
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        for i, (k, v) in enumerate([("a", b"one"), ("c", b"two"), ("a", b"three")]):
            if i == 2:
                before = s.snapshot()
            s.begin()
            s.put(k, v)
            s.put_int("n", i)
            if i == 1:
                s.delete("gone")
            s.commit()
        after = s.snapshot()
    return image.read_bytes(), before, after


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_damage_before_the_last_record_is_an_error(image: Path, mask: int) -> None:
    """Every single damaged byte of every record but the last, header included, fails the open."""
    raw, _before, _after = _image_with_commits(image)
    records = _records(raw)
    assert len(records) == 4
    for start, end in records[:-1]:
        for pos in range(start, end):
            bad = bytearray(raw)
            bad[pos] ^= mask
            image.write_bytes(bytes(bad))
            with pytest.raises(CardImageError, match="corrupt at byte|no complete snapshot"):
                Store.open(image, sync=False, keys=_keys())
            assert image.read_bytes() == bytes(bad), f"damage at byte {pos} changed the file"


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_damage_in_the_last_record_is_refused_too(image: Path, mask: int) -> None:
    """A complete last record that does not authenticate was edited or forged, not torn: refused."""
    raw, _before, _after = _image_with_commits(image)
    start, end = _records(raw)[-1]
    for pos in range(start + 5, end):               # nonce, ciphertext and tag
        bad = bytearray(raw)
        bad[pos] ^= mask
        image.write_bytes(bytes(bad))
        with pytest.raises(CardImageError, match="damaged card: corrupt at byte"):
            Store.open(image, sync=False, keys=_keys())
        assert image.read_bytes() == bytes(bad), f"damage at byte {pos} changed the file"


def test_a_last_block_that_never_reached_the_disk_is_a_tear(image: Path) -> None:
    """Power loss can leave the file's new length with zeros in place of the last write: a tear."""
    raw, before, _after = _image_with_commits(image)
    start, end = _records(raw)[-1]
    image.write_bytes(raw[:end - 16] + bytes(16))
    with Store.open(image, sync=False, keys=_keys()) as s:
        assert s.snapshot() == before
        assert s.report.torn_bytes == end - start and image.stat().st_size == start


def test_appended_unsealed_or_foreign_records_are_refused(image: Path, tmp_path: Path) -> None:
    """A record from a diverged copy of the same card, or a dropped middle record, breaks the chain."""
    raw, _before, _after = _image_with_commits(image)
    records = _records(raw)
    copy = tmp_path / "copy.img"
    copy.write_bytes(raw)
    with Store.open(copy, sync=False, keys=_keys()) as s:      # the copy diverges: same card, same key
        s.begin()
        s.put("a", b"spent twice")
        s.commit()
    foreign = copy.read_bytes()[len(raw):]          # chains to the last record of `raw`, nothing else
    assert _reopen(copy)["a"] == b"spent twice"
    cases = {"a record spliced in from a copy": raw[:records[-1][0]] + foreign,
             "a middle record dropped": raw[:records[1][0]] + raw[records[2][0]:],
             "two records swapped": raw[:records[1][0]] + raw[records[2][0]:records[2][1]]
             + raw[records[1][0]:records[1][1]] + raw[records[3][0]:]}
    for name, content in cases.items():
        image.write_bytes(content)
        with pytest.raises(CardImageError, match="damaged card"):
            Store.open(image, sync=False, keys=_keys())
        assert image.read_bytes() == content, name


def test_an_image_opens_only_with_its_own_key(image: Path, tmp_path: Path) -> None:
    Store.create(image, INITIAL, sync=False, keys=_keys()).close()
    image_id = image.read_bytes()[len(MAGIC):HEADER_LEN]
    elsewhere = KeyFolder(tmp_path / "other-keys")
    with pytest.raises(CardImageError, match=r"sealing key .*\.key is not in .*SEMPER_CARD_KEYS"):
        Store.open(image, sync=False, keys=elsewhere)
    # a key file with the right name but another key: the first record does not authenticate
    elsewhere.folder.mkdir()
    elsewhere.path(image_id).write_bytes(os.urandom(32))
    elsewhere.path(image_id).chmod(0o600)
    with pytest.raises(CardImageError, match="not the key it was made with"):
        Store.open(image, sync=False, keys=elsewhere)
    # a key file others can read is refused (as ssh refuses such a private key)
    mine = _keys().path(image_id)
    mine.chmod(0o644)
    try:
        with pytest.raises(CardImageError, match="readable by others"):
            Store.open(image, sync=False, keys=_keys())
    finally:
        mine.chmod(0o600)
    assert _reopen(image) == INITIAL


def test_key_files_are_0600_in_a_0700_folder(tmp_path: Path) -> None:
    keys = KeyFolder(tmp_path / "new-keys")
    old = os.umask(0o022)
    try:
        Store.create(tmp_path / "k.img", INITIAL, sync=False, keys=keys).close()
    finally:
        os.umask(old)
    files = list(keys.folder.iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    assert keys.folder.stat().st_mode & 0o777 == 0o700


def test_a_copy_readable_by_others_is_made_private_on_open(image: Path, tmp_path: Path) -> None:
    Store.create(image, INITIAL, sync=False, keys=_keys()).close()
    copy = tmp_path / "copied.img"
    copy.write_bytes(image.read_bytes())
    copy.chmod(0o644)
    with Store.open(copy, sync=False, keys=_keys()) as s:
        assert s.report.mode_tightened and s.snapshot() == INITIAL
    assert copy.stat().st_mode & 0o777 == 0o600


def test_an_unsealed_image_of_format_v1_is_refused(image: Path) -> None:
    from semper.card_applet_sim.store import MAGIC_V1
    image.write_bytes(MAGIC_V1 + b"S\x00\x00\x00\x00" + bytes(16))
    with pytest.raises(CardImageError, match="did not seal card images.*semper card new"):
        Store.open(image, sync=False, keys=_keys())


def test_no_value_is_readable_in_the_image_bytes(image: Path) -> None:
    secret = b"a value no one may read from the file"
    with Store.create(image, {"k": secret}, sync=False, keys=_keys()) as s:
        s.begin()
        s.put("k2", secret[::-1])
        s.commit()
        s.compact()
        s.begin()
        s.put("k3", secret + b"!")
        s.commit()
    raw = image.read_bytes()
    for needle in (secret, secret[::-1], b"k2", b"k3"):
        assert needle not in raw


# ---- tearing: every truncation point of a commit -----------------------------------------------
def test_every_truncation_of_a_commit_gives_old_or_new_state(tmp_path: Path) -> None:
    image = tmp_path / "card.img"
    with Store.create(image, INITIAL, sync=False, keys=_keys()) as s:
        s.begin()
        s.put("warmup", b"1")
        s.commit()
        old = s.snapshot()
        old_bytes = image.read_bytes()
        s.begin()                                  # a multi-key transaction: new, overwrite, delete, int
        s.put("a", b"ALPHA" * 20)
        s.put("c", b"new key")
        s.delete("gone")
        s.put_int("n", 123456)
        s.put("log/3", bytes(range(256)))
        s.commit()
        new = s.snapshot()
    new_bytes = image.read_bytes()
    assert new_bytes.startswith(old_bytes) and old != new
    torn = tmp_path / "torn.img"
    for cut in range(len(old_bytes), len(new_bytes) + 1):
        torn.write_bytes(new_bytes[:cut])
        with Store.open(torn, sync=False, keys=_keys()) as s:
            state = s.snapshot()
            if cut == len(new_bytes):
                assert state == new
                assert s.report.torn_bytes == 0
            else:
                assert state == old, f"truncated at {cut}: neither the old nor the new state"
                assert s.report.torn_bytes == cut - len(old_bytes)
                assert torn.stat().st_size == len(old_bytes), "the torn tail was not cut off"
            s.begin()
            s.put("after", cut.to_bytes(4, "big"))
            s.commit()
        assert _reopen(torn) == {**state, "after": cut.to_bytes(4, "big")}


def test_every_truncation_of_a_debit_commit_on_the_card(tmp_path: Path, fresh_images,
                                                        scheme) -> None:
    """The same on a real card: a DEBIT changes balance, counter and log in one record."""
    buyer, psam_image = fresh_images(tmp_path / "cards")
    card, psam_card = CardOS.open(buyer, sync=False), CardOS.open(psam_image, sync=False)
    purse, psam = PurseSession(InProcessConnection(card)), PsamSession(InProcessConnection(psam_card))
    card_purse.load(purse, scheme, 1000, PIN)
    old, old_bytes = card.store.snapshot(), buyer.read_bytes()
    card_purse.purchase(purse, psam, 125, scheme.root_cert)
    new, new_bytes = card.store.snapshot(), buyer.read_bytes()
    card.close()
    assert new_bytes.startswith(old_bytes)
    assert {k for k in new if old.get(k) != new[k]} >= {"purse/balance", "purse/debit_ctr", "purse/log_count"}
    torn = tmp_path / "torn.card"
    for cut in range(len(old_bytes), len(new_bytes) + 1):
        torn.write_bytes(new_bytes[:cut])
        c = CardOS.open(torn, sync=False)
        try:
            state = c.store.snapshot()
            assert state == (new if cut == len(new_bytes) else old), f"truncated at {cut}"
            # the card works on: one more purchase through a real PSAM request
            p = PurseSession(InProcessConnection(c))
            card_purse.purchase(p, psam, 1, scheme.root_cert)
            assert p.info().balance == int.from_bytes(state["purse/balance"], "big", signed=True) - 1
        finally:
            c.close()
    psam_card.close()


def test_live_size_tracks_the_committed_state(tmp_path):
    """The running total that decides compaction equals a fresh count after puts, overwrites, deletes."""
    from semper.card_applet_sim.store import Store
    s = Store.create(tmp_path / "img", {"a": b"1"}, sync=False, keys=_keys())
    for i in range(300):
        s.begin()
        s.put(f"k{i % 17}", bytes(i % 50))
        if i % 5 == 0:
            s.delete(f"k{(i + 3) % 17}")
        s.commit()
    fresh = sum(len(k) + len(v) + 6 for k, v in s.snapshot().items())
    assert s.live_size() == fresh
    s.close()
    assert Store.open(tmp_path / "img", sync=False, keys=_keys()).live_size() == fresh
