"""``semper judge BUNDLE``: the offline arbiter over an exported evidence bundle.

Exit status 0 when the bundle checks out and a ruling could be made on it; 1 when the bundle is not
ok (tampered, incomplete, signatures that do not verify): the ruling is then printed for what it
is worth, but a script must not take it as settled. A ruling that rests on something the judge
could not check (a card purse payment without ``--purse-root``) says so *first*.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import UsageError, emit, existing_file, json_arg

UNCHECKED_ROOT = ("NOT CHECKED: no --purse-root was given, so the card behind the payment was not checked against the "
                  "purse scheme's root (any card could have made the proof); ")


def _deal_ruling(bundle: Path, trust: Any, root: Any) -> tuple[dict[str, Any], bool]:
    from ..commerce.judge import judge_deal
    ruling = judge_deal(bundle, trust, root).as_dict()
    payment = ruling["facts"].get("payment") or {}
    if root is None and payment.get("module") == "card-purse":
        ruling["ruling"] = UNCHECKED_ROOT + ruling["ruling"]
        ruling["purse_root_checked"] = False
    ok = ruling["bundle"]["ok"] and not ruling["bundle"]["problems"]
    return ruling, ok


def _exchange_ruling(bundle: Path, trust: Any, roots: list[Any]) -> tuple[dict[str, Any], bool]:
    from ..exchange.judge import judge
    from ..payment.item import item_verifiers
    ruling = judge(bundle, trust, item_verifiers(purse_root=roots[0] if roots else None)).as_dict()
    text = str(ruling)
    if not roots and "card-purse" in text:
        ruling["ruling"] = UNCHECKED_ROOT + ruling["ruling"]
        ruling["purse_root_checked"] = False
    return ruling, bool(ruling["bundle"]["ok"])


def _text(r: dict[str, Any], ok: bool) -> str:
    lines = [("" if ok else "THE BUNDLE IS NOT OK: ") + r["ruling"]]
    for p in r["bundle"]["problems"]:
        lines.append(f"  problem: {p}")
    if "deal" in r:
        facts = r.get("facts", {})
        offer = facts.get("offer", {})
        if offer:
            lines.append(f"  offer: {offer.get('total')} from {offer.get('seller')} ({offer.get('workflow')})")
        if facts.get("order"):
            lines.append(f"  order: signed by {facts['order'].get('signed_by')}")
        if facts.get("payment"):
            lines.append(f"  payment: {facts['payment'].get('module')}: {facts['payment'].get('proof')}")
        for who in ("seller_owes", "buyer_owes"):
            for item in r.get(who, []):
                lines.append(f"  {who.replace('_', ' ')}: {item}")
    else:
        for side in ("originator", "responder"):
            s = r[side]
            lines.append(f"  {side} {s['name']}: {'fulfilled' if s['fulfilled'] else 'not fulfilled'} ({s['how']})")
        lines.append(f"  fair: {'yes' if r['fair'] else 'no'}")
    return "\n".join(lines)


def cmd_judge(args: argparse.Namespace) -> int:
    from cryptography import x509

    from ..support.trust import EvidenceError, TrustStore
    try:
        trust = TrustStore.from_files(list(args.ca), list(args.crl or []))
    except EvidenceError as e:
        raise UsageError(str(e)) from None
    roots = []
    for path in args.purse_root or []:
        try:
            roots.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as e:
            raise UsageError(f"--purse-root {path}: not a readable PEM certificate ({e})") from None
    from ..commerce.judge import is_deal_bundle
    if is_deal_bundle(args.bundle):                 # a commerce deal (offer, order, payment, delivery)
        ruling, ok = _deal_ruling(args.bundle, trust, roots[0] if roots else None)
    else:
        ruling, ok = _exchange_ruling(args.bundle, trust, roots)
    emit(args, ruling, lambda: _text(ruling, ok))
    return 0 if ok else 1


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("judge", help="rule on an exchange or a deal from an exported evidence bundle (offline); "
                                     "exit 1 when the bundle is not ok")
    p.add_argument("bundle", type=existing_file, help="the bundle (semper archive export)")
    p.add_argument("--ca", type=existing_file, action="append", required=True,
                   help="CA root the judge trusts (repeat)")
    p.add_argument("--crl", type=existing_file, action="append", help="a CRL to consult (repeat)")
    p.add_argument("--purse-root", type=existing_file, action="append",
                   help="card purse scheme root, to check card payments")
    json_arg(p)
    p.set_defaults(fn=cmd_judge)
