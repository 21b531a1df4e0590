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
from pathlib import Path
from typing import TYPE_CHECKING

from . import CommandFailed, UsageError, port, positive_int
from .ca import ca_location_args, open_ca, pin_args

if TYPE_CHECKING:
    from aiohttp import web

    from ..support.prefork import Child

if TYPE_CHECKING:
    from ..support.http_service import ServiceRunner

#: one default port per service: 'semper serve ca', 'bank', 'ttp' and 'shop' run side by side
DEFAULT_PORTS = {"ca": 8443, "bank": 8444, "ttp": 8445, "shop": 8446, "certifier": 8447, "mall": 8448}
MAX_WORKERS = 64


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


def run_until_signalled(runner: ServiceRunner, what: str) -> int:
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


def worker_args(p: argparse.ArgumentParser, service: str) -> None:
    """``--workers N`` and the hidden options the parent of ``--workers`` starts each worker with."""
    p.add_argument("--workers", type=positive_int, default=1,
                   help=f"worker processes on the one socket (default 1: one process); the {service}'s state is "
                        "in its database, so any worker takes any request (docs/deployment.md)")
    p.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)


def check_workers(args: argparse.Namespace) -> None:
    if args.workers > MAX_WORKERS:
        raise UsageError(f"--workers must be 1 to {MAX_WORKERS}")


def serve_workers(args: argparse.Namespace, what: str, worker_argv: list[str], pin: bytes,
                  devices: list[Child] | None = None) -> int:
    """The parent of ``--workers N``: bind the socket once, start the ``devices`` and then N workers
    (``worker_argv`` plus the inherited socket and the worker's number; the PIN on their standard input),
    restart what dies, stop all on SIGTERM (``support/prefork.py``)."""
    from ..support.prefork import Child, Supervisor, listen, run_supervised
    try:
        sock = listen(args.host, args.port)
    except OSError as e:
        raise CommandFailed(f"{what}: cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    base = [*worker_argv, "--pin-stdin", "--listen-fd", str(sock.fileno()), "--workers", str(args.workers)]
    workers = [Child(f"{what} worker {k}", [*base, "--worker", str(k)], "ready", stdin=pin + b"\n",
                     pass_fds=(sock.fileno(),)) for k in range(args.workers)]
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"https://{host}:{sock.getsockname()[1]}"
    try:
        return run_supervised(Supervisor(devices or [], workers),
                              lambda: f"{what} ({args.workers} workers) listening on {url}", what)
    except RuntimeError as e:                   # a worker or a device did not start: its own words say why
        raise CommandFailed(f"{what}: {e}") from None
    finally:
        sock.close()


def serve_as_worker(args: argparse.Namespace, app: web.Application, tls: tuple[Path, Path], what: str) -> int:
    """One worker of ``--workers N``: serve ``app`` on the socket the parent bound until SIGTERM (the
    parent's, or the kernel's when the parent died: ``prefork.die_with_parent`` was called first)."""
    import os

    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    from ..support.prefork import inherited_socket
    sock = inherited_socket(args.listen_fd)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner = ServiceRunner(app, ssl_context=server_context(*tls), sock=sock).start()
    print(f"{what} worker {args.worker} ready (pid {os.getpid()})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        runner.stop()
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


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["serve"].add_parser("ca", help="the certification authority over HTTPS")
    ca_location_args(p)
    pin_args(p)
    listen_args(p, "ca")
    p.add_argument("--tls-host", action="append", help="another name for the TLS certificate (repeat)")
    p.set_defaults(fn=cmd_serve_ca)
