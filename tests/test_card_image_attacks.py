"""Attacks on the card image at rest and on the secrets semper writes (issue 12, items 4, 5 and 6).

The card image is the simulated card's secure element. Whoever can read or write the file must not
be able to set a balance, read a private key or a PIN-guessable verifier, or catch it with a wider
mode than 0600; the shop's TLS key and admin secret must never be on disk readable by others; a PIN
must not travel in argv; and a compaction must survive power loss (the folder is synced after the
rename).
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PIN, PUK

from semper.client.payment import card_purse
from semper.client.support.personalisation import CardProfile, personalise_psam, personalise_purse_card
from semper.hardware import errors as hw_errors
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card

REPO = Path(__file__).resolve().parents[1]


def _scheme_pin_file(tmp_path: Path) -> str:
    """The scheme token's PIN, in a file outside the scheme folder (as an operator keeps it)."""
    pin = tmp_path / "scheme.pin"
    pin.write_text("scheme-pin-2580\n")
    return str(pin)


def _semper(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            umask: int | None = None) -> subprocess.CompletedProcess[str]:
    def pre() -> None:
        if umask is not None:
            os.umask(umask)
    return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env if env is not None else dict(os.environ), input=input,
                          preexec_fn=pre)


def _unkeyed_record(changes: dict[str, bytes]) -> bytes:
    """A record framed as the image format frames one, closed by the unkeyed digest of format v1.

    Anyone can compute that digest: it is what an attacker with write access to the file can make.
    """
    payload = b"".join(struct.pack(">H", len(k.encode())) + k.encode() + struct.pack(">I", len(v)) + v
                       for k, v in changes.items())
    header = struct.pack(">cI", b"R", len(payload))
    return header + payload + hashlib.blake2b(header + payload, digest_size=16, person=b"semper-card").digest()


def _reclose(record: bytes) -> bytes:
    """Recompute the unkeyed digest over an edited record (what an editor of a v1 image would do)."""
    body = record[:-16]
    return body + hashlib.blake2b(body, digest_size=16, person=b"semper-card").digest()


# ---- item 4: records are authenticated ----------------------------------------------------------------
def test_appended_record_setting_a_balance_is_refused_as_a_damaged_card(buyer_image: Path) -> None:
    forged = 1_000_000_00
    with buyer_image.open("ab") as f:
        f.write(_unkeyed_record({"purse/balance": forged.to_bytes(8, "big", signed=True)}))
    r = _semper("card", "info", "--image", str(buyer_image), "--json")
    assert "1000000.00" not in r.stdout, "the card believed a balance appended to its image"
    assert r.returncode == 1 and "damaged" in r.stderr, (r.returncode, r.stdout, r.stderr)
    with pytest.raises(hw_errors.ReaderError, match="damaged"):
        open_card(buyer_image, sync=False)


def test_edited_records_are_refused_as_a_damaged_card(buyer_image: Path, scheme, tmp_path: Path) -> None:
    """An edit anywhere (a record followed by others, or the last one) is refused, never believed."""
    before = buyer_image.read_bytes()
    with open_card(buyer_image, sync=False) as conn:
        card_purse.load(PurseSession(conn), scheme, 1000, PIN)
        middle = buyer_image.read_bytes()
        card_purse.load(PurseSession(conn), scheme, 500, PIN)
    after = buyer_image.read_bytes()
    assert middle.startswith(before) and after.startswith(middle)
    for name, start, end in (("a record followed by others", len(before), len(middle)),
                             ("the last record", len(middle), len(after))):
        # walk the records the operation appended (kind, length, body, 16-byte digest) to its last one
        i = last = start
        while i < end:
            last, i = i, i + 5 + struct.unpack_from(">I", after, i + 1)[0] + 16
        assert i == end
        record = bytearray(after[last:end])
        record[-17] ^= 0x01                          # the last byte before the digest
        edited = tmp_path / f"edited-{start}.card"
        edited.write_bytes(after[:last] + _reclose(bytes(record)) + after[end:])
        try:
            conn = open_card(edited, sync=False)
        except hw_errors.ReaderError as e:
            assert "damaged" in str(e), f"{name}: {e}"
        else:
            conn.close()
            pytest.fail(f"an edit of {name} was accepted")


def test_no_private_key_or_pin_verifier_is_readable_from_the_image(buyer_image: Path, psam_image: Path) -> None:
    for image in (buyer_image, psam_image):
        with open_card(image, sync=False) as conn:
            state = conn.card.store.snapshot()
        secret = {k: v for k, v in state.items()
                  if re.search(r"(^|/)key/(private|[0-9a-f]{2})$|admin_key$", k)
                  or (k.startswith(("card/pin/", "card/puk/")) and len(v) >= 16 and not k.endswith("/salt"))}
        assert any("key" in k for k in secret), sorted(state)
        raw = image.read_bytes()
        for k, v in secret.items():
            assert v not in raw, f"{image.name}: {k} is readable in the image bytes"
        if image == buyer_image:
            salt = state["card/pin/salt"]
            fast = {hashlib.sha256(salt + PIN).digest(), hashlib.sha256(PIN).digest(),
                    hashlib.sha256(PIN + salt).digest()}
            assert not fast & set(state.values()), "the PIN verifier is a fast hash: 10^4 guesses find a PIN"


def test_card_image_is_0600_at_every_step(tmp_path: Path, scheme, monkeypatch: pytest.MonkeyPatch) -> None:
    """Created, written, compacted: the image is never on disk with a wider mode, even under umask 022."""
    seen: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            seen.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_IMODE(st.st_mode)))
        real_fsync(fd)

    def replace(src, dst, **kw):
        seen.append((str(src), stat.S_IMODE(os.stat(src).st_mode)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0o022)
    try:
        buyer, psam = tmp_path / "buyer.card", tmp_path / "psam.card"
        personalise_purse_card(buyer, scheme, CardProfile(PIN, PUK), sync=True)
        personalise_psam(psam, scheme, sync=True)
        with open_card(buyer) as conn:
            card_purse.load(PurseSession(conn), scheme, 1000, PIN)
            conn.card.store.compact()
            card_purse.load(PurseSession(conn), scheme, 1000, PIN)
    finally:
        os.umask(old)
    card_files = [(p, m) for p, m in seen if ".card" in p]
    assert card_files, "no durable write of the image was seen"
    wide = [(p, oct(m)) for p, m in card_files if m & 0o077]
    assert not wide, f"the image was on disk with a wider mode: {wide}"
    for image in (buyer, psam):
        assert stat.S_IMODE(image.stat().st_mode) == 0o600


def test_card_new_makes_its_files_0600_under_umask_022(tmp_path: Path) -> None:
    env = {**os.environ, "SEMPER_HOME": str(tmp_path / "home"), "SEMPER_SCHEME_PIN_FILE": _scheme_pin_file(tmp_path)}
    image = tmp_path / "cli.card"
    r = _semper("card", "new", "--image", str(image), "--pin-stdin", env=env, input="1234\n12345678\n", umask=0o022)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    admin = list((tmp_path / "home" / "cards").glob("*.piv-admin-key"))
    assert admin and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in admin)


# ---- item 5: secrets never briefly readable; no PIN in argv ---------------------------------------------
def _pem_cert(cn: str):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


def test_shop_tls_key_and_admin_secret_are_never_on_disk_with_a_wider_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    from semper.client.commerce.catalogue import demo_catalogue
    from semper.client.servers.shop_home import ShopHome
    src = tmp_path / "src"
    src.mkdir()
    root = _pem_cert("root")
    (src / "cert.pem").write_bytes(root.public_bytes(Encoding.PEM))
    (src / "key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n")
    (src / "bank-root.pem").write_bytes(root.public_bytes(Encoding.PEM))
    wide: list[tuple[str, str]] = []
    real_chmod, real_replace = os.chmod, os.replace

    def check(path: object, when: str) -> None:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            return
        if mode & 0o077:
            wide.append((f"{path} {when}", oct(mode)))

    def chmod(path, mode, **kw):
        check(path, "before chmod")
        return real_chmod(path, mode, **kw)

    def replace(a, b, **kw):
        check(a, "before rename")
        return real_replace(a, b, **kw)

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0o022)
    try:
        home = ShopHome.create(tmp_path / "shop", name="t", token_label="t", softhsm_conf="x", account="a",
                               bank_url="https://127.0.0.1:1", bank_tls_root=src / "bank-root.pem", ca_root=root,
                               purse_root=root, catalogue=demo_catalogue(), tls=(src / "cert.pem", src / "key.pem"))
    finally:
        os.umask(old)
    secrets_ = [home.tls_dir / "key.pem", home.folder / "admin-secret"]
    for p in secrets_:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert not wide, f"a secret was on disk readable by others: {wide}"


def test_card_new_refuses_a_pin_in_argv(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMPER_INSECURE")}
    env["SEMPER_HOME"] = str(tmp_path / "home")
    image = tmp_path / "argv.card"
    r = _semper("card", "new", "--image", str(image), "--pin", "1234", "--puk", "12345678", env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "process list" in r.stderr and "--pin-stdin" in r.stderr
    assert not image.exists()


# ---- item 6: a compaction survives power loss -----------------------------------------------------------
def test_rename_of_the_image_is_followed_by_an_fsync_of_its_folder(tmp_path: Path, scheme, buyer_image: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("fsync-dir", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, **kw):
        real_replace(src, dst, **kw)
        events.append(("replace", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    def synced_after_rename(image: Path) -> bool:
        renames = [i for i, e in enumerate(events) if e == ("replace", str(image))]
        return bool(renames) and ("fsync-dir", str(image.parent)) in events[renames[-1]:]

    with open_card(buyer_image) as conn:                 # sync=True: power-safe
        conn.card.store.compact()
        assert synced_after_rename(buyer_image), f"compaction: no fsync of the folder after the rename: {events}"
    events.clear()
    fresh = tmp_path / "new" / "psam.card"
    personalise_psam(fresh, scheme, sync=True)
    assert synced_after_rename(fresh), f"creation: no fsync of the folder after the rename: {events}"


def test_card_new_takes_an_argv_pin_only_when_told_and_warns(tmp_path: Path) -> None:
    env = {**os.environ, "SEMPER_HOME": str(tmp_path / "home"), "SEMPER_INSECURE_ARGV_PIN": "1",
           "SEMPER_SCHEME_PIN_FILE": _scheme_pin_file(tmp_path)}
    image = tmp_path / "argv.card"
    r = _semper("card", "new", "--image", str(image), "--pin", "1234", "--puk", "12345678", env=env)
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "process list" in r.stderr


# ---- the PIN verifier: slow to guess, quick to repeat -----------------------------------------------------
def test_pin_verifier_is_scrypt_and_only_the_first_verify_of_a_session_pays_for_it(
        scheme, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the production cost: the session's other cards are made cheaper (conftest.TEST_PIN_KDF_LOG2_N)."""
    from semper.card_applet_sim import crypto, pin
    assert (crypto.PIN_KDF_LOG2_N, crypto.PIN_KDF_R, crypto.PIN_KDF_P) == (14, 8, 1)
    monkeypatch.setattr(pin, "PIN_KDF_LOG2_N", crypto.PIN_KDF_LOG2_N)          # the card's own default
    image = tmp_path / "default-cost.card"
    personalise_purse_card(image, scheme, CardProfile(PIN, PUK), sync=False)
    card = open_card(image, sync=False)
    try:
        state = card.card.store.snapshot()
        salt, verifier = state["card/pin/salt"], state["card/pin/verifier"]
        assert verifier[:4] == bytes([1, 14, 8, 1])                  # format 1, scrypt N = 2^14, r = 8, p = 1
        assert verifier[4:] == crypto.pin_verifier(PIN, salt, 14, 8, 1)
        assert state["card/puk/verifier"][:4] == bytes([1, 14, 8, 1])
        calls: list[bytes] = []
        real = pin.pin_verifier

        def counting(value: bytes, *a: object) -> bytes:
            calls.append(value)
            return real(value, *a)

        monkeypatch.setattr(pin, "pin_verifier", counting)
        purse = PurseSession(card)
        purse.verify_pin(PIN)
        purse.verify_pin(PIN)
        assert calls == [PIN], "a repeated VERIFY with the matching PIN should be answered from RAM"
        with pytest.raises(hw_errors.WrongPinError) as e:
            purse.verify_pin(b"9999")
        assert e.value.tries_left == 2 and calls == [PIN, b"9999"]  # a wrong guess always costs a scrypt and a try
        purse.verify_pin(PIN)
        assert purse.info().pin_tries == 3
    finally:
        card.close()
