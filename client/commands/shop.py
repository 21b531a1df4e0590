"""``semper serve shop``: the seller's shop over HTTPS (catalogue, offers, orders, payments, delivery,
fair exchanges), its signing key in its token and its PSAM in its own reader (``client/commerce``).

``--workers N`` runs N worker processes on one listening socket, each PSAM in a device process of its
own (``client/servers/psam_device.py``), the deals in the shop's database (``--db``); the parent
restarts what dies (``client/support/prefork.py``; docs/deployment.md)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from . import UsageError, read_secret
from .storage_args import add_db_arg

MAX_WORKERS = 64
SOCKET_PATH_MAX = 100            # a unix socket's path must fit in 108 bytes


def cmd_serve_shop(args: argparse.Namespace) -> int:
    from ..servers.shop_home import ShopHome
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be 1 to {MAX_WORKERS}")
    home = ShopHome.default(args.dir)
    pin = args.pin_file.read_bytes().strip() if args.pin_file else read_secret("shop token PIN", args.pin_stdin)
    if args.listen_fd is not None:
        return _serve_worker(args, home, pin)
    if args.workers > 1:
        return _serve_workers(args, home, pin)
    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    from .serve import run_until_signalled
    opened = home.open(pin, db=args.db)
    try:
        runner = ServiceRunner(opened.app(), args.host, args.port, server_context(*opened.tls))
        return run_until_signalled(runner, f"semper shop {opened.shop.name!r}")
    finally:
        opened.close()


def _psam_sockets(home: object, count: int) -> list[Path]:
    """Where the PSAM devices listen: ``run/`` in the shop's folder (0700), or, when that path is too long
    for a unix socket, a private folder of the same mode under the temporary folder."""
    run = Path(home.run_dir)  # type: ignore[attr-defined]
    run.mkdir(mode=0o700, exist_ok=True)
    run.chmod(0o700)
    paths = [run / f"psam-{i}.sock" for i in range(count)]
    if paths and len(str(paths[-1])) > SOCKET_PATH_MAX:
        short = Path(tempfile.mkdtemp(prefix="semper-psam-"))           # mkdtemp: mode 0700
        paths = [short / f"psam-{i}.sock" for i in range(count)]
    return paths


def _serve_workers(args: argparse.Namespace, home: object, pin: bytes) -> int:
    from ..support.prefork import Child, Supervisor, listen, run_supervised
    cfg = home.config()  # type: ignore[attr-defined]
    sock = listen(args.host, args.port)
    specs = home.psam_specs()  # type: ignore[attr-defined]
    sockets = _psam_sockets(home, len(specs))
    folder = str(home.folder)  # type: ignore[attr-defined]
    devices = [Child(f"PSAM device {i}", [sys.executable, "-m", "semper.client.servers.psam_device", "--dir", folder,
                                          "--index", str(i), "--socket", str(path)], "listening on")
               for i, path in enumerate(sockets)]
    base = [sys.executable, "-m", "semper.client.cli", "serve", "shop", "--dir", folder, "--pin-stdin",
            "--listen-fd", str(sock.fileno()), "--workers", str(args.workers)]
    if args.db:
        base += ["--db", args.db]
    for path in sockets:
        base += ["--psam-socket", str(path)]
    workers = [Child(f"shop worker {k}", [*base, "--worker", str(k)], "ready", stdin=pin + b"\n",
                     pass_fds=(sock.fileno(),)) for k in range(args.workers)]
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"https://{host}:{sock.getsockname()[1]}"
    try:
        return run_supervised(Supervisor(devices, workers),
                              lambda: f"semper shop {cfg['name']!r} ({args.workers} workers) listening on {url}",
                              f"semper shop {cfg['name']!r}")
    finally:
        sock.close()


def _serve_worker(args: argparse.Namespace, home: object, pin: bytes) -> int:
    """One worker of ``--workers N``: the parent's socket, the PSAM devices' sockets, the shared database."""
    import os
    import signal
    import threading

    from ..support.channels import server_context
    from ..support.http_service import ServiceRunner
    from ..support.prefork import die_with_parent, inherited_socket
    die_with_parent()
    sock = inherited_socket(args.listen_fd)
    opened = home.open(pin, db=args.db, psam_sockets=list(args.psam_socket or []),  # type: ignore[attr-defined]
                       worker=args.worker, workers=args.workers)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        runner = ServiceRunner(opened.app(), ssl_context=server_context(*opened.tls), sock=sock).start()
        print(f"semper shop worker {args.worker} ready (pid {os.getpid()})", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            runner.stop()
        return 0
    finally:
        opened.close()


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:  # type: ignore[type-arg]
    p = groups["serve"].add_parser("shop", help="the seller's shop: signed offers, orders, payments, delivery")
    p.add_argument("--dir", type=Path, help="the shop's folder (default: $SEMPER_HOME/shop; see docs/commerce.md)")
    p.add_argument("--pin-file", type=Path, help="read the seller token's PIN from this file (for services)")
    p.add_argument("--pin-stdin", action="store_true", help="read the seller token's PIN from standard input")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8446, help="port (default 8446; 0 = any free port)")
    add_db_arg(p, "the shop folder (shop.db)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes on the one socket, each PSAM in a process of its own (default 1: "
                        "one process; docs/deployment.md)")
    # how the parent of --workers starts each worker (not for people)
    p.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--psam-socket", type=Path, action="append", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_serve_shop)
