"""``semper audit``: recompute the bank's balances from its ledger and evidence; exit 1 on a violation."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import UsageError, emit, json_arg
from .storage_args import add_db_arg


def cmd_audit(args: argparse.Namespace) -> int:
    from cryptography import x509

    from ..servers.bank_audit import audit
    from ..servers.bank_home import BankHome
    h = BankHome.default(args.bank_dir, args.db)
    h.config()
    try:
        root = x509.load_pem_x509_certificate((h.folder / "roots" / "scheme-root.pem").read_bytes())
    except (OSError, ValueError) as e:
        raise UsageError(f"the bank folder {h.folder} has no readable purse scheme root (roots/scheme-root.pem): "
                         f"{e}") from None
    report = audit(h.db, root, signatures=not args.no_signatures)
    out = report.as_dict()
    emit(args, out, lambda: _text(out))
    return 0 if not report.violations else 1


def _text(out: dict) -> str:
    from ..support.money import format_amount
    lines = ["the ledger is clean: balances, conservation and evidence check out" if out.get("clean") else
             f"VIOLATIONS: {len(out.get('violations', []))}"]
    lines += [f"  violation: {v}" for v in out.get("violations", [])]
    for currency, t in (out.get("totals") or {}).items():
        c = int(currency)
        lines.append(f"  {format_amount(int(t.get('issued', 0)), c)} issued: "
                     + ", ".join(f"{k.replace('_', ' ')} {format_amount(int(v), c)}" for k, v in t.items()
                                 if k != "issued"))
    counts = out.get("counts") or {}
    if counts:
        lines.append("  checked: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("audit", help="check the bank's ledger: balances, conservation, evidence")
    p.add_argument("--bank-dir", type=Path, help="the bank's folder (default: $SEMPER_HOME/bank)")
    add_db_arg(p, "the bank folder")
    p.add_argument("--no-signatures", action="store_true", help="skip re-verifying every signature (faster)")
    json_arg(p)
    p.set_defaults(fn=cmd_audit)
