"""``semper audit``: recompute the bank's balances from its ledger and evidence; exit 1 on a violation."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import print_json
from .storage_args import add_db_arg


def cmd_audit(args: argparse.Namespace) -> int:
    from cryptography import x509

    from ..servers.bank_audit import audit
    from ..servers.bank_home import BankHome
    h = BankHome.default(args.bank_dir, args.db)
    h.config()
    root = x509.load_pem_x509_certificate((h.folder / "roots" / "scheme-root.pem").read_bytes())
    report = audit(h.db, root, signatures=not args.no_signatures)
    print_json(report.as_dict())
    return 0 if not report.violations else 1


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="check the bank's ledger: balances, conservation, evidence")
    p.add_argument("--bank-dir", type=Path, help="the bank's folder (default: $SEMPER_HOME/bank)")
    add_db_arg(p, "the bank folder")
    p.add_argument("--no-signatures", action="store_true", help="skip re-verifying every signature (faster)")
    p.set_defaults(fn=cmd_audit)
