"""Several worker processes on one listening socket, and the device processes they call: start, watch, stop.

Why processes and not threads: a service's CPU per request is mostly Python (TLS records, JSON, CMS),
and one Python process uses one core. So ``semper serve shop --workers N`` and ``semper serve bank
--workers N`` run a parent that binds the socket once and starts N workers that inherit it (each
serves it with aiohttp; the kernel hands each new connection to one of them). The parent holds no
state of the service: everything a request needs is in the database, so any worker can take any
request, and a worker that dies loses nothing that was answered. The parent:

* starts the devices first (``semper serve shop``: one process per PSAM, which the workers call over a
  unix socket) and then the workers, one after the other (their tokens share one SoftHSM2 folder, and a
  token listing during another process's login can fail), each awaited up to its ready line;
* restarts a device or a worker that dies (at most a few times a minute each, so a worker that dies
  at start does not spin);
* on SIGTERM or SIGINT stops the workers (SIGTERM, then SIGKILL after a bounded wait), then the devices.

A worker is the same command with the inherited socket's descriptor (``--listen-fd``) and its number
(``--worker``); the parent writes the token PIN to its standard input, so it is never in an argument.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("semper.prefork")
PARENT_OPTION = "--parent-pid"              # how a child learns its parent's pid (die_with_parent)
PR_SET_PDEATHSIG = 1
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
RESTARTS_PER_MINUTE = 5


@dataclass
class Child:
    """One process the parent keeps running: its command, the line that says it is ready, its pid."""

    name: str
    argv: list[str]
    ready_text: str
    stdin: bytes = b""
    pass_fds: tuple[int, ...] = ()
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: deque[float] = field(default_factory=lambda: deque(maxlen=RESTARTS_PER_MINUTE))

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.starts.append(time.monotonic())
        env = self.env if self.env is not None else dict(os.environ)
        self.proc = subprocess.Popen([*self.argv, PARENT_OPTION, str(os.getpid())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=None,
                                     pass_fds=self.pass_fds, env=env, start_new_session=False)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(self.stdin)
            self.proc.stdin.close()
        except OSError:
            pass
        out = self.proc.stdout
        got: list[bytes] = []
        ready = threading.Event()

        def read() -> None:
            for line in out:
                if not ready.is_set():
                    got.append(line)
                    if self.ready_text.encode() in line:
                        ready.set()
                else:                          # the child's later output goes to the parent's error stream
                    sys.stderr.buffer.write(line)
                    sys.stderr.flush()
            ready.set()
        threading.Thread(target=read, name=f"out-{self.name}", daemon=True).start()
        if not ready.wait(timeout) or not got or self.ready_text.encode() not in got[-1]:
            self.kill()
            tail = b"".join(got).decode(errors="replace")[-800:]
            raise RuntimeError(f"{self.name} did not start within {timeout:.0f} s: {tail.strip()}")

    def may_restart(self) -> bool:
        return len(self.starts) < RESTARTS_PER_MINUTE or time.monotonic() - self.starts[0] > 60

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()

    def wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The service's listening socket, to be inherited by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """The parent of a service's devices and workers (see the module's docstring)."""

    def __init__(self, devices: list[Child], workers: list[Child]) -> None:
        self.devices = devices
        self.workers = workers
        self.stopping = threading.Event()

    def start(self) -> None:
        try:
            for child in [*self.devices, *self.workers]:
                child.start()
        except BaseException:
            self.stop()
            raise

    def watch(self, poll: float = 0.2, stop: threading.Event | None = None) -> None:
        """Restart what dies until ``stop`` (or :attr:`stopping`) is set."""
        stop = stop or self.stopping
        while not stop.wait(poll):
            for child in [*self.devices, *self.workers]:
                if stop.is_set() or child.alive():
                    continue
                if not child.may_restart():
                    continue
                code = child.proc.returncode if child.proc is not None else None
                log.warning("%s (pid %s) ended with %s; starting it again", child.name, child.pid, code)
                try:
                    child.start()
                except Exception as e:          # tried again on the next round, within the restart budget
                    log.error("%s did not start again: %s", child.name, e)

    def stop(self) -> None:
        self.stopping.set()
        for group in (self.workers, self.devices):
            for child in group:
                child.terminate()
            for child in group:
                child.wait(STOP_TIMEOUT)


def run_supervised(supervisor: Supervisor, announce: Callable[[], str], what: str) -> int:
    """Start everything, print ``announce()`` (the line scripts wait for), restart what dies until SIGINT
    or SIGTERM, then stop everything."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    supervisor.start()
    try:
        print(announce(), flush=True)
        supervisor.watch(stop=stop)
    finally:
        supervisor.stop()
    print(f"{what} stopped", flush=True)
    return 0


def process_gone(pid: int, timeout_s: float) -> bool:
    """True once no process ``pid`` exists (polled), False if it still runs after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def die_with_parent(parent: int | None) -> None:
    """In a child of a :class:`Supervisor` (``parent``: the pid its ``--parent-pid`` option gave; None when
    it was started otherwise): end with the parent (a parent killed with SIGKILL cannot stop its children;
    the kernel sends them SIGTERM instead), and at once if the parent is gone already."""
    if not parent:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):          # not Linux: the parent's SIGTERM is the only stop
        pass
    if os.getppid() != parent:
        sys.exit(0)


def inherited_socket(fd: int) -> socket.socket:
    """The listening socket a worker inherited from its parent."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock

