"""The evidence archive: hash chain, checkpoints signed on the card, tampering of each kind, bundles, CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cms import PIN, Pki, card, card_b, openssl_cms_verify, pki, signer

from semper.client.cli import main as semper
from semper.client.support import archive, cms
from semper.client.support.archive import (
    GENESIS,
    Archive,
    ArchiveError,
    BadBundle,
    NoArchive,
    UnknownDeal,
    entry_hash,
    schema_sql,
    statement_signer,
    verify_bundle,
)
from semper.client.support.scheme import Scheme
from semper.client.support.trust import TrustStore
from semper.hardware.piv import PivSession, PivSigner

DEALS = ["deal-A", "deal-B", "deal-A", "deal-C", "deal-A", "deal-B"]       # entries 1..6


@pytest.fixture
def sign(signer: PivSigner):
    return statement_signer(signer, PIN)


@pytest.fixture
def db(tmp_path: Path, signer: PivSigner, sign) -> Path:
    """Six entries (statements signed on the card for deal-A, raw notes otherwise), checkpoint at 6."""
    path = tmp_path / "evidence.sqlite3"
    with Archive.open(path, create=True, sign=sign) as archive:
        for i, deal in enumerate(DEALS, 1):
            if deal == "deal-A":
                archive.append_statement(deal, cms.sign_statement(signer, {"type": "order" if i == 1 else "receipt",
                                                                           "deal": deal, "n": i}, pin=PIN))
            else:
                archive.append(deal, "note", f"note {i} for {deal}".encode())
        archive.checkpoint()
    return path


def sql(path: Path, *statements: tuple[str, tuple]) -> None:
    """Tamper with the file directly, as someone with write access to it would."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN")
    for query, params in statements:
        con.execute(query, params)
    con.execute("COMMIT")
    con.close()


def row(path: Path, index: int) -> tuple:
    con = sqlite3.connect(path)
    r = con.execute("SELECT entry_index, prev_hash, deal_id, kind, created_at, content, entry_hash FROM archive_entry "
                    "WHERE entry_index = ?", (index,)).fetchone()
    con.close()
    return r


def problems(path: Path, trust: TrustStore | None = None) -> list[tuple[int | None, str]]:
    with Archive.open(path) as archive:
        report = archive.verify(trust)
    print(*report.problems, sep="\n")
    return [(p.index, p.kind) for p in report.problems]


# ---- the chain -------------------------------------------------------------------------------------
def test_clean_archive_verifies_and_follows_the_documented_formula(db: Path, pki: Pki) -> None:
    with Archive.open(db) as archive:
        report = archive.verify(TrustStore([pki.root], [pki.crl()]))
        entries = archive.entries()
    assert report.ok and report.entries == 6 and report.checkpoints == 1 and report.warnings == []
    assert report.checkpoint_signers == [entries[0] and cms.parse_statement(entries[0].content).signer_cert
                                         .subject.rfc4514_string()]
    prev = GENESIS
    for e in entries:                       # recompute with nothing but hashlib, from docs/evidence.md
        lp = lambda b: len(b).to_bytes(8, "big") + b
        deal = hashlib.sha256(b"semper-archive/deal\x00" + e.deal_id.encode()).digest()
        body = hashlib.sha256(b"semper-archive/body\x00" + lp(e.kind.encode()) + lp(e.created_at.encode())
                              + lp(e.content)).digest()
        h = hashlib.sha256(b"semper-archive/entry\x00" + e.index.to_bytes(8, "big") + prev + deal + body).digest()
        assert e.prev_hash == prev and e.entry_hash == h
        prev = h
    assert [e.kind for e in entries[:3]] == ["statement:order", "note", "statement:receipt"]


def test_edited_content_is_found(db: Path) -> None:
    sql(db, ("UPDATE archive_entry SET content = ? WHERE entry_index = 4", (b"note 4 for deal-C, changed",)))
    assert problems(db) == [(4, "edited")]


def test_edited_deal_kind_or_time_is_found(db: Path) -> None:
    sql(db, ("UPDATE archive_entry SET deal_id = 'deal-Z' WHERE entry_index = 2", ()),
        ("UPDATE archive_entry SET created_at = '2001-01-01T00:00:00.000000Z' WHERE entry_index = 5", ()))
    assert problems(db) == [(2, "edited"), (5, "edited")]


def test_edited_entry_with_recomputed_hash_is_found(db: Path) -> None:
    r = row(db, 4)
    new = b"rewritten note"
    h = entry_hash(4, bytes.fromhex(r[1]), r[2], r[3], r[4], new)
    sql(db, ("UPDATE archive_entry SET content = ?, entry_hash = ? WHERE entry_index = 4", (new, h.hex())))
    assert problems(db) == [(4, "replaced")]


def test_deleted_entry_is_found(db: Path) -> None:
    sql(db, ("DELETE FROM archive_entry WHERE entry_index = 3", ()))
    assert problems(db) == [(3, "deleted")]


def test_deleted_entry_hidden_by_renumbering_is_found(db: Path) -> None:
    sql(db, ("DELETE FROM archive_entry WHERE entry_index = 3", ()),
        *[("UPDATE archive_entry SET entry_index = ? WHERE entry_index = ?", (i - 1, i)) for i in (4, 5, 6)])
    with Archive.open(db) as archive:
        report = archive.verify()
    print(*report.problems, sep="\n")
    assert [(p.index, p.kind) for p in report.problems] == [(3, "deleted")]
    assert "renumbered to hide the gap" in report.problems[0].message


def test_inserted_entry_is_found(db: Path) -> None:
    """A forger inserts a well-formed entry at 3, chains it to 2, and renumbers the rest."""
    prev = bytes.fromhex(row(db, 2)[6])
    created = "2026-01-01T00:00:00.000000Z"
    forged = entry_hash(3, prev, "deal-A", "note", created, b"I never ordered")
    sql(db, *[("UPDATE archive_entry SET entry_index = ? WHERE entry_index = ?", (i + 1, i)) for i in (6, 5, 4, 3)],
        ("INSERT INTO archive_entry VALUES (?, ?, ?, ?, ?, ?, ?)",
         (3, prev.hex(), "deal-A", "note", created, b"I never ordered", forged.hex())))
    found = problems(db)
    assert (3, "inserted") in found
    assert not [p for p in found if p[1] in ("edited", "deleted", "reordered")]


def test_reordered_entries_are_found(db: Path) -> None:
    sql(db, ("UPDATE archive_entry SET entry_index = -1 WHERE entry_index = 3", ()),
        ("UPDATE archive_entry SET entry_index = 3 WHERE entry_index = 4", ()),
        ("UPDATE archive_entry SET entry_index = 4 WHERE entry_index = -1", ()))
    assert problems(db) == [(3, "reordered"), (4, "reordered")]


def test_rewritten_chain_is_caught_by_the_checkpoint(db: Path) -> None:
    """Edit entry 2 and recompute every hash after it: only the signed checkpoint can tell."""
    rows = [row(db, i) for i in range(1, 7)]
    prev = bytes.fromhex(rows[0][6])
    updates = []
    for r in rows[1:]:
        content = b"forged" if r[0] == 2 else r[5]
        h = entry_hash(r[0], prev, r[2], r[3], r[4], content)
        updates.append(("UPDATE archive_entry SET prev_hash = ?, content = ?, entry_hash = ? WHERE entry_index = ?",
                        (prev.hex(), content, h.hex(), r[0])))
        prev = h
    sql(db, *updates)
    with Archive.open(db) as archive:
        report = archive.verify()
    assert [(p.index, p.kind) for p in report.problems] == [(6, "rewritten")]
    assert "entries 1-6 were rewritten" in report.problems[0].message


def test_deleted_tail_under_a_checkpoint_is_found(db: Path) -> None:
    sql(db, ("DELETE FROM archive_entry WHERE entry_index >= 5", ()))
    assert problems(db) == [(6, "deleted")]


def test_forged_checkpoints_are_found(db: Path, card_b: PivSession, pki: Pki) -> None:
    with Archive.open(db) as archive:
        cp = archive.last_checkpoint()
        head = archive.entries()[-1].entry_hash.hex()
    assert cp is not None
    # 1. a damaged signature
    sig_pos = len(cp.statement) - 10
    damaged = cp.statement[:sig_pos] + bytes([cp.statement[sig_pos] ^ 0x01]) + cp.statement[sig_pos + 1:]
    sql(db, ("UPDATE archive_checkpoint SET statement = ? WHERE entry_index = 6", (damaged,)))
    assert problems(db) == [(6, "checkpoint")]
    # 2. a well-signed checkpoint by somebody else (another card of the same CA)
    other = cms.sign_statement(PivSigner(card_b), {"type": "checkpoint", "archive": json.loads(
        cms.parse_statement(cp.statement).content)["archive"], "index": 6, "head": head}, pin=PIN)
    sql(db, ("UPDATE archive_checkpoint SET statement = ? WHERE entry_index = 6", (other,)))
    with Archive.open(db) as archive:
        report = archive.verify(TrustStore([pki.root]))
    assert [(p.index, p.kind) for p in report.problems] == [(6, "checkpoint")]
    assert "not by the archive's owner" in report.problems[0].message
    # 3. the genuine statement, but the row's head changed
    sql(db, ("UPDATE archive_checkpoint SET statement = ?, head = ? WHERE entry_index = 6", (cp.statement, "00" * 32)))
    with Archive.open(db) as archive:
        report = archive.verify()
    assert [(p.index, p.kind) for p in report.problems] == [(6, "checkpoint")]
    assert "the checkpoint row was altered" in report.problems[0].message


def test_checkpoint_signer_from_an_untrusted_ca_is_reported(db: Path, pki: Pki, other_scheme: Scheme) -> None:
    other_root = other_scheme.root_cert
    with Archive.open(db) as archive:
        report = archive.verify(TrustStore([other_root]))
    assert [(p.index, p.kind) for p in report.problems] == [(6, "checkpoint")]
    assert "does not chain to a trusted root" in report.problems[0].message


def test_automatic_checkpoints_and_uncovered_tail(tmp_path: Path, sign) -> None:
    path = tmp_path / "a.sqlite3"
    with Archive.open(path, create=True, checkpoint_every=3, sign=sign) as archive:
        for i in range(7):
            archive.append("d", "note", b"%d" % i)
        assert [c.index for c in archive.checkpoints()] == [3, 6]
    with Archive.open(path) as archive:                       # reopened without a signer: the due one waits
        assert archive.checkpoint_every == 3
        archive.append("d", "note", b"7")
        archive.append("d", "note", b"8")
        assert archive.checkpoint_due()
        report = archive.verify()
        assert report.ok and report.warnings[0].startswith("entries 7-9 not yet covered")
        with pytest.raises(ArchiveError, match="no signer for checkpoints"):
            archive.checkpoint()


def test_a_new_key_cannot_take_over_the_archive(db: Path, card_b: PivSession) -> None:
    with Archive.open(db, sign=statement_signer(PivSigner(card_b), PIN)) as archive:
        archive.append("deal-D", "note", b"x")
        with pytest.raises(ArchiveError, match="is not its owner"):
            archive.checkpoint()


def test_concurrent_appenders_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    Archive.open(path, create=True).close()
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with Archive.open(path) as archive:
                for i in range(40):
                    archive.append(name, "note", f"{name} {i}".encode())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    with Archive.open(path) as archive:
        report = archive.verify()
    assert report.ok and report.entries == 120


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(NoArchive, match="no evidence archive at"):
        Archive.open(tmp_path / "missing.sqlite3")
    assert not (tmp_path / "missing.sqlite3").exists()
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(NoArchive, match="not a semper evidence archive"):
        Archive.open(junk)
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x INT)").connection.close()
    with pytest.raises(NoArchive, match="no archive tables"):
        Archive.open(other)
    with Archive.open(tmp_path / "new.sqlite3", create=True) as archive:
        with pytest.raises(ArchiveError, match="deal id"):
            archive.append("", "note", b"x")
        with pytest.raises(ArchiveError, match="empty"):
            archive.checkpoint(lambda s: b"")


def test_schema_is_plain_sql_for_postgresql() -> None:
    pg = schema_sql("postgresql")
    assert "BYTEA" in pg and "BLOB" not in pg
    source = Path(sys.modules[Archive.__module__].__file__ or "").read_text().upper()
    for sqlite_only in ("AUTOINCREMENT", "ROWID", "WITHOUT ROWID", "PRAGMA", "OR REPLACE", "OR IGNORE",
                        "BEGIN IMMEDIATE"):
        assert sqlite_only not in pg.upper() and sqlite_only not in source


# ---- bundles ---------------------------------------------------------------------------------------
@pytest.fixture
def bundle(db: Path, tmp_path: Path, pki: Pki) -> Path:
    with Archive.open(db) as archive:
        return archive.export("deal-A", tmp_path / "deal-A.zip", crls=[pki.crl()])


def test_bundle_verifies_offline(bundle: Path, pki: Pki, tmp_path: Path) -> None:
    report = verify_bundle(bundle, TrustStore([pki.root]))
    assert report.ok, report.problems
    assert [e.index for e in report.entries] == [1, 3, 5] and report.checkpoint_index == 6
    assert all(e.statement is not None and e.statement.revocation.checked for e in report.entries)
    assert report.entries[0].statement.body["type"] == "order"
    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
        assert {"manifest.json", "checkpoint.der", "entries/00000001.der", "crls/001.pem", "certs/001.pem"} <= names
        assert b"deal-B" not in z.read("manifest.json")                      # other deals stay private
        assert len(manifest["chain"]) == 6
        # every statement and the checkpoint also pass openssl
        for name in ("checkpoint.der", "entries/00000003.der"):
            assert openssl_cms_verify(z.read(name), pki.root_pem, tmp_path).returncode == 0


def _rewrite(bundle: Path, out: Path, change) -> Path:
    with zipfile.ZipFile(bundle) as z:
        files = {n: z.read(n) for n in z.namelist()}
    change(files)
    with zipfile.ZipFile(out, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    return out


def _manifest(change):
    def apply(files: dict[str, bytes]) -> None:
        m = json.loads(files["manifest.json"])
        change(m)
        files["manifest.json"] = json.dumps(m).encode()
    return apply


@pytest.mark.parametrize("change,expected", [
    (lambda f: f.__setitem__("entries/00000003.der", f["entries/00000003.der"].replace(b'"n":3', b'"n":7'))
     , [(3, "edited"), (3, "statement")]),
    (_manifest(lambda m: m["entries"].pop(1)), [(3, "deleted")]),
    (_manifest(lambda m: m["entries"].__setitem__(0, {**m["entries"][0], "created_at": "2001-01-01T00:00:00.000000Z"})),
     [(1, "edited")]),
    (_manifest(lambda m: m["chain"].__setitem__(1, m["chain"][3])), [(6, "rewritten")]),
    (lambda f: f.__setitem__("checkpoint.der", f["entries/00000001.der"]), [(6, "checkpoint")]),
])
def test_tampered_bundle_is_refused(bundle: Path, pki: Pki, tmp_path: Path, change,
                                    expected) -> None:
    bad = _rewrite(bundle, tmp_path / "bad.zip", change)
    report = verify_bundle(bad, TrustStore([pki.root]))
    assert [(p.index, p.kind) for p in report.problems] == expected


def test_bundle_with_revoked_signer_or_wrong_root(db: Path, pki: Pki, tmp_path: Path, signer: PivSigner,
                                                 other_scheme: Scheme) -> None:
    from cryptography import x509
    serial = x509.load_der_x509_certificate(signer.certificate()).serial_number
    crl = pki.crl([(serial, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))])
    with Archive.open(db) as archive:
        path = archive.export("deal-A", tmp_path / "revoked.zip", crls=[crl])
    report = verify_bundle(path, TrustStore([pki.root]))
    assert {p.kind for p in report.problems} == {"checkpoint", "statement"}
    assert all("revoked" in p.message for p in report.problems)
    report = verify_bundle(path, TrustStore([other_scheme.root_cert]))
    assert all("does not chain" in p.message for p in report.problems) and len(report.problems) == 4
    with pytest.raises(BadBundle, match="not an evidence bundle"):
        verify_bundle(db, TrustStore([pki.root]))


def test_export_errors(db: Path, tmp_path: Path) -> None:
    with Archive.open(db) as archive:
        with pytest.raises(UnknownDeal, match="deal-A, deal-B, deal-C"):
            archive.export("deal-X", tmp_path / "x.zip")
        archive.append("deal-X", "note", b"after the checkpoint")
        with pytest.raises(ArchiveError, match="no signed checkpoint covers entry 7"):
            archive.export("deal-X", tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


# ---- the command line --------------------------------------------------------------------------------
def test_cli_verify_export_and_bundle(db: Path, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert semper(["archive", "verify", "--db", str(db), "--ca", str(pki.root_pem)]) == 0
    assert "OK: no tampering found" in capsys.readouterr().out
    out = tmp_path / "bundle.zip"
    assert semper(["archive", "export", "deal-A", "--out", str(out), "--db", str(db)]) == 0
    assert semper(["archive", "verify-bundle", str(out), "--ca", str(pki.root_pem)]) == 0
    text = capsys.readouterr().out
    assert "OK: the bundle checks out" in text and "entry 5: statement:receipt" in text
    assert semper(["archive", "list", "--db", str(db)]) == 0
    assert "deal-A\t3 entries" in capsys.readouterr().out
    sql(db, ("DELETE FROM archive_entry WHERE entry_index = 2", ()))
    assert semper(["archive", "verify", "--db", str(db)]) == 1
    assert "TAMPERED [deleted] entry 2: entry 2 is missing (deleted)" in capsys.readouterr().out
    assert semper(["archive", "verify", "--db", str(db), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"][0]["index"] == 2


def test_cli_bad_input(db: Path, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert semper(["archive", "verify", "--db", str(tmp_path / "none.sqlite3")]) == 2
    assert "no evidence archive at" in capsys.readouterr().err
    assert semper(["archive", "export", "nope", "--out", str(tmp_path / "n.zip"), "--db", str(db)]) == 2
    assert "no evidence for deal 'nope'" in capsys.readouterr().err
    assert semper(["archive", "verify-bundle", str(tmp_path / "none.zip"), "--ca", str(pki.root_pem)]) == 2
    assert semper(["archive", "verify-bundle", str(db)]) == 2
    assert "--ca ROOT.pem is required" in capsys.readouterr().err
    assert semper(["archive", "verify-bundle", str(db), "--ca", str(pki.root_pem)]) == 1
    assert "not an evidence bundle" in capsys.readouterr().err


def test_cli_checkpoint_with_the_card_in_a_subprocess(tmp_path: Path, pki: Pki) -> None:
    import shutil
    image = tmp_path / "card"
    shutil.copyfile(pki.card_a, image)
    path = tmp_path / "e.sqlite3"
    with Archive.open(path, create=True) as archive:
        archive.append("deal-1", "note", b"hello")
    run = lambda *a, stdin=None: subprocess.run([sys.executable, "-m", "semper.client.cli", *a], input=stdin,
                                                check=False,
                                                capture_output=True, text=True, timeout=60)
    r = run("archive", "checkpoint", "--db", str(path), "--image", str(image), "--pin-stdin", stdin="123456\n")
    assert r.returncode == 0 and "checkpoint at entry 1" in r.stdout, r.stderr
    r = run("archive", "verify", "--db", str(path), "--ca", str(pki.root_pem))
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    with Archive.open(path) as archive:
        archive.append("deal-1", "note", b"more")
    r = run("archive", "checkpoint", "--db", str(path), "--image", str(image), "--pin-stdin", stdin="000000\n")
    assert r.returncode == 1 and "wrong PIN: 2 tries left" in r.stderr
    with Archive.open(path) as archive:
        assert [c.index for c in archive.checkpoints()] == [1]


def test_archive_owned_by_a_token(tmp_path: Path, pki: Pki, signer: PivSigner) -> None:
    """A seller's archive: checkpoints signed by its SoftHSM2 token, the buyer's card statements inside."""
    from test_cms import hsm_token
    token = hsm_token(tmp_path, pki, label="seller")
    try:
        with Archive.open(tmp_path / "seller.sqlite3", create=True, checkpoint_every=2,
                          sign=statement_signer(token)) as archive:
            archive.append_statement("deal-9", cms.sign_statement(signer, {"type": "order", "deal": "deal-9"}, pin=PIN))
            archive.append_statement("deal-9", cms.sign_statement(token, {"type": "receipt", "deal": "deal-9"}))
            bundle = archive.export("deal-9", tmp_path / "deal-9.zip", crls=[pki.crl()])
            report = archive.verify(TrustStore([pki.root]))
    finally:
        token.close()
    assert report.ok and report.checkpoint_signers == ["CN=semper seller token"]
    result = verify_bundle(bundle, TrustStore([pki.root]))
    assert result.ok and result.checkpoint_signer == "CN=semper seller token"
    assert [e.statement.signer_name for e in result.entries if e.statement][1] == "CN=semper seller token"


# ---- every single tampering, anywhere --------------------------------------------------------------
@pytest.fixture(scope="module")
def base_db(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve entries of three deals, checkpointed at 12, for the property test to copy and damage."""
    from test_cms import open_piv
    folder = tmp_path_factory.mktemp("base-archive")
    path = folder / "base.sqlite3"
    for session in open_piv(pki.card_a, folder):
        with Archive.open(path, create=True, sign=statement_signer(PivSigner(session), PIN)) as archive:
            for i in range(1, 13):
                archive.append(f"deal-{i % 3}", "note", f"entry {i}".encode())
            archive.checkpoint()
    return path


def _tamper(path: Path, op: str, k: int) -> list[tuple[int, str]]:
    """Apply one tampering at entry k; return what verify() must report."""
    r = row(path, k)
    if op == "edit":
        sql(path, ("UPDATE archive_entry SET content = ? WHERE entry_index = ?", (b"changed", k)))
        return [(k, "edited")]
    if op == "rehash":
        h = entry_hash(k, bytes.fromhex(r[1]), r[2], r[3], r[4], b"changed")
        sql(path, ("UPDATE archive_entry SET content = ?, entry_hash = ? WHERE entry_index = ?", (b"changed", h.hex(),
                                                                                                  k)))
        return [(k, "replaced")] if k < 12 else [(12, "rewritten")]
    if op == "delete":
        sql(path, ("DELETE FROM archive_entry WHERE entry_index = ?", (k,)))
        return [(k, "deleted")]
    if op == "swap":
        k = min(k, 11)
        sql(path, ("UPDATE archive_entry SET entry_index = -1 WHERE entry_index = ?", (k,)),
            ("UPDATE archive_entry SET entry_index = ? WHERE entry_index = ?", (k, k + 1)),
            ("UPDATE archive_entry SET entry_index = ? WHERE entry_index = -1", (k + 1,)))
        return [(k, "reordered"), (k + 1, "reordered")]
    assert op == "insert"
    prev = bytes.fromhex(r[1])
    forged = entry_hash(k, prev, "deal-x", "note", r[4], b"forged")
    sql(path, *[("UPDATE archive_entry SET entry_index = ? WHERE entry_index = ?", (i + 1, i)) for i in range(12, k - 1,
                                                                                                              -1)],
        ("INSERT INTO archive_entry VALUES (?, ?, ?, ?, ?, ?, ?)", (k, prev.hex(), "deal-x", "note", r[4], b"forged",
                                                                    forged.hex())))
    return [(k, "inserted")]


@pytest.mark.parametrize("op", ["edit", "rehash", "delete", "swap", "insert"])
@pytest.mark.parametrize("k", [1, 2, 6, 11, 12])
def test_each_tampering_is_named_at_its_index(base_db: Path, tmp_path: Path, op: str, k: int) -> None:
    import shutil
    path = tmp_path / "copy.sqlite3"
    shutil.copyfile(base_db, path)
    expected = _tamper(path, op, k)
    assert problems(path) == expected


def test_cli_checkpoint_with_a_token(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from test_cms import hsm_token
    hsm_token(tmp_path, pki, label="owner").close()
    path = tmp_path / "t.sqlite3"
    with Archive.open(path, create=True) as archive:
        archive.append("deal-1", "note", b"hello")
    args = ["archive", "checkpoint", "--db", str(path), "--token", "owner", "--dir", str(tmp_path / "softhsm-owner"),
            "--pin-stdin"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("9999\n"))
    assert semper(args) == 1 and "wrong PIN" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("4321\n"))
    assert semper(args) == 0 and "checkpoint at entry 1" in capsys.readouterr().out
    with Archive.open(path) as archive:
        assert archive.verify(TrustStore([pki.root])).checkpoint_signers == ["CN=semper seller token"]


def test_failed_automatic_checkpoint_does_not_lose_or_repeat_the_entry(tmp_path: Path, signer: PivSigner,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with Archive.open(tmp_path / "f.sqlite3", create=True, checkpoint_every=1,
                      sign=statement_signer(signer, b"000000")) as archive:            # wrong PIN
        entry = archive.append("d", "note", b"kept")
        assert entry.index == 1 and archive.checkpoints() == [] and archive.checkpoint_due()
        assert "automatic checkpoint failed: wrong PIN" in caplog.text
        archive.sign = statement_signer(signer, PIN)
        archive.append("d", "note", b"next")
        assert [c.index for c in archive.checkpoints()] == [2]
        assert archive.verify().ok


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31), timezones=st.timezones()))
def test_entry_times_are_written_as_before(when: dt.datetime) -> None:
    """The archive writes an entry's time by isoformat() where it can (cheaper); the characters must stay
    those of the strftime form every existing entry's hash covers."""
    assert archive._rfc3339(when) == when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
