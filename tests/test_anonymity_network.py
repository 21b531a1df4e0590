"""What the network tells a server about an anonymous buyer: no client certificate, no identifier a
server can plant and read back (cookies), no header that names the user, and a new TLS connection once the
client's connections are closed (Python's client never offers a saved session unless told to, so a new
connection is a full handshake), as an anonymous deal does before and after it
(``client/commerce/anonymity.py``).

The server here is a plain TLS server that *asks* for a client certificate and sets a cookie on every
answer; it records what each connection showed it.
"""
from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from semper.client.support.channels import JsonClient


@dataclass
class Seen:
    connections: int = 0
    peer_certs: list[object] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def _tls_files(folder: Path) -> tuple[str, Path, Path]:
    """A CA root and a server certificate for 127.0.0.1 (the semper CA's own tooling)."""
    from semper.client.demo_world import World
    from semper.client.servers.ca_home import issue_tls_identity
    world = World.create(folder, people=())
    chain, key = issue_tls_identity(world.ca, ("127.0.0.1",), folder / "tls", name="probe server")
    return world.root_pem, chain, key


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Seen]]:
    root, chain, key = _tls_files(tmp_path_factory.mktemp("probe"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(chain), str(key))
    ctx.load_verify_locations(cadata=root)
    ctx.verify_mode = ssl.CERT_OPTIONAL                   # asks every client for a certificate
    seen = Seen()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def handle(conn: ssl.SSLSocket) -> None:
        conn.settimeout(5)
        seen.connections += 1
        seen.peer_certs.append(conn.getpeercert())
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
                seen.headers.append(headers)
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                body = json.dumps({"ok": True}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: track=buyer-42; "
                             b"Path=/\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = sock.accept()
            except TimeoutError:
                continue
            try:
                conn = ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"https://127.0.0.1:{sock.getsockname()[1]}", root, seen
    stop.set()
    t.join(5)
    sock.close()


def test_no_client_certificate_and_no_cookie_comes_back(server: tuple[str, str, Seen]) -> None:
    url, root, seen = server
    first = len(seen.headers)
    with JsonClient(url, root) as c:
        c.post("/deals/new", {"workflow": "mail-order"})
        c.post("/deals/pay", {"deal": "x"})
        c.get("/catalogue")
    asked = seen.headers[first:]
    assert len(asked) == 3
    assert all("cookie" not in h for h in asked), asked               # the server's cookie is never sent back
    assert all(not cert for cert in seen.peer_certs)                   # asked for one, shown none
    for h in asked:                                                    # nothing that names a user or a machine
        assert set(h) <= {"host", "accept", "accept-encoding", "connection", "user-agent", "content-type",
                          "content-length"}, h
        assert h.get("user-agent") == "semper"


def test_closing_the_client_means_a_new_tls_session(server: tuple[str, str, Seen]) -> None:
    url, root, seen = server
    before = seen.connections
    c = JsonClient(url, root)
    c.get("/one")
    c.get("/two")                                                      # the same deal: one kept-alive connection
    assert seen.connections == before + 1
    c.close()                                                          # what an anonymous deal does at its end
    c.get("/three")
    c.close()
    assert seen.connections == before + 2
