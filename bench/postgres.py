"""A PostgreSQL cluster of one's own, for the tests, ``semper chaos --db postgresql`` and the benches.

Why its own: a test or a chaos run must never touch a system PostgreSQL, and several engineers run
them on one machine at once. So each user of this module runs ``initdb`` in a fresh folder under
/tmp, starts the server with ``pg_ctl`` listening only on a unix socket in that folder (no TCP port to
collide on), and stops it at the end by the postmaster's pid. Every wait is bounded.

PostgreSQL refuses to run as root. As root (this project's machines), the cluster runs as an
unprivileged user: ``semper-pg``, created on first use (a system account without a home or a shell),
or ``nobody`` where no account can be made; the folder is made over to that user. As anyone else
it runs as the current user.

Durability is switched off (``fsync``, ``synchronous_commit``, ``full_page_writes``): such a cluster
lives for one session, and crashes of the services are simulated above the database.
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from semper.client.support.prefork import process_gone

PG_BIN_CANDIDATES = tuple(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
CLUSTER_USER = "semper-pg"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
SUPERUSER = "postgres"


def pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian keeps them off PATH), or None: not installed."""
    for folder in PG_BIN_CANDIDATES:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if pg_bin() is None:
        return ("PostgreSQL is not installed (initdb/pg_ctl not found under /usr/lib/postgresql/*/bin); "
                "'make test' installs Debian's postgresql")
    try:
        import psycopg  # noqa: F401  (imported only to see that it is installed)
        import psycopg_pool  # noqa: F401  (the same)
    except ImportError:
        return "psycopg or psycopg_pool is missing from the virtual environment (make venv installs them)"
    return None


def _cluster_account() -> pwd.struct_passwd | None:
    """The unprivileged account to run the cluster as (None: run as ourselves, we are not root)."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(CLUSTER_USER)
    if shutil.which("useradd"):
        # another session may be creating it at the same moment: its failure is fine if the account exists
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", CLUSTER_USER], capture_output=True, timeout=60)
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(CLUSTER_USER)
    return pwd.getpwnam("nobody")


@dataclass
class PostgresCluster:
    """One running cluster; :meth:`new_database` hands out a fresh, empty database and its URL."""

    folder: Path
    bin: Path
    account: pwd.struct_passwd | None
    pid: int | None = None
    owner: int = field(default_factory=os.getpid)     # the process that started it (a forked child must not stop it)
    durable: bool = False
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` over the cluster's unix socket."""
        return f"postgresql://{SUPERUSER}@/{database}?host={quote(str(self.socket_dir), safe='')}"

    # ---- lifecycle --------------------------------------------------------------------------------
    @classmethod
    def start(cls, durable: bool = False) -> PostgresCluster:
        """``durable``: commits flushed to disk as in production (``fsync``, ``synchronous_commit``,
        ``full_page_writes`` on), for a benchmark whose figures must carry that cost; off otherwise."""
        folder_bin = pg_bin()
        if folder_bin is None:
            raise RuntimeError(missing_reason() or "PostgreSQL is not installed")
        account = _cluster_account()
        folder = Path(tempfile.mkdtemp(prefix="semper-pg-"))
        cluster = cls(folder, folder_bin, account, durable=durable)
        try:
            cluster._init_and_start()
        except BaseException:
            cluster.stop()
            raise
        atexit.register(cluster.stop)            # a session that dies past its fixture still stops the server
        return cluster

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        kw: dict[str, Any] = {}
        if self.account is not None:
            kw = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=self.folder, env=env,
                              **kw)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc

    def _own_folder(self) -> None:
        if self.account is not None:
            os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)
        self.folder.chmod(0o700)

    def _init_and_start(self) -> None:
        self._own_folder()
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-instructions", "--no-sync", timeout=120)
        self._start()

    def _start(self) -> None:
        options = " ".join([
            "-c listen_addresses=''", f"-c unix_socket_directories={self.socket_dir}",
            *(() if self.durable else ("-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off")),
            "-c max_connections=200", "-c shared_buffers=32MB", "-c max_pred_locks_per_transaction=256",
        ])
        self._run(str(self.bin / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.folder / "server.log"),
                  "-w", "-t", str(START_TIMEOUT_S), "-o", options, timeout=START_TIMEOUT_S + 30)
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def replica(self) -> PostgresCluster:
        """A hot standby of this cluster: a base backup streamed over the primary's unix socket, started
        read-only on a socket of its own, following the primary's write-ahead log (docs/deployment.md: the
        auditor reads from a replica). Stopped like any cluster."""
        standby = PostgresCluster(Path(tempfile.mkdtemp(prefix="semper-pg-replica-")), self.bin, self.account,
                                  durable=self.durable)
        try:
            standby._own_folder()
            standby._run(str(self.bin / "pg_basebackup"), "-D", str(standby.data), "-h", str(self.socket_dir),
                         "-U", SUPERUSER, "-X", "stream", "-R", "--no-sync", "-c", "fast", timeout=120)
            standby._start()
        except BaseException:
            standby.stop()
            raise
        atexit.register(standby.stop)
        return standby

    def caught_up(self, primary: PostgresCluster, timeout_s: float = 30.0) -> None:
        """Wait (bounded) until this standby has replayed everything ``primary`` has written so far."""
        import psycopg
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        target = str(row[0]) if row else "0/0"
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.url(), autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
                if row and row[0]:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica did not reach the primary's {target} within {timeout_s:.0f} s")
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server by its pid (fast shutdown, then immediate, then kill), remove the folder."""
        if os.getpid() != self.owner:
            return
        pid, self.pid = self.pid, None
        if pid is not None:
            for sig, wait_s in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                if process_gone(pid, wait_s):
                    break
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---- databases --------------------------------------------------------------------------------
    def new_database(self, prefix: str = "t", template: str | None = None) -> str:
        """Create a database (empty, or a copy of ``template``) and return its URL."""
        import psycopg
        with self._lock:
            name = f"{prefix}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

