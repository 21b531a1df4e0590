"""``client/support/prefork.py``, the parent of ``--workers N``: it starts again a child that dies, stops
its children on SIGTERM, and a child ends with it even when the parent is killed with SIGKILL (which
gives the parent no chance to stop anything: the kernel's parent-death signal does it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from workers import children

from semper.client.support.prefork import process_gone

REPO = Path(__file__).resolve().parents[1]
CHILD = ("import sys, time\n"
         "from semper.client.support.prefork import die_with_parent\n"
         "die_with_parent(int(sys.argv[sys.argv.index('--parent-pid') + 1]))\n"
         "print('ready --worker', flush=True)\n"
         "time.sleep(120)\n")
PARENT = ("import sys\n"
          "from semper.client.support.prefork import Child, Supervisor, run_supervised\n"
          f"kids = [Child(f'worker {{k}}', [sys.executable, '-c', {CHILD!r}, '--worker'], 'ready') for k in range(2)]\n"
          "sys.exit(run_supervised(Supervisor([], kids), lambda: 'test listening on nothing', 'test'))\n")




@pytest.fixture
def parent() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()                   # bounded: the children start within START_TIMEOUT
    assert "listening" in line, line
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@pytest.mark.timeout(60)
def test_a_child_that_dies_is_started_again_and_sigterm_stops_all(parent: subprocess.Popen[str]) -> None:
    first = children(parent.pid)
    assert len(first) == 2
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    now = children(parent.pid)
    while time.monotonic() < deadline and not (len(now) == 2 and first[0] not in now):
        time.sleep(0.1)
        now = children(parent.pid)
    assert len(now) == 2 and first[0] not in now and first[1] in now
    parent.terminate()
    assert parent.wait(20) == 0
    assert all(process_gone(pid, 10) for pid in now)


@pytest.mark.timeout(60)
def test_children_end_with_a_parent_killed_with_sigkill(parent: subprocess.Popen[str]) -> None:
    kids = children(parent.pid)
    assert len(kids) == 2
    parent.kill()
    parent.wait(10)
    assert all(process_gone(pid, 10) for pid in kids), "a worker outlived its parent"
