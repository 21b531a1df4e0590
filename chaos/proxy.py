"""A loopback TCP proxy in front of one party (shop, bank or third party) that injects one fault.

Why TCP and not HTTP: the links are TLS end to end (pinned to the CA root), so the proxy cannot see
requests; it counts the data chunks each way instead. A fault fires at the n-th chunk of one
direction since arming:

* ``drop`` on ``up`` (client to party): that chunk is not forwarded and both sides are cut (the
  request never arrived, or arrived only in part);
* ``drop`` on ``down`` (party to client): the party has answered (it committed), the answer is
  thrown away and both sides are cut;
* ``crash`` on ``up`` / ``down``: the same moment, and the party's process is SIGKILLed there and
  then restarted on its folder, while new connections wait for it (bounded).

The proxy's own port never changes, so a party restarted on a new port stays reachable at the
address every other party was configured with.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Protocol

CONNECT_WAIT = 30.0
IO_TIMEOUT = 30.0


class Restartable(Protocol):
    def kill(self) -> None: ...            # SIGKILL, now

    def start(self) -> int: ...            # start again on its folder; its new port


@dataclass
class LinkFault:
    action: str          # "drop" | "crash"
    direction: str       # "up" (client -> party) | "down" (party -> client)
    chunk: int           # fires at this chunk (1-based) of that direction since arming


class FaultProxy:
    def __init__(self, name: str, target_port: int, party: Restartable | None = None) -> None:
        self.name = name
        self.target = target_port
        self.party = party
        self.fault: LinkFault | None = None
        self.counts = {"up": 0, "down": 0}
        self.fired: list[str] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.ready.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.5)
        self.port = self.server.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self.thread = threading.Thread(target=self._accept, name=f"proxy-{name}", daemon=True)
        self.thread.start()

    # ---- arming -----------------------------------------------------------------------------------
    def arm(self, fault: LinkFault | None) -> None:
        with self.lock:
            self.fault, self.counts, self.fired = fault, {"up": 0, "down": 0}, []

    def retarget(self, port: int) -> None:
        with self.lock:
            self.target = port

    # ---- serving ----------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if not self.ready.wait(CONNECT_WAIT):          # the party is being restarted: wait for it, bounded
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.settimeout(IO_TIMEOUT)
        with self.lock:
            self._conns |= {client, upstream}
        t = threading.Thread(target=self._pump, args=(client, upstream, "up", (client, upstream)), daemon=True)
        t.start()
        self._pump(upstream, client, "down", (client, upstream))
        t.join(IO_TIMEOUT)
        for s in (client, upstream):
            s.close()
        with self.lock:
            self._conns -= {client, upstream}

    def _fires(self, direction: str) -> LinkFault | None:
        with self.lock:
            self.counts[direction] += 1
            f = self.fault
            if f is not None and f.direction == direction and self.counts[direction] == f.chunk:
                self.fault = None
                self.fired.append(f"{f.action} {self.name} at {direction} chunk {f.chunk}")
                return f
        return None

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, pair: tuple[socket.socket, ...]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                fault = self._fires(direction)
                if fault is not None:
                    if fault.action == "crash":
                        self._crash()
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _crash(self) -> None:
        """Kill the party now and start it again in the background; new connections wait meanwhile."""
        party = self.party
        if party is None:
            return
        self.ready.clear()
        party.kill()
        with self.lock:
            conns = list(self._conns)
        for s in conns:                          # a dead process's connections all end at once
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def restart() -> None:
            try:
                self.retarget(party.start())
            except Exception as e:               # reported by the run's checks: the party stays down
                self.fired.append(f"restart of {self.name} failed: {e}")
            finally:
                self.ready.set()
        threading.Thread(target=restart, name=f"restart-{self.name}", daemon=True).start()

    def wait_ready(self, timeout: float = CONNECT_WAIT) -> bool:
        return self.ready.wait(timeout)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()
