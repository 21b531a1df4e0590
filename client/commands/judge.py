"""``semper judge BUNDLE``: the offline arbiter over an exported evidence bundle (JSON ruling)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import UsageError, print_json


def cmd_judge(args: argparse.Namespace) -> int:
    from cryptography import x509

    from ..exchange.judge import judge
    from ..support.trust import TrustStore
    trust = TrustStore.from_files(list(args.ca), list(args.crl or []))
    roots = []
    for path in args.purse_root or []:
        try:
            roots.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as e:
            raise UsageError(f"--purse-root {path}: not a readable PEM certificate ({e})") from None
    from ..commerce.judge import is_deal_bundle, judge_deal
    if is_deal_bundle(args.bundle):                 # a commerce deal (offer, order, payment, delivery)
        print_json(judge_deal(args.bundle, trust, roots[0] if roots else None).as_dict())
        return 0
    from ..payment.item import item_verifiers
    ruling = judge(args.bundle, trust, item_verifiers(purse_root=roots[0] if roots else None))
    print_json(ruling.as_dict())
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("judge", help="rule on an exchange or a deal from an exported evidence bundle (offline)")
    p.add_argument("bundle", type=Path, help="the bundle (semper archive export)")
    p.add_argument("--ca", type=Path, action="append", required=True, help="CA root the judge trusts (repeat)")
    p.add_argument("--crl", type=Path, action="append", help="a CRL to consult (repeat)")
    p.add_argument("--purse-root", type=Path, action="append", help="card purse scheme root, to check payments")
    p.set_defaults(fn=cmd_judge)
