"""``semper serve shop``: the seller's shop over HTTPS (catalogue, offers, orders, payments, delivery,
fair exchanges), its signing key in its token and its PSAM in its own reader (``client/commerce``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import read_secret


def cmd_serve_shop(args: argparse.Namespace) -> int:
    from ..servers.shop_home import ShopHome
    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    from .serve import run_until_signalled
    home = ShopHome.default(args.dir)
    pin = args.pin_file.read_bytes().strip() if args.pin_file else read_secret("shop token PIN", args.pin_stdin)
    opened = home.open(pin)
    try:
        runner = ServiceRunner(opened.app(), args.host, args.port, server_context(*opened.tls))
        return run_until_signalled(runner, f"semper shop {opened.shop.name!r}")
    finally:
        opened.close()


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = groups["serve"].add_parser("shop", help="the seller's shop: signed offers, orders, payments, delivery")
    p.add_argument("--dir", type=Path, help="the shop's folder (default: $SEMPER_HOME/shop; see docs/commerce.md)")
    p.add_argument("--pin-file", type=Path, help="read the seller token's PIN from this file (for services)")
    p.add_argument("--pin-stdin", action="store_true", help="read the seller token's PIN from standard input")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8446, help="port (default 8446; 0 = any free port)")
    p.set_defaults(fn=cmd_serve_shop)
