"""docs/getting-started.md, run command by command: a whole marketplace from the CLI alone.

Every ``sh`` block of the page is taken line by line (``\\`` continues a line; comments and blank lines
are skipped) and run with bash in one empty folder, as a reader would type it. Shell variables carry
from one command to the next (each command starts from the variables the ones before left). What
the test changes, and only this:

* the ports: the page's ``export CA_PORT=... VPCD_PORT=...`` line is replaced by free ports, so the
  test never collides with another service on the machine;
* ``sudo pcscd ...``: the test starts a pcscd of its own (``hardware/pcscd.py``, the machine-wide
  lock makes concurrent test runs take turns) whose vpcd listens on ``VPCD_PORT``;
* a line ending in ``&`` is a service: it is started in the background and the test waits (bounded)
  for the line it prints when ready (``listening on`` / ``-> vpcd``); all are stopped at the end.

Every other command must exit 0; the lines after a ``# expect: TEXT`` comment must print TEXT.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from semper.hardware.pcscd import Pcscd, free_port_pair

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "getting-started.md"
PORTS = ("CA_PORT", "BANK_PORT", "TTP_PORT", "SHOP_PORT")
READY = ("listening on", "-> vpcd")


@dataclass
class Step:
    line: int
    command: str
    expect: list[str] = field(default_factory=list)


def steps(page: Path = PAGE) -> list[Step]:
    out: list[Step] = []
    in_sh = False
    pending: list[str] = []
    expect: list[str] = []
    start = 0
    for number, raw in enumerate(page.read_text().splitlines(), 1):
        if raw.startswith("```"):
            in_sh = raw.strip() == "```sh" if not in_sh else False
            continue
        if not in_sh:
            continue
        line = raw.rstrip()
        if not pending:
            stripped = line.strip()
            if stripped.startswith("# expect:"):
                expect.append(stripped.removeprefix("# expect:").strip())
                continue
            if not stripped or stripped.startswith("#"):
                continue
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        out.append(Step(start, " ".join(p.strip() for p in pending), expect))
        pending, expect = [], []
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Shell:
    """Runs the page's commands in ``folder``, carrying shell variables from one to the next."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.state = folder / ".shell-state"
        self.state.write_text("")
        base = subprocess.run(["bash", "-c", "compgen -v"], capture_output=True, text=True, env=env, timeout=10)
        self.base = set(base.stdout.split()) | {"BASH_REMATCH", "PIPESTATUS", "_"}
        self.services: list[subprocess.Popen[str]] = []

    def _script(self, command: str, keep: bool) -> str:
        save = ""
        if keep:
            names = " ".join(sorted(self.base))
            save = (f'; __rc=$?; for __v in $(compgen -v); do case " {names} __rc __v " in *" $__v "*) ;; '
                    f'*) declare -p "$__v";; esac; done > {shlex.quote(str(self.state))}.new; exit $__rc')
        return f"set -o pipefail; source {shlex.quote(str(self.state))}; {command}{save}"

    def run(self, step: Step, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["bash", "-c", self._script(step.command, keep=True)], cwd=self.folder, env=self.env,
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        new = Path(f"{self.state}.new")
        if r.returncode == 0 and new.exists():
            new.replace(self.state)
        return r

    def background(self, step: Step, timeout: float = 60) -> str:
        command = step.command.rstrip().removesuffix("&").rstrip()
        proc = subprocess.Popen(["bash", "-c", self._script(f"exec {command}", keep=False)], cwd=self.folder,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.services.append(proc)
        seen: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                seen.append(line)
                if any(mark in line for mark in READY):
                    ready.set()
        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.is_set() and time.monotonic() < deadline and proc.poll() is None:
            ready.wait(0.1)
        time.sleep(0.05)
        assert ready.is_set(), f"line {step.line}: {command!r} did not get ready: {''.join(seen)[-2000:]}"
        return "".join(seen)

    def stop(self) -> None:
        for proc in reversed(self.services):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.services):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_the_page_has_the_marketplace_and_the_commands_it_promises() -> None:
    text = " ".join(s.command for s in steps())
    for needed in ("semper ca init", "semper serve ca", "semper bank init", "semper serve bank", "semper ttp init",
                   "semper serve ttp", "semper shop init", "semper serve shop", "semper card new", "semper register",
                   "semper card load", "semper wallet withdraw", "semper shop clear", "semper deals",
                   "-w information", "-w registration", "-w contract", "--anonymous", "--pay cheque", "--pay setpay",
                   "--pay card-purse"):
        assert needed in text, needed
    assert not re.search(r"\bpython\b", text), "the page must build the marketplace with semper commands alone"


@pytest.mark.pcsc
@pytest.mark.timeout(600)
def test_getting_started_runs_command_by_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SEMPER_", "SOFTHSM2_CONF", "PYTEST", "COV_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    ports = {name: str(free_port()) for name in PORTS}
    pcscd = Pcscd(port=free_port_pair())
    shell = Shell(tmp_path, env)
    ran: list[str] = []
    started = time.monotonic()
    try:
        for step in steps():
            if re.match(r"export CA_PORT=", step.command):
                ports["VPCD_PORT"] = str(pcscd.port)
                with shell.state.open("a") as f:
                    f.write("".join(f"declare -x {k}={v}\n" for k, v in ports.items()))
                continue
            if step.command.startswith("sudo pcscd"):
                pcscd.start()
                continue
            if step.command.endswith("&"):
                shell.background(step)
                ran.append(step.command)
                continue
            r = shell.run(step)
            assert r.returncode == 0, (f"docs/getting-started.md line {step.line}: {step.command}\n"
                                       f"exit {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-2500:]}")
            for text in step.expect:
                assert text in r.stdout, (f"line {step.line}: {step.command}: expected {text!r} in:\n{r.stdout}")
            ran.append(step.command)
    finally:
        shell.stop()
        pcscd.stop()
    assert len(ran) > 40
    print(f"getting-started: {len(ran)} commands in {time.monotonic() - started:.1f} s")
