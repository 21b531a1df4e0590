"""``semper buy SHOP_URL ITEM...``: the buyer's business application on the command line.

It only asks: which shop, which items (``sku`` or ``sku:quantity``), which workflow, the order form
(``--form key=value``) and a preferred payment module. Checking the seller's offer, showing it,
confirming, the PIN, paying and checking the delivery all happen in the commerce layer and the
TINGUIN. In a terminal a person answers the TINGUIN; otherwise ``--script PIN_FILE`` lets a scripted
user answer the same screens (it says so on every screen and in the evidence).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import UsageError, print_json


def _items(raw: list[str]) -> list[tuple[str, int]]:
    out = []
    for item in raw:
        sku, _, qty = item.partition(":")
        try:
            out.append((sku, int(qty) if qty else 1))
        except ValueError:
            raise UsageError(f"{item!r}: write an item as SKU or SKU:QUANTITY") from None
    return out


def _form(raw: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in raw or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--form {pair!r}: write KEY=VALUE")
        out[key.strip()] = value
    return out


def cmd_buy(args: argparse.Namespace) -> int:
    from cryptography import x509

    from ..commerce.app import Purchase, buy
    from ..commerce.setup import BuyerConfig
    from ..support import prefs
    from ..support.channels import JsonClient
    from ..support.paths import semper_home
    from ..tinguin.api import Script
    p = prefs.load()
    ca_root = args.ca_root or (Path(p["trust.ca_root"]) if p.get("trust.ca_root") else None)
    if ca_root is None:
        raise UsageError("which CA root do you trust? pass --ca-root (or: semper prefs set trust.ca_root FILE)")
    root_pem = Path(ca_root).read_text()
    home = semper_home()
    ttp_url = args.ttp or p.get("servers.ttp")
    ttp_cert = escrow = None
    if ttp_url and args.workflow in ("information", "contract"):
        import base64
        t = JsonClient(ttp_url, root_pem, name="the third party")
        ttp_cert = x509.load_pem_x509_certificate(str(t.get("/certificate")["certificate"]).encode())
        escrow = base64.b64decode(str(t.get("/escrow-key")["statement"]))
    tls_dir = args.tls_dir or home / "client-tls"
    tls = (tls_dir / "cert.pem", tls_dir / "key.pem") if (tls_dir / "cert.pem").exists() else None
    cfg = BuyerConfig(
        shop_url=args.shop_url, ca_root_pem=root_pem, archive=args.archive or home / "evidence.sqlite3",
        purse_root=x509.load_pem_x509_certificate(args.purse_root.read_bytes()) if args.purse_root else None,
        bank_url=args.bank or p.get("servers.bank"), bank_tls_root=args.bank_tls_root, account=args.account,
        ttp_url=ttp_url, ttp_cert=ttp_cert, escrow=escrow, tls=tls, patience=args.patience)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    script = None
    if not interactive:
        if args.script is None:
            raise UsageError("no terminal for the TINGUIN: run semper buy in a terminal, or pass --script PIN_FILE "
                             "to let a scripted user answer its screens (it says so in the evidence)")
        script = Script(payment=args.pay, pin=args.script.read_text().strip())

    def card() -> object:
        """The card the TINGUIN's worker thread uses: a reader through pcscd, or an image in process."""
        from semper.hardware.cards import open_connection
        from semper.hardware.iso7816 import AID
        return open_connection(AID.PURSE, args.reader or p.get("signer.reader"), args.image)
    purchase = Purchase(args.workflow, _items(args.items), _form(args.form), args.pay, args.anonymous)
    result = buy(cfg, card, purchase, interactive=interactive, script=script,
                 say=lambda line: print(line, file=sys.stderr, flush=True))
    print_json({"deal": result.deal_id, "status": result.status.value, "summary": result.summary,
                "evidence": [{"kind": e.kind, "entry": e.archive_index, "sha256": e.digest} for e in result.evidence]})
    return 0 if result.ok else 1


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("buy", help="buy from a shop (offer, TINGUIN, order, payment, delivery)")
    p.add_argument("shop_url", help="the shop, https://host:port")
    p.add_argument("items", nargs="+", help="SKU or SKU:QUANTITY (see the shop's GET /catalogue)")
    p.add_argument("--workflow", default="mail-order", choices=("mail-order", "information", "registration",
                                                                "contract"))
    p.add_argument("--pay", help="the payment module you would prefer (you choose in the TINGUIN)")
    p.add_argument("--anonymous", action="store_true", help="an anonymous deal: nothing signed, e-cash only")
    p.add_argument("--form", action="append", metavar="KEY=VALUE", help="order form values (repeat)")
    p.add_argument("--reader", help="the PC/SC reader of your card (default: prefs signer.reader, else search)")
    p.add_argument("--image", type=Path, help="a simulated card image in this process instead of a reader")
    p.add_argument("--ca-root", type=Path, help="the CA root you trust (default: prefs trust.ca_root)")
    p.add_argument("--purse-root", type=Path, help="the card purse scheme root (to check payments in exchanges)")
    p.add_argument("--bank", help="the bank's URL (default: prefs servers.bank)")
    p.add_argument("--bank-tls-root", type=Path, help="the bank's TLS root (PEM)")
    p.add_argument("--account", help="your account at the bank (cheques, account payments)")
    p.add_argument("--ttp", help="the third party's URL (fair exchanges; default: prefs servers.ttp)")
    p.add_argument("--tls-dir", type=Path, help="your mailbox's TLS key and chain for fair exchanges "
                                                "(default: $SEMPER_HOME/client-tls; semper ca tls-cert makes one)")
    p.add_argument("--archive", type=Path, help="your evidence archive (default: $SEMPER_HOME/evidence.sqlite3)")
    p.add_argument("--patience", type=float, default=15.0, help="seconds to wait for a delivery or an exchange")
    p.add_argument("--script", type=Path, metavar="PIN_FILE",
                   help="no person at a terminal: a scripted user answers the TINGUIN, typing this PIN")
    p.set_defaults(fn=cmd_buy)
