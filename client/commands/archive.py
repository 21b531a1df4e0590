"""``semper archive ...``: check the evidence archive, checkpoint it, export and check a deal's bundle.

Exit status: 0 when everything checks out, 1 when tampering (or a failed check) is found, 2 on bad
input (no such archive, deal or file).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import UsageError, card_args, emit, json_arg, print_json, read_secret

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..support.archive import Archive, Problem, StatementSigner
    from ..support.trust import TrustStore


def default_db() -> Path:
    from ..support.paths import semper_home
    return semper_home() / "evidence.sqlite3"


def _trust(ca: list[Path] | None, crls: list[Path] | None, *, required: bool) -> TrustStore | None:
    from ..support.trust import EvidenceError, TrustStore
    if not ca:
        if required:
            raise UsageError("--ca ROOT.pem is required: the CA root you trust (never taken from the bundle)")
        return None
    for p in list(ca) + list(crls or []):
        if not p.is_file():
            raise UsageError(f"no such file: {p}")
    try:
        return TrustStore.from_files(list(ca), list(crls or []))
    except EvidenceError as e:
        raise UsageError(str(e)) from None


def _open(db: Path | None, sign: StatementSigner | None = None) -> Archive:
    from ..support.archive import Archive, NoArchive
    path = db or default_db()
    try:
        return Archive.open(path, sign=sign)
    except NoArchive as e:
        raise UsageError(str(e)) from None


def _print_problems(problems: Sequence[Problem], warnings: Sequence[str]) -> None:
    for p in problems:
        where = f"entry {p.index}" if p.index is not None else "archive"
        print(f"TAMPERED [{p.kind}] {where}: {p.message}")
    for w in warnings:
        print(f"note: {w}")


def cmd_verify(args: argparse.Namespace) -> int:
    from cryptography import x509
    trust = _trust(args.ca, args.crl, required=False)
    owner = None
    if args.owner:
        try:
            owner = x509.load_pem_x509_certificate(args.owner.read_bytes())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the owner certificate {args.owner}: {e}") from None
    with _open(args.db) as archive:
        report = archive.verify(trust, owner)
    if args.json:
        print_json(report.as_dict())
    else:
        print(f"archive {report.archive_id}: {report.entries} entries, {report.checkpoints} checkpoints, "
              f"head {report.head[:16]}...")
        if report.checkpoint_signers:
            print("checkpoints signed by: " + "; ".join(report.checkpoint_signers))
        _print_problems(report.problems, report.warnings)
        print("OK: no tampering found" if report.ok else f"FAILED: {len(report.problems)} problem(s) found")
    return 0 if report.ok else 1


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args.db) as archive:
        deals = archive.deals()
        cp = archive.last_checkpoint()
    if args.json:
        print_json({"deals": [{"deal": d, "entries": n} for d, n in deals],
                    "last_checkpoint": cp.index if cp else None})
        return 0
    for deal, n in deals:
        print(f"{deal}\t{n} entr{'y' if n == 1 else 'ies'}")
    print(f"last checkpoint: entry {cp.index}" if cp else "no checkpoint yet")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    """Sign a checkpoint with the owner's card (PIV 9C, PIN before the signature) or token."""
    from ..support.archive import statement_signer
    if args.token is not None:
        from ..signers import token_signer
        with token_signer(args.token, args.module, Path(args.dir) if args.dir is not None else None) as token:
            token.verify_pin(read_secret(f"PIN of token {args.token}", args.pin_stdin))
            with _open(args.db, statement_signer(token)) as archive:
                cp = archive.checkpoint()
    else:
        from ..signers import card_signer
        pin = read_secret("PIN", args.pin_stdin)
        with card_signer(args.reader, args.image) as card, \
                _open(args.db, statement_signer(card.signer, pin)) as archive:
            cp = archive.checkpoint()
    emit(args, {"entry": cp.index, "head": cp.head.hex()}, f"checkpoint at entry {cp.index}, head {cp.head.hex()}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cryptography import x509

    from ..support.archive import UnknownDeal
    crls = []
    for p in args.crl or []:
        try:
            data = p.read_bytes()
            crls.append(x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data))
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the CRL {p}: {e}") from None
    if not args.out.parent.is_dir():
        raise UsageError(f"the folder {args.out.parent} does not exist")
    with _open(args.db) as archive:
        try:
            path = archive.export(args.deal, args.out, crls=crls)
        except UnknownDeal as e:
            raise UsageError(str(e)) from None
    emit(args, {"bundle": str(path), "deal": args.deal}, f"wrote {path}")
    return 0


def cmd_verify_bundle(args: argparse.Namespace) -> int:
    from ..support.archive import BadBundle, verify_bundle
    if not args.bundle.is_file():
        raise UsageError(f"no such bundle: {args.bundle}")
    trust = _trust(args.ca, args.crl, required=True)
    assert trust is not None, "required=True: _trust raises rather than return None"
    try:
        report = verify_bundle(args.bundle, trust)
    except BadBundle as e:
        print(f"semper: {e}", file=sys.stderr)
        return 1
    if args.json:
        print_json(report.as_dict())
    else:
        print(f"deal {report.deal} (archive {report.archive_id}), checkpoint at entry {report.checkpoint_index}"
              + (f" signed by {report.checkpoint_signer} at {report.checkpoint_time:%Y-%m-%d %H:%M:%S} UTC"
                 if report.checkpoint_signer and report.checkpoint_time else ""))
        for entry in report.entries:
            who = f" signed by {entry.statement.signer_name}" if entry.statement else ""
            print(f"  entry {entry.index}: {entry.kind} ({entry.created_at}){who}")
        _print_problems(report.problems, report.notes)
        print("OK: the bundle checks out" if report.ok else f"FAILED: {len(report.problems)} problem(s) found")
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    archive = sub.add_parser("archive", help="the evidence archive: verify, checkpoint, export").add_subparsers(
        dest="archive_command", required=True)

    def db_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", type=Path, help="the archive file (default: evidence.sqlite3 in the semper folder)")

    p = archive.add_parser("verify", help="check the hash chain and the signed checkpoints")
    db_arg(p)
    p.add_argument("--ca", type=Path, action="append", help="CA root (PEM) the checkpoint signers must chain to")
    p.add_argument("--crl", type=Path, action="append", help="a CRL (PEM or DER) to consult")
    p.add_argument("--owner", type=Path, help="the owner's certificate (PEM): checkpoints must be signed with its key")
    json_arg(p)
    p.set_defaults(fn=cmd_verify)

    p = archive.add_parser("list", help="the deals in the archive")
    db_arg(p)
    json_arg(p)
    p.set_defaults(fn=cmd_list)

    p = archive.add_parser("checkpoint", help="sign a checkpoint over the chain head with the card (PIV key 9C) "
                           "or a token")
    db_arg(p)
    card_args(p)
    p.add_argument("--token", metavar="LABEL", help="sign with this PKCS#11 token instead of the card")
    p.add_argument("--module", help="PKCS#11 library for --token (default: SoftHSM2)")
    p.add_argument("--dir", type=Path, help="SoftHSM2 token folder for --token (default: SOFTHSM2_CONF, else "
                   "the semper folder's tokens/)")
    p.add_argument("--pin-stdin", action="store_true", help="read the PIN from standard input")
    json_arg(p)
    p.set_defaults(fn=cmd_checkpoint)

    p = archive.add_parser("export", help="write a deal's self-contained evidence bundle (zip)")
    p.add_argument("deal")
    p.add_argument("-o", "--out", type=Path, required=True)
    db_arg(p)
    p.add_argument("--crl", type=Path, action="append", help="CRL(s) to ship in the bundle")
    json_arg(p)
    p.set_defaults(fn=cmd_export)

    p = archive.add_parser("verify-bundle", help="check an evidence bundle offline")
    p.add_argument("bundle", type=Path)
    p.add_argument("--ca", type=Path, action="append", help="the CA root (PEM) you trust")
    p.add_argument("--crl", type=Path, action="append", help="a newer CRL than the bundle's")
    json_arg(p)
    p.set_defaults(fn=cmd_verify_bundle)
