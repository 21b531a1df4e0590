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

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path

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
    from semper.client.commands.serve import run_until_signalled
    from semper.client.servers.ttp_home import TtpHome
    from semper.client.support.channels import server_context
    from semper.client.support.http_service import ServiceRunner
    ap = argparse.ArgumentParser(prog="python -m semper.chaos.crashing_ttp")
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--db", help="database DSN (default: sqlite in the folder)")
    ap.add_argument("--pin-file", type=Path, required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--crash-at", choices=sorted(POINTS), required=True)
    args = ap.parse_args(argv)
    opened = TtpHome.default(args.dir, args.db).open(args.pin_file.read_text().strip().encode())
    opened.ttp.on_step = crash_at(args.crash_at)
    try:
        runner = ServiceRunner(opened.app(), "127.0.0.1", args.port, server_context(*opened.tls))
        return run_until_signalled(runner, f"semper third party (crashing {args.crash_at})")
    finally:
        opened.close()


if __name__ == "__main__":
    raise SystemExit(main())
