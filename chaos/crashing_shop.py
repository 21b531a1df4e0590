"""``python -m semper.chaos.crashing_shop``: ``semper serve shop`` that dies once at a named instant of a step.

Why a separate entry point: the shop commits the payment's last step, the payee's record and the
deal it completes (paid, confirmed, delivered) in one transaction (docs/performance.md), and a shop
killed inside it — everything written, nothing committed, the PSAM already holding the card's proof
— must, once started again, complete the same deal when the buyer sends the proof once more, and
take the money once. The proxy of ``semper chaos`` can kill the shop only some milliseconds after a
request, which seldom falls in that transaction; this program ends itself exactly there, from the
shop's event hook (``Shop.on_step``, instant ``settling``), exit status 70, without cleanup, as a
power cut would. The same for the order that comes with the card's hello: inside its transaction
(``ordering``) and between its commit and its answer (``ordered``). It does so once: it leaves the
``--once`` file behind, and the same program started again on the folder is the honest shop. No
user-facing command and no environment variable can do this. Everything else is what ``semper serve
shop`` does: same folder, token, database, HTTPS service and announcement line.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

EXIT_STATUS = 70


def crash_once_at(instant: str, once: Path) -> Callable[[str, str], None]:
    """An ``on_step`` hook that ends the process at ``instant``, unless the file ``once`` exists (which it
    makes before it ends the process)."""
    log = logging.getLogger("semper.chaos")

    def on_step(name: str, deal_id: str) -> None:
        if name == instant and not once.exists():
            once.write_text(f"{instant} {deal_id}\n")
            log.error("crashing the shop at %s (deal %s)", instant, deal_id[:16])
            os._exit(EXIT_STATUS)
    return on_step


def main(argv: list[str] | None = None) -> int:
    from semper.client.servers.shop_home import ShopHome

    from .faulty_service import fault_parser, serve
    ap = fault_parser("crashing_shop")
    # settling: inside the payment's last step's transaction; ordering: inside the transaction of an order
    # that came with the card's hello; ordered: right after that one committed, before its answer
    ap.add_argument("--crash-at", choices=["settling", "ordering", "ordered"], required=True)
    ap.add_argument("--once", type=Path, required=True, help="made when it crashes; present: no crash")
    args = ap.parse_args(argv)
    opened = ShopHome(args.dir).open(args.pin_file.read_bytes().strip(), db=args.db)
    opened.shop.on_step = crash_once_at(args.crash_at, args.once)
    return serve(opened, args.port, f"semper shop {opened.shop.name!r} (crashing once at {args.crash_at})")

if __name__ == "__main__":
    raise SystemExit(main())
