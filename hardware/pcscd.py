"""Starting and stopping a pcscd with vpcd virtual readers (demo, tests, benches).

pcsc-lite 1.9 keeps its socket at /run/pcscd/pcscd.comm, so one pcscd serves the machine; we give it
our own reader.conf directory (``-c``) so the vpcd ports are ours, and stop it by pid.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import errors

VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
SOCKET = Path("/run/pcscd/pcscd.comm")
LOCK = Path(tempfile.gettempdir()) / "semper-pcscd.lock"
LOCK_WAIT = 600.0


class _MachineLock:
    """One pcscd per machine: semper processes that start one take turns instead of colliding."""

    def __init__(self) -> None:
        self.fd = -1

    def acquire(self, timeout: float = LOCK_WAIT) -> None:
        import fcntl
        self.fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    self.fd = -1
                    raise errors.ReaderError(f"another semper process kept pcscd for {timeout:.0f} s; "
                                             "giving up") from None
                time.sleep(0.1)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @staticmethod
    def held_elsewhere() -> bool:
        import fcntl
        fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


def reader_names(count: int = 1) -> list[str]:
    """Names pcscd gives the readers of ``count`` vpcd entries (two slots each)."""
    return [f"Virtual PCD {i:02X} {slot:02X}" for i in range(count) for slot in (0, 1)]


def service_running() -> bool:
    if not SOCKET.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(SOCKET))
        return True
    except OSError:
        return False


def free_port_pair(start: int = 36000, end: int = 40000) -> int:
    """A port P such that P and P+1 are both free on this machine."""
    import random
    for _ in range(200):
        port = random.randrange(start, end, 2)
        ok = True
        for p in (port, port + 1):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("0.0.0.0", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise errors.ReaderError("no free TCP port pair for the virtual reader")


@dataclass
class Pcscd:
    """A pcscd this process started; ``port`` is reader "Virtual PCD 00 00", port+1 is "... 00 01"."""

    port: int = 35963
    config_dir: Path | None = None
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    _tmp: str | None = field(default=None, repr=False)
    _lock: _MachineLock = field(default_factory=_MachineLock, repr=False)

    def start(self, timeout: float = 10.0) -> Pcscd:
        self._lock.acquire()
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> Pcscd:
        if shutil.which("pcscd") is None and not Path("/usr/sbin/pcscd").exists():
            raise errors.ReaderError("pcscd is not installed; run 'make demo' or 'make test' to install it")
        if not Path(VPCD_DRIVER).exists():
            raise errors.ReaderError("the vpcd reader driver is missing; install the Debian package vsmartcard-vpcd")
        for _ in range(50):                 # the previous holder's pcscd may still be going down
            if not service_running():
                break
            time.sleep(0.1)
        if service_running():
            raise errors.ReaderError(
                "another pcscd is already running (socket /run/pcscd/pcscd.comm answers); stop it first "
                "(e.g. 'pkill pcscd') or use it with 'semper card serve'")
        self._tmp = tempfile.mkdtemp(prefix="semper-pcscd-")
        self.config_dir = Path(self._tmp) / "reader.conf.d"
        self.config_dir.mkdir()
        (self.config_dir / "vpcd").write_text(
            f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME   /dev/null:0x{self.port:04X}\n'
            f"LIBPATH      {VPCD_DRIVER}\nCHANNELID    0x{self.port:04X}\n")
        self.log_path = Path(self._tmp) / "pcscd.log"
        binary = shutil.which("pcscd") or "/usr/sbin/pcscd"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen([binary, "-f", "-c", str(self.config_dir)], stdout=log,
                                        stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise errors.ReaderError(f"pcscd exited at start: {self.log_path.read_text(errors='replace')[-500:]}")
            if service_running() and self._listening():
                return self
            time.sleep(0.05)
        self.stop()
        raise errors.ReaderError(f"pcscd did not come up within {timeout:.0f} s")

    def _listening(self) -> bool:
        """vpcd is up when its port is taken (a test connection would look like a card to it)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", self.port))
            except OSError:
                return True
        return False

    def stop(self, timeout: float = 5.0) -> None:
        p = self.process
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)
        self.process = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._lock.release()

    def __enter__(self) -> Pcscd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pid_of_running() -> int | None:
    try:
        return int(Path("/run/pcscd/pcscd.pid").read_text().strip())
    except (OSError, ValueError):
        return None




class VirtualCards:
    """Serve card images to vpcd in a child process, with a pcscd of our own when none runs.

    ``readers`` lists the reader name of each image, in order. Everything started is stopped on
    exit; every wait is bounded.
    """

    def __init__(self, images: list[Path], *, sync: bool = True, timeout: float = 15.0) -> None:
        if not 1 <= len(images) <= 2:
            raise ValueError("one or two card images (buyer card, PSAM)")
        self.images = images
        self.sync = sync
        self.timeout = timeout
        self.pcscd: Pcscd | None = None
        self.server: subprocess.Popen | None = None
        self.readers: list[str] = reader_names()[:len(images)]
        self.port = 35963

    def __enter__(self) -> VirtualCards:
        import sys

        from .readers import wait_for_card
        if not service_running() or _MachineLock.held_elsewhere():
            # no pcscd, or one that another semper process started: start (or wait for) our own
            self.pcscd = Pcscd(port=free_port_pair())
            self.pcscd.start()
            self.port = self.pcscd.port
        # else: a pcscd this machine runs by itself, with the default vpcd configuration
        cmd = [sys.executable, "-m", "semper.card_applet_sim", *map(str, self.images), "--port", str(self.port)]
        if not self.sync:
            cmd.append("--no-sync")
        self.server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            for reader in self.readers:
                if not wait_for_card(reader, self.timeout):
                    err = b""
                    if self.server.poll() is not None and self.server.stderr is not None:
                        err = self.server.stderr.read()
                    raise errors.ReaderError(
                        f"the simulated card did not appear in {reader!r} within {self.timeout:.0f} s"
                        + (f": {err.decode(errors='replace').strip()}" if err else ""))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            if self.server.poll() is None:
                self.server.terminate()
                try:
                    self.server.wait(5)
                except subprocess.TimeoutExpired:
                    self.server.kill()
                    self.server.wait(5)
            if self.server.stderr is not None:
                self.server.stderr.close()
            self.server = None
        if self.pcscd is not None:
            self.pcscd.stop()
            self.pcscd = None
