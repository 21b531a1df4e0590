"""A ``semper serve ROLE`` process for tests: started with the token PIN on stdin, URL read from its
first line (bounded wait), stopped with SIGTERM (then SIGKILL)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Served:
    def __init__(self, role: str, pin: str, env: dict[str, str], *extra: str, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "semper.client.cli", "serve", role, "--port", "0",
                                      "--pin-stdin",
                                      *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=REPO)
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(pin + "\n")
        self.proc.stdin.close()
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or "listening on" not in line[0]:
            self.stop()
            raise AssertionError(f"serve {role} did not start: {line} "
                                 f"{self.proc.stderr.read() if self.proc.stderr else ''}")
        self.url = line[0].split("listening on ")[1].strip()

    def stop(self) -> str:
        """Stop the process; returns what it printed after its first line."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rest = self.proc.stdout.read() if self.proc.stdout and not self.proc.stdout.closed else ""
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
        return rest
