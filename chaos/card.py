"""The buyer's card as a real process that can be torn (SIGKILL) at a chosen APDU and re-inserted.

Why a process and not the in-process simulator: a SIGKILL is a real death in the middle of whatever
the card was doing, including writing its image (``--write-chunk`` makes writes slow enough to be
torn). The card connects to a vpcd-style socket this object listens on (the framing of
:class:`bench.tearing.VpcdServerConnection`), without pcscd: the machine's one pcscd is shared with
other work, and a card restart through pcscd costs seconds.

After a tear the next APDU re-inserts the card (starts the process again on the same image), as a
user would when the client asks for the card again: the client's own recovery (e.g. reading a
debit proof back from the card's log) then runs against the restarted card. Every wait is bounded.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from semper.bench.tearing import VpcdServerConnection
from semper.hardware import errors as hw

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 15.0


@dataclass
class TearArm:
    """Tear at the ``apdu``-th APDU from arming: ``before`` it is sent, or ``during`` (sent, then killed
    after ``delay_ms``, so the card may be in the middle of committing it)."""

    apdu: int
    mode: str = "before"
    delay_ms: float = 0.0


class TearableCard:
    """A connection object (``transmit``, ``atr``) to a card process that can be torn and comes back."""

    reader = "chaos buyer card"

    def __init__(self, image: Path, *, write_chunk: int = 8) -> None:
        self.image = Path(image)
        self.write_chunk = write_chunk
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(START_TIMEOUT)
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: VpcdServerConnection | None = None
        self.lock = threading.RLock()
        self.arm: TearArm | None = None
        self.count = 0                       # APDUs since arming
        self.torn: list[str] = []            # what happened, for the report ("APDU 7 (INS 54) during")
        self.restarts = 0

    # ---- the process ------------------------------------------------------------------------------
    def start(self) -> TearableCard:
        with self.lock:
            port = self.server.getsockname()[1]
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "semper.card_applet_sim", str(self.image), "--port", str(port), "--no-sync",
                 "--write-chunk", str(self.write_chunk)], cwd=REPO, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            try:
                sock, _ = self.server.accept()
            except TimeoutError:
                self.proc.kill()
                self.proc.wait(5)
                raise hw.ReaderError(f"the card process on {self.image} did not connect within "
                                     f"{START_TIMEOUT:.0f} s") from None
            self.conn = VpcdServerConnection(sock)
            self.conn.power_on()
            return self

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def reinsert(self) -> None:
        """Start the card again on its image (after a tear, or to be sure it is there)."""
        with self.lock:
            self._kill()
            self.start()
            self.restarts += 1

    def close(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            self.server.close()

    # ---- arming -----------------------------------------------------------------------------------
    def set_arm(self, arm: TearArm | None) -> None:
        with self.lock:
            self.arm, self.count, self.torn = arm, 0, []

    # ---- the connection interface -----------------------------------------------------------------
    def transmit(self, apdu: bytes) -> bytes:
        with self.lock:
            if self.conn is None:
                self.reinsert()                 # the user puts the card back when the client asks for it
            assert self.conn is not None
            self.count += 1
            arm = self.arm
            if arm is not None and self.count == arm.apdu:
                self.arm = None
                ins = apdu[1] if len(apdu) > 1 else 0
                self.torn.append(f"card-tear at APDU {self.count} (INS {ins:02X}) {arm.mode}"
                                 + (f" +{arm.delay_ms:.1f} ms" if arm.mode == "during" else ""))
                if arm.mode == "during":
                    try:
                        sock = self.conn.sock
                        sock.sendall(len(apdu).to_bytes(2, "big") + apdu)
                    except OSError:
                        pass
                    time.sleep(arm.delay_ms / 1000)
                self._kill()
                raise hw.CardRemovedError("the card was pulled (chaos: torn)")
            return self.conn.transmit(apdu)

    @property
    def atr(self) -> bytes:
        with self.lock:
            if self.conn is None:
                self.reinsert()
            assert self.conn is not None
            return self.conn.atr
