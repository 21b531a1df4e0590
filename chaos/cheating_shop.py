"""``python -m semper.chaos.cheating_shop``: ``semper serve shop`` with the shop's :class:`Cheat` hook set.

Why a separate entry point: cheating is a test hook of the shop (the same shop code misbehaving on
purpose at one step), and no user-facing command should be able to turn it on. Everything else is
what ``semper serve shop`` does: same folder, same token, same HTTPS service, same announcement.
"""
from __future__ import annotations

import argparse
from pathlib import Path

CHEATS = ("wrong_goods", "no_delivery", "price_change", "replay_offer")


def main(argv: list[str] | None = None) -> int:
    from semper.client.commands.serve import run_until_signalled
    from semper.client.servers.shop import Cheat
    from semper.client.servers.shop_home import ShopHome
    from semper.client.support.channels import server_context
    from semper.client.support.http_service import ServiceRunner
    ap = argparse.ArgumentParser(prog="python -m semper.chaos.cheating_shop")
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--pin-file", type=Path, required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cheat", choices=CHEATS, required=True)
    args = ap.parse_args(argv)
    opened = ShopHome(args.dir).open(args.pin_file.read_bytes().strip())
    cheat = Cheat(price_change=100) if args.cheat == "price_change" else Cheat(**{args.cheat: True})
    opened.shop.cheat = cheat
    try:
        runner = ServiceRunner(opened.app(), "127.0.0.1", args.port, server_context(*opened.tls))
        return run_until_signalled(runner, f"semper shop {opened.shop.name!r} (cheating: {args.cheat})")
    finally:
        opened.close()


if __name__ == "__main__":
    raise SystemExit(main())
