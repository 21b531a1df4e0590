"""``python -m semper.chaos.crashing_ttp``: ``semper serve ttp`` that dies in the middle of a decision.

Why a separate entry point: a third party killed between signing a final decision and storing it
(or between storing it and answering) is a case the restart must survive — decided once, the same
answer after the restart — and the only way to hit those two instants reliably is from inside. The
product offers the instants as an event hook (``ThirdParty.on_step``, steps ``signed`` and
``stored``); this program installs one that ends the process there, exit status 70, without
cleanup, as a power cut would. No user-facing command and no environment variable can do this.
Everything else is what ``semper serve ttp`` does: same folder, token, database, HTTPS service and
announcement line.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable

# the points the tests name, and the third party's step each one ends the process at
POINTS = {"before-commit": "signed", "after-commit": "stored"}
EXIT_STATUS = 70


def crash_at(point: str) -> Callable[[str, str], None]:
    """An ``on_step`` hook that ends the process at ``point`` (a key of :data:`POINTS`)."""
    step = POINTS[point]
    log = logging.getLogger("semper.chaos")

    def on_step(name: str, xid: str) -> None:
        if name == step:
            log.error("crashing the third party at %s (exchange %s)", point, xid[:16])
            os._exit(EXIT_STATUS)
    return on_step


def main(argv: list[str] | None = None) -> int:
    from semper.client.servers.ttp_home import TtpHome

    from .faulty_service import fault_parser, serve
    ap = fault_parser("crashing_ttp")
    ap.add_argument("--crash-at", choices=sorted(POINTS), required=True)
    args = ap.parse_args(argv)
    opened = TtpHome.default(args.dir, args.db).open(args.pin_file.read_text().strip().encode())
    opened.ttp.on_step = crash_at(args.crash_at)
    return serve(opened, args.port, f"semper third party (crashing {args.crash_at})")

if __name__ == "__main__":
    raise SystemExit(main())
