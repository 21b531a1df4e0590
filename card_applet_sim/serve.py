"""Run simulated cards behind pcscd: each card image goes into one vpcd reader slot.

Used by ``semper card serve`` and by ``python -m card_applet_sim``. Stops cleanly on SIGTERM or
SIGINT: links are closed, images are closed, nothing is left half-written (each APDU's changes
are one journal record).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from .keys import KeyFolder, KeySource, default_key_folder
from .os import CardOS
from .store import CardImageError
from .vpcd import DEFAULT_HOST, DEFAULT_PORT, VpcdLink, serve


def run(images: list[Path], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, sync: bool = True,
        write_chunk: int = 0, keys: KeySource | None = None,
        stop: threading.Event | None = None, ready: Callable[[list[VpcdLink]], object] | None = None) -> int:
    stop = stop or threading.Event()
    cards: list[CardOS] = []
    try:
        for image in images:
            card = CardOS.open(image, sync=sync, write_chunk=write_chunk, keys=keys)
            cards.append(card)
            if card.store.report.torn_bytes:
                print(f"{image}: dropped an interrupted (torn) write of {card.store.report.torn_bytes} bytes; "
                      "the card holds the state before it", file=sys.stderr, flush=True)
            if card.store.report.mode_tightened:
                print(f"{image}: was readable by others; made it private (0600)", file=sys.stderr, flush=True)
    except CardImageError as e:
        for c in cards:
            c.close()
        print(f"semper card serve: {e}", file=sys.stderr)
        return 2
    links = [VpcdLink(card, host, port + i, stop, name=images[i].name) for i, card in enumerate(cards)]

    def _stop(signum: int, _frame: object) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    for i, image in enumerate(images):
        print(f"card {image} -> vpcd {host}:{port + i}", flush=True)
    if ready is not None:
        ready(links)
    try:
        serve(links, stop)
    finally:
        for c in cards:
            c.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m card_applet_sim", description="serve simulated cards to vpcd")
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--host", default=DEFAULT_HOST)
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--no-sync", action="store_true", help="skip fsync after each commit (faster, not power-safe)")
    ap.add_argument("--keys", type=Path, default=None, metavar="DIR",
                    help=f"the folder of the cards' sealing keys (default: {default_key_folder()})")
    ap.add_argument("--write-chunk", type=int, default=0, metavar="BYTES",
                    help="write each commit in pieces of BYTES (widens the tear window; for tear tests)")
    args = ap.parse_args(argv)
    if args.write_chunk < 0:
        ap.error("--write-chunk must be 0 or more")
    logging.basicConfig(level=logging.WARNING)
    keys = KeyFolder(args.keys) if args.keys else None
    return run(args.images, args.host, args.port, sync=not args.no_sync, write_chunk=args.write_chunk, keys=keys)
