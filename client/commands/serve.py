"""``semper serve ca``: the CA's HTTPS service. ``serve`` is a shared group; later services
(bank, ttp, shop) add their own subcommand the same way.

The service runs in the foreground until SIGINT or SIGTERM, prints one line with its URL when it
listens (tests and scripts wait for that line), and shuts down within a bounded time.
"""
from __future__ import annotations

import argparse
import signal
import threading

from .ca import ca_location_args, open_ca, pin_args


def run_until_signalled(runner, what: str) -> int:  # type: ignore[no-untyped-def]
    """Start ``runner``, announce it, wait for SIGINT/SIGTERM, stop it."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner.start()
    print(f"{what} listening on {runner.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        runner.stop()
    print(f"{what} stopped", flush=True)
    return 0


def cmd_serve_ca(args: argparse.Namespace) -> int:
    from ..servers.ca_home import issue_tls_identity
    from ..servers.ca_http import build_app
    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    h, ca = open_ca(args, signing=True)
    hosts = tuple(dict.fromkeys([args.host, "127.0.0.1", "localhost", *(args.tls_host or [])]))
    chain, key = issue_tls_identity(ca, hosts, h.tls_dir, name=f"{hosts[0]} (semper CA service)")
    runner = ServiceRunner(build_app(ca), args.host, args.port, server_context(chain, key))
    return run_until_signalled(runner, "semper CA")


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = groups["serve"].add_parser("ca", help="the certification authority over HTTPS")
    ca_location_args(p)
    pin_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443; 0 = any free port)")
    p.add_argument("--tls-host", action="append", help="another name for the TLS certificate (repeat)")
    p.set_defaults(fn=cmd_serve_ca)
