"""Helpers for the tests of ``--workers N`` (shop and bank): a service's worker processes, the one that
holds the buyer's connection, and a party for the fault proxy that SIGKILLs that worker alone."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


def children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"--worker" in cmdline:
            out.append(int(entry.name))
    return sorted(out)


def holders(pids: list[int], port: int) -> list[int]:
    """The workers holding an established TCP connection on the shop's port (the buyer's, via the proxy)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                inodes.add(f"socket:[{f[9]}]")
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    found.append(pid)
                    break
            except OSError:
                continue
    return found


class WorkerKiller:
    """The fault proxy's party for a kill of one worker: SIGKILL the worker serving the buyer's connection;
    the shop's parent starts a new one, the address stays the same."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.killed: list[int] = []

    def kill(self) -> None:
        pids = children(self.service.proc.pid)
        victims = holders(pids, self.service.port)
        assert victims, f"no worker holds the buyer's connection (workers {pids})"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)

    def start(self) -> int:
        return int(self.service.port)
