"""A loopback proxy in front of one party (shop, bank or third party) that injects one fault at a
chosen request.

Why it terminates TLS: the links are HTTPS pinned to the CA root, so a plain TCP proxy could only
count packets, and where a packet boundary falls depends on timing (TLS session resumption,
coalesced records). This proxy presents the party's own certificate and key (it stands where a TLS
load balancer of the party would), reads whole HTTP requests and answers, and forwards them over a
second TLS connection that checks the party's certificate. A fault fires at the n-th request since
arming, so a run's seed names the same message every time:

* ``drop`` / ``up``: the request is not forwarded and the client's connection is cut (the party
  never saw it);
* ``drop`` / ``down``: the party handled the request and answered; the answer is thrown away and
  the connection cut (the client cannot know whether the party acted);
* ``crash`` / ``up`` or ``down``: the same moments, and the party's process is SIGKILLed there and
  then and started again on its folder, while new connections wait for it (bounded);
* ``crash`` / ``during``: the request is forwarded, and ``delay_ms`` later the party is SIGKILLed,
  whatever it is doing then (still reading, in its database transaction, signing, answering); the
  client's connection is cut either way, so it cannot know how far the party got.

The proxy's port never changes, so a party restarted on a new port stays reachable at the address
every other party was configured with.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from semper.hardware.errors import SemperError

CONNECT_WAIT = 30.0
IO_TIMEOUT = 30.0
MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024


class Restartable(Protocol):
    def kill(self) -> None: ...            # SIGKILL, now

    def start(self) -> int: ...            # start again on its folder; its new port


@dataclass
class LinkFault:
    action: str          # "drop" | "crash"
    direction: str       # "up": before forwarding the request | "down": after the answer, before delivering it
    #                      | "during" (crash): delay_ms after forwarding it, answered or not
    at: int              # the request (1-based, counted since arming) it fires at
    delay_ms: float = 0.0


class _Cut(SemperError):
    """End this client connection now (a fault fired, or a side went away)."""


def _read_message(f: BinaryIO, *, response: bool) -> tuple[bytes, bytes]:
    """One HTTP/1.1 message: (head, body). Bodies by Content-Length or chunked; bounded."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline(MAX_HEAD)
        if not line:
            raise _Cut("closed")
        head += line
        if len(head) > MAX_HEAD:
            raise _Cut("head too large")
        if head == b"\r\n":                 # stray blank line between messages
            head = b""
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line = f.readline(1024)
            if not size_line:
                raise _Cut("closed in a chunk")
            body += size_line
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            data = f.read(size + 2)
            body += data
            if size == 0:
                while data not in (b"\r\n", b""):      # trailers end with an empty line
                    data = f.readline(1024)
                    body += data
                break
            if len(body) > MAX_BODY:
                raise _Cut("body too large")
        return head, body
    length = int(fields.get("content-length", "0") or 0)
    if length > MAX_BODY:
        raise _Cut("body too large")
    body = f.read(length) if length else b""
    if len(body) != length:
        raise _Cut("closed in a body")
    if response and "content-length" not in fields and lines[0].split(" ")[1:2] not in (["204"], ["304"]):
        body = f.read(MAX_BODY)             # an answer delimited by the connection's end
    return head, body


class FaultProxy:
    def __init__(self, name: str, target_port: int, party: Restartable | None, *, tls: tuple[Path, Path],
                 upstream_root: str) -> None:
        from semper.client.support.channels import client_context, server_context
        self.name = name
        self.target = target_port
        self.party = party
        self.server_ctx = server_context(*tls)
        self.client_ctx = client_context(upstream_root)
        self.fault: LinkFault | None = None
        self.requests = 0
        self.seen: list[str] = []                 # "POST /deals/pay" per request since arming
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
            self.fault, self.requests, self.seen, self.fired = fault, 0, [], []

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

    def _track(self, *socks: socket.socket, add: bool = True) -> None:
        with self.lock:
            if add:
                self._conns.update(socks)
            else:
                self._conns.difference_update(socks)

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(IO_TIMEOUT)
        upstream: ssl.SSLSocket | None = None
        client: ssl.SSLSocket | None = None
        self._track(raw)
        try:
            client = self.server_ctx.wrap_socket(raw, server_side=True)
            cf = client.makefile("rb")
            uf: BinaryIO | None = None
            while True:
                head, body = _read_message(cf, response=False)
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                label = " ".join(request_line.split(" ")[:2])
                fault = self._count(label)
                if fault is not None and fault.direction == "up":
                    self._fire(fault, label)
                    raise _Cut("fault")
                if upstream is None:
                    upstream = self._connect()
                    self._track(upstream)
                    uf = upstream.makefile("rb")
                assert uf is not None
                upstream.sendall(head + body)
                if fault is not None and fault.direction == "during":
                    time.sleep(fault.delay_ms / 1000)
                    self._fire(fault, label)
                    raise _Cut("fault")
                rhead, rbody = _read_message(uf, response=True)
                if fault is not None:
                    self._fire(fault, label)
                    raise _Cut("fault")
                client.sendall(rhead + rbody)
                if b"connection: close" in head.lower() or b"connection: close" in rhead.lower():
                    raise _Cut("close")
        except (_Cut, OSError, ValueError, ssl.SSLError):
            pass
        finally:
            for s in (upstream, client, raw):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
            self._track(raw, add=False)
            if upstream is not None:
                self._track(upstream, add=False)

    def _connect(self) -> ssl.SSLSocket:
        if not self.ready.wait(CONNECT_WAIT):          # the party is being restarted: wait for it, bounded
            raise _Cut("the party did not come back")
        sock = socket.create_connection(("127.0.0.1", self.target), timeout=IO_TIMEOUT)
        return self.client_ctx.wrap_socket(sock, server_hostname="127.0.0.1")

    def _count(self, label: str) -> LinkFault | None:
        with self.lock:
            self.requests += 1
            self.seen.append(label)
            f = self.fault
            if f is not None and self.requests == f.at:
                self.fault = None
                return f
        return None

    def _fire(self, f: LinkFault, label: str) -> None:
        when = {"up": "before forwarding", "down": "after its answer",
                "during": f"{f.delay_ms:.1f} ms after forwarding"}[f.direction]
        self.fired.append(f"{f.action} {self.name} at request {f.at} ({label}, {when})")
        if f.action == "crash":
            self._crash()

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
            except Exception as e:               # the run's checks then find the party down
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
