"""The bridge that puts a simulated card into pcscd's virtual reader (vsmartcard's vpcd driver).

vpcd listens on TCP; the card connects to it, and the reader shows "card present" while the
connection stands. Frames both ways are a 2-byte big-endian length and a payload; a 1-byte payload
is a control byte (00 power off, 01 power on, 02 reset, 04 ATR request), anything longer a C-APDU.

Latency: vpcd sends small frames with Nagle enabled and we would delay our ACKs, which costs about
40 ms per APDU. TCP_NODELAY on our socket, one ``sendall`` per frame and TCP_QUICKACK re-armed
before every read bring a round trip through pcscd down to about a tenth of a millisecond.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)

CTRL_POWER_OFF = 0x00
CTRL_POWER_ON = 0x01
CTRL_RESET = 0x02
CTRL_ATR = 0x04
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 35963           # reader "Virtual PCD 00 00"; 35964 is "Virtual PCD 00 01"
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class VirtualCard(Protocol):
    @property
    def atr(self) -> bytes: ...

    def transmit(self, raw: bytes) -> bytes: ...

    def power_on(self) -> bytes: ...

    def power_off(self) -> None: ...

    def reset(self) -> bytes: ...


class VpcdLink:
    """Keeps one card connected to one vpcd port, reconnecting whenever the link drops."""

    def __init__(self, card: VirtualCard, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 stop: threading.Event | None = None, name: str = "card") -> None:
        self.card = card
        self.host = host
        self.port = port
        self.stop = stop or threading.Event()
        self.name = name
        self.sock: socket.socket | None = None
        self.connected = threading.Event()
        self.apdus = 0

    # ---- connection ---------------------------------------------------------------------
    def _connect(self) -> socket.socket | None:
        delay = 0.05
        while not self.stop.is_set():
            try:
                s = socket.create_connection((self.host, self.port), timeout=2.0)
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return s
            except OSError:
                self.stop.wait(delay)
                delay = min(delay * 2, 1.0)
        return None

    def _read_exact(self, s: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            if _QUICKACK is not None:
                s.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            chunk = s.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    @staticmethod
    def _send(s: socket.socket, payload: bytes) -> None:
        s.sendall(len(payload).to_bytes(2, "big") + payload)       # one call per frame

    # ---- serving ------------------------------------------------------------------------
    def handle(self, payload: bytes) -> bytes | None:
        """Answer one frame; None when the frame needs no answer."""
        if len(payload) == 1:
            ctrl = payload[0]
            if ctrl == CTRL_POWER_OFF:
                self.card.power_off()
            elif ctrl == CTRL_POWER_ON:
                self.card.power_on()
            elif ctrl == CTRL_RESET:
                self.card.reset()
            elif ctrl == CTRL_ATR:
                return self.card.atr
            else:
                log.warning("%s: unknown vpcd control byte %02x", self.name, ctrl)
            return None
        self.apdus += 1
        return self.card.transmit(payload)

    def serve_forever(self) -> None:
        while not self.stop.is_set():
            s = self._connect()
            if s is None:
                break
            self.sock = s
            self.connected.set()
            log.info("%s: connected to vpcd at %s:%d", self.name, self.host, self.port)
            try:
                while not self.stop.is_set():
                    head = self._read_exact(s, 2)
                    if head is None:
                        break
                    payload = self._read_exact(s, int.from_bytes(head, "big"))
                    if payload is None:
                        break
                    answer = self.handle(payload)
                    if answer is not None:
                        self._send(s, answer)
            except OSError as e:
                if not self.stop.is_set():
                    log.info("%s: vpcd link dropped (%s); reconnecting", self.name, e)
            finally:
                self.connected.clear()
                self.sock = None
                try:
                    s.close()
                except OSError:
                    pass
                self.card.power_off()               # a dropped link is a pulled card
            if not self.stop.is_set():
                time.sleep(0.05)

    def shutdown(self) -> None:
        self.stop.set()
        s = self.sock
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(links: list[VpcdLink], stop: threading.Event) -> None:
    """Run every link in its own thread until ``stop`` is set, then close them all."""
    threads = [threading.Thread(target=link.serve_forever, name=f"vpcd-{link.name}", daemon=True) for link in links]
    for t in threads:
        t.start()
    try:
        while not stop.wait(0.2):
            pass
    finally:
        for link in links:
            link.shutdown()
        for t in threads:
            t.join(timeout=5)
