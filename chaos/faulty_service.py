"""What the misbehaving services of ``semper chaos`` share: their command line and their life as a service.

Why: a crashing shop, a crashing third party and a cheating shop differ only in the fault they set on an
opened party; the folder, the PIN file, the port, the storage URL, and serving it over HTTPS until a
signal are the same as ``semper serve``'s, and are declared and run here once.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol


class Opened(Protocol):
    """A party's home opened with its token: its HTTPS app, TLS key and chain, and what to close."""

    tls: Any

    def app(self) -> Any: ...

    def close(self) -> None: ...


def fault_parser(module: str) -> argparse.ArgumentParser:
    """``--dir``, ``--pin-file``, ``--port`` and ``--db`` of ``python -m semper.chaos.<module>``."""
    from semper.client.commands import port
    ap = argparse.ArgumentParser(prog=f"python -m semper.chaos.{module}")
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--pin-file", type=Path, required=True)
    ap.add_argument("--port", type=port, default=0)
    ap.add_argument("--db", help="the party's storage URL (as semper serve --db; default: SQLite in the folder)")
    return ap


def serve(opened: Opened, port: int, banner: str) -> int:
    """Serve ``opened`` on loopback until a signal, as ``semper serve`` does, then close it."""
    from semper.client.commands.serve import run_until_signalled
    from semper.client.support.channels import server_context
    from semper.client.support.http_service import ServiceRunner
    try:
        return run_until_signalled(ServiceRunner(opened.app(), "127.0.0.1", port, server_context(*opened.tls)), banner)
    finally:
        opened.close()
