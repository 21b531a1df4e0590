"""``semper serve ca``: the CA's HTTPS service. ``serve`` is a shared group; the bank, the third
party and the shop add their own subcommand the same way.

The service runs in the foreground until SIGINT or SIGTERM, prints one line with its URL when it
listens (tests and scripts wait for that line), and shuts down within a bounded time. Each service
has its own default port (:data:`DEFAULT_PORTS`), so all four run side by side without options.
"""
from __future__ import annotations

import argparse
import signal
import socket
import threading

from . import CommandFailed, port
from .ca import ca_location_args, open_ca, pin_args

#: one default port per service: 'semper serve ca', 'bank', 'ttp' and 'shop' run side by side
DEFAULT_PORTS = {"ca": 8443, "bank": 8444, "ttp": 8445, "shop": 8446}


def listen_args(p: argparse.ArgumentParser, service: str) -> None:
    default = DEFAULT_PORTS[service]
    p.add_argument("-H", "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("-p", "--port", type=port, default=default, help=f"port (default {default}; 0 = any free port)")


def check_bindable(host: str, number: int) -> None:
    """Fail before anything is issued or opened when the address cannot be listened on (taken, not
    ours): a service that would fail to bind must not have had a TLS certificate issued first."""
    if number == 0:
        return
    try:
        infos = socket.getaddrinfo(host, number, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CommandFailed(f"cannot listen on {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise CommandFailed(f"cannot listen on {host}:{number}: {e.strerror} (another service there? choose "
                                "another --port, or 0 for any free port)") from None


def run_until_signalled(runner, what: str) -> int:  # type: ignore[no-untyped-def]
    """Start ``runner``, announce it, wait for SIGINT/SIGTERM, stop it."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        runner.start()
    except OSError as e:
        raise CommandFailed(f"{what}: {e}") from None
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
    check_bindable(args.host, args.port)
    h, ca = open_ca(args, signing=True)
    hosts = tuple(dict.fromkeys([args.host, "127.0.0.1", "localhost", *(args.tls_host or [])]))
    chain, key = issue_tls_identity(ca, hosts, h.tls_dir, name=f"{hosts[0]} (semper CA service)")
    runner = ServiceRunner(build_app(ca), args.host, args.port, server_context(chain, key))
    return run_until_signalled(runner, "semper CA")


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = groups["serve"].add_parser("ca", help="the certification authority over HTTPS")
    ca_location_args(p)
    pin_args(p)
    listen_args(p, "ca")
    p.add_argument("--tls-host", action="append", help="another name for the TLS certificate (repeat)")
    p.set_defaults(fn=cmd_serve_ca)
