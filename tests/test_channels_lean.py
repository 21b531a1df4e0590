"""The synchronous JSON client's own HTTP/1.1 (``channels.JsonClient``) against a loopback HTTPS server
this file controls: kept-alive connections, a server that drops them, answers that never come, and
what is (and is never) sent twice. Every wait is bounded."""
from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from semper.client.support import channels
from semper.client.support.channels import (
    AnswerLost,
    ChannelError,
    JsonClient,
    ServiceError,
    TlsError,
    UnreachableError,
    server_context,
)

WAIT = 5.0                      # seconds any one wait in this file may take


# ---- certificates: a CA and a server certificate for 127.0.0.1 and localhost ---------------------------
@dataclass(frozen=True)
class Pki:
    root_pem: str
    chain: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(folder: Path, label: str, names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(f"{label} CA")).issuer_name(_name(f"{label} CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) if n[0].isalpha() else
                                                        x509.IPAddress(ipaddress.ip_address(n)) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (folder / "chain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (folder / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return Pki(ca.public_bytes(pem).decode(), folder / "chain.pem", folder / "key.pem")


# ---- the server ----------------------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


# what the server does with a request: the bytes to send (None: nothing), and whether to close afterwards
# (True; "reset": closed with a TCP reset instead of a FIN)
Behaviour = Callable[[Request], tuple[bytes | None, bool | str]]


def answer(status: int, obj: object, extra: str = "", reason: str = "OK") -> bytes:
    body = json.dumps(obj).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def echo(req: Request) -> tuple[bytes | None, bool | str]:
    return answer(200, {"method": req.method, "path": req.path, "body": req.body.decode()}), False


@dataclass
class Server:
    """HTTPS on 127.0.0.1, one thread per connection; counts handshakes and the requests it read."""

    context: ssl.SSLContext
    behave: Behaviour = echo
    handshakes: int = 0
    received: list[Request] = field(default_factory=list)
    connections: list[ssl.SSLSocket] = field(default_factory=list)
    idle: threading.Event = field(default_factory=threading.Event)     # a connection was closed by the server
    may_reset: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Server:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()
        return self

    def close(self) -> None:
        self.stop.set()
        for t in list(self.threads):
            t.join(WAIT)
        self.listener.close()

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for r in self.received if r.path == path)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(WAIT)
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            return
        with self.lock:
            self.handshakes += 1
            self.connections.append(conn)
        buf = b""
        try:
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                line, *fields = head.decode("latin-1").split("\r\n")
                method, path, _version = line.split(" ")
                headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
                n = int(headers.get("content-length", "0"))
                while len(buf) < n:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                req = Request(method, path, headers, buf[:n])
                buf = buf[n:]
                with self.lock:
                    self.received.append(req)
                data, close = self.behave(req)
                if data:
                    conn.sendall(data)
                if close == "reset":                # once the client has read the answer: an idle connection
                    self.may_reset.wait(WAIT)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                if close:
                    return
        except OSError:
            return
        finally:
            conn.close()
            self.idle.set()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "lean")


@pytest.fixture()
def serve(pki: Pki) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(behave: Behaviour = echo, context: ssl.SSLContext | None = None) -> Server:
        s = Server(context or server_context(pki.chain, pki.key), behave).start()
        started.append(s)
        return s
    yield start
    for s in started:
        s.close()


# ---- kept alive ----------------------------------------------------------------------------------------
def test_one_handshake_for_many_requests(serve: Callable[..., Server], pki: Pki) -> None:
    s = serve()
    with JsonClient(s.url, pki.root_pem, timeout=WAIT) as c:
        assert c.get("/a") == {"method": "GET", "path": "/a", "body": ""}
        assert c.post("/b", {"x": 1}) == {"method": "POST", "path": "/b", "body": '{"x":1}'}
        for i in range(5):
            assert c.get(f"/c/{i}?q=1")["path"] == f"/c/{i}?q=1"
        assert c.requests == 7
    assert s.handshakes == 1 and len(s.received) == 7
    post = s.received[1]
    assert post.headers["content-type"] == "application/json" and post.headers["content-length"] == "7"
    assert post.headers["user-agent"] == "semper" and post.headers["host"] == f"127.0.0.1:{s.port}"
    assert set(post.headers) <= {"host", "accept", "user-agent", "content-type", "content-length"}


def test_close_drops_the_connections_and_the_client_stays_usable(serve: Callable[..., Server], pki: Pki) -> None:
    s = serve()
    c = JsonClient(s.url, pki.root_pem, timeout=WAIT)
    c.get("/one")
    assert c.idle_connections == 1
    c.close()
    assert c.idle_connections == 0
    c.get("/two")
    c.close()
    assert s.handshakes == 2


def test_a_connection_the_server_closed_while_idle_is_replaced_before_sending(serve: Callable[..., Server],
                                                                            pki: Pki) -> None:
    s = serve(lambda req: (echo(req)[0], True))          # answers, then closes the connection (no Connection: close)
    with JsonClient(s.url, pki.root_pem, timeout=WAIT) as c:
        for i in range(3):
            s.idle.clear()
            assert c.post("/pay", {"i": i})["body"] == json.dumps({"i": i}, separators=(",", ":"))
            assert s.idle.wait(WAIT)
            time.sleep(0.05)                              # the server's close reaches the client's socket
    assert s.count("/pay") == 3 and s.handshakes == 3    # each request sent once, each on a new connection


def test_a_write_that_fails_before_its_first_byte_is_sent_again_on_a_new_connection(
        serve: Callable[..., Server], pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the idle check cannot see: the server resets the connection between the check and the write."""
    s = serve(lambda req: (echo(req)[0], "reset" if req.path == "/first" else False))
    with JsonClient(s.url, pki.root_pem, timeout=WAIT) as c:
        s.idle.clear()
        c.get("/first")
        s.may_reset.set()
        assert s.idle.wait(WAIT)                          # answered, then reset: the next write fails at once
        (conn,) = c._idle[("127.0.0.1", s.port)]
        deadline = time.monotonic() + WAIT
        while not channels._readable(conn.sock) and time.monotonic() < deadline:
            time.sleep(0.01)
        monkeypatch.setattr(channels._Connection, "stale", lambda self: False)   # as if it came a moment later
        assert c.post("/pay", {"n": 1})["path"] == "/pay"
    assert s.count("/pay") == 1 and s.handshakes == 2


# ---- never twice ---------------------------------------------------------------------------------------
def test_a_post_without_an_answer_is_not_sent_again(serve: Callable[..., Server], pki: Pki) -> None:
    def swallow(req: Request) -> tuple[bytes | None, bool | str]:
        return (None, True) if req.path == "/pay" else echo(req)
    s = serve(swallow)
    with JsonClient(s.url, pki.root_pem, timeout=WAIT, name="the shop") as c:
        c.get("/warm")                                    # the POST goes on a kept-alive connection
        with pytest.raises(AnswerLost, match="may have been carried out") as e:
            c.post("/pay", {"amount": 5})
        assert e.value.closed
        with pytest.raises(AnswerLost):
            c.post("/pay", {"amount": 5})                 # and on a new one
        assert c.get("/after")["path"] == "/after"
    assert s.count("/pay") == 2 and s.handshakes == 3     # exactly one receipt per call; /after on a new one


def test_an_answer_cut_in_the_middle_is_lost_not_retried(serve: Callable[..., Server], pki: Pki) -> None:
    s = serve(lambda req: (answer(200, {"long": "x" * 100})[:-20], True))
    with JsonClient(s.url, pki.root_pem, timeout=WAIT) as c, pytest.raises(AnswerLost) as e:
        c.post("/pay", {})
    assert e.value.closed and s.count("/pay") == 1


def test_a_silent_answer_times_out_within_the_bound(serve: Callable[..., Server], pki: Pki) -> None:
    stop = threading.Event()

    def slow(req: Request) -> tuple[bytes | None, bool | str]:
        stop.wait(WAIT)
        return None, True
    s = serve(slow)
    start = time.monotonic()
    with JsonClient(s.url, pki.root_pem, timeout=0.5) as c, pytest.raises(AnswerLost, match="within") as e:
        c.post("/pay", {})
    stop.set()
    assert time.monotonic() - start < 3 and not e.value.closed and s.count("/pay") == 1


# ---- cannot connect ------------------------------------------------------------------------------------
def test_a_certificate_from_another_ca_is_a_tls_error(serve: Callable[..., Server], pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", "other", names=("127.0.0.1",))
    s = serve(context=server_context(other.chain, other.key))
    with pytest.raises(TlsError, match="pinned semper CA root does not vouch for .*check --ca-root"):
        JsonClient(s.url, pki.root_pem, timeout=WAIT).get("/x")
    assert JsonClient(s.url, other.root_pem, timeout=WAIT).get("/x")["path"] == "/x"
    with pytest.raises(TlsError, match="mismatch|localhost"):          # the pinned CA's, for another name
        JsonClient(s.url.replace("127.0.0.1", "localhost"), other.root_pem, timeout=WAIT).get("/x")
    assert len(s.received) == 1


def test_a_refused_port_is_unreachable(pki: Pki) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))                       # bound, not listening: refused
        port = sock.getsockname()[1]
        with pytest.raises(UnreachableError, match="unreachable .*refused.*is the service running"):
            JsonClient(f"https://127.0.0.1:{port}", pki.root_pem, timeout=WAIT).get("/x")


def test_an_unknown_host_is_unreachable(pki: Pki) -> None:
    with pytest.raises(UnreachableError, match="unreachable"):
        JsonClient("https://no-such-host.invalid:8443", pki.root_pem, timeout=WAIT).get("/x")


def test_a_handshake_cut_by_the_server_is_unreachable(pki: Pki) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)

        def cut() -> None:
            with listener.accept()[0] as conn:
                conn.recv(10)
        t = threading.Thread(target=cut, daemon=True)
        t.start()
        with pytest.raises(UnreachableError, match="cut during the TLS handshake|unreachable"):
            JsonClient(f"https://127.0.0.1:{listener.getsockname()[1]}", pki.root_pem, timeout=WAIT).get("/x")
        t.join(WAIT)


# ---- answers -------------------------------------------------------------------------------------------
def test_answers_in_every_framing(serve: Callable[..., Server], pki: Pki) -> None:
    def framed(req: Request) -> tuple[bytes | None, bool | str]:
        obj = json.dumps({"path": req.path}).encode()
        if req.path == "/chunked":
            body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(obj[i:i + 5]), obj[i:i + 5]) for i in range(0, len(obj), 5))
            return (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                    b"Content-Type: application/json\r\n\r\n" + body + b"0\r\nX-Trailer: 1\r\n\r\n"), False
        if req.path == "/until-close":
            return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + obj, True
        if req.path == "/gzip":
            z = gzip.compress(obj)
            return (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(z)) + z, False
        if req.path == "/close":
            return answer(200, {"path": req.path}, "Connection: close\r\n"), True
        if req.path == "/refused":
            return answer(409, {"error": "taken", "message": "already paid"}, reason="Conflict"), False
        if req.path == "/cookie":
            return answer(200, {"path": req.path}, "Set-Cookie: who=you; Path=/\r\n"), False
        if req.path == "/head":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", False
        return answer(200, {"path": req.path, "cookie": req.headers.get("cookie")}), False
    s = serve(framed)
    with JsonClient(s.url, pki.root_pem, timeout=WAIT, name="the shop") as c:
        for path in ("/chunked", "/until-close", "/gzip", "/close", "/cookie", "/plain"):
            assert c.get(path)["path"] == path
        assert c.get("/plain")["cookie"] is None          # a cookie the server set is never sent back
        status, ctype, body = c.request("GET", "/chunked")
        assert (status, ctype, json.loads(body)) == (200, "application/json", {"path": "/chunked"})
        assert c.request("HEAD", "/head") == (200, "", b"")
        with pytest.raises(ServiceError, match="the shop refused: already paid") as e:
            c.post("/refused", {})
        assert (e.value.status, e.value.code) == (409, "taken")
        assert c.get_bytes("/plain") == b'{"path": "/plain", "cookie": null}'
    assert s.handshakes == 3                              # new connections after the two closed ones only


def test_an_answer_too_large_is_not_read(serve: Callable[..., Server], pki: Pki) -> None:
    s = serve(lambda req: (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n{}" % (channels.MAX_RESPONSE + 1), False))
    with JsonClient(s.url, pki.root_pem, timeout=WAIT) as c, pytest.raises(ChannelError, match="larger than"):
        c.get("/big")


def test_not_http_is_a_lost_answer(serve: Callable[..., Server], pki: Pki) -> None:
    s = serve(lambda req: (b"SSH-2.0-OpenSSH\r\n\r\n", True))
    with JsonClient(s.url, pki.root_pem, timeout=WAIT) as c, pytest.raises(AnswerLost, match="status line"):
        c.get("/x")


def test_full_urls_and_odd_paths(serve: Callable[..., Server], pki: Pki) -> None:
    s = serve()
    with JsonClient(None, pki.root_pem, timeout=WAIT, name="the peer") as c:
        assert c.get(f"{s.url}/inbox/a b?x=é")["path"] == "/inbox/a%20b?x=%C3%A9"
        assert c.get(s.url)["path"] == "/"
        with pytest.raises(ChannelError, match="https"):
            c.get(s.url.replace("https", "http"))
    assert s.handshakes == 1
    with JsonClient(s.url + "/api/", pki.root_pem, timeout=WAIT) as c:
        assert c.get("/v1")["path"] == "/api/v1"
    with pytest.raises(ChannelError, match="header"):
        JsonClient(s.url, pki.root_pem).request("GET", "/", None, {"X-Evil": "a\r\nHost: b"})


def test_one_client_many_threads(serve: Callable[..., Server], pki: Pki) -> None:
    s = serve()
    c = JsonClient(s.url, pki.root_pem, timeout=WAIT)
    errors: list[str] = []

    def run(k: int) -> None:
        for i in range(20):
            got = c.post(f"/t/{k}", {"i": i})
            if got["body"] != json.dumps({"i": i}, separators=(",", ":")) or got["path"] != f"/t/{k}":
                errors.append(repr(got))
    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    c.close()
    assert not errors and len(s.received) == 120
    assert 1 <= s.handshakes <= 6                         # at most one connection per thread at a time


# ---- the services' own server --------------------------------------------------------------------------
def test_the_services_lean_request_path_takes_every_request(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's requests are the plain case the services answer on their lean path (fast_http.py),
    not handed to aiohttp: one write each, on one connection."""
    from aiohttp import web

    from semper.client.support.http_service import ServiceRunner, json_response, make_app
    routes = web.RouteTableDef()

    @routes.post("/deals/pay")
    async def pay(request: web.Request) -> web.Response:
        return json_response({"got": len(await request.read()), "auth": request.headers.get("Authorization", "")})

    @routes.get("/deals/state")
    async def state(request: web.Request) -> web.Response:
        return json_response({"ok": True})
    monkeypatch.setenv("SEMPER_FAST_HTTP", "1")
    with ServiceRunner(make_app(list(routes)), ssl_context=server_context(pki.chain, pki.key)) as runner, \
            JsonClient(runner.url, pki.root_pem, timeout=WAIT) as c:
        for _ in range(5):
            assert c.post("/deals/pay", {"deal": "d" * 32}, {"Authorization": "Bearer x"}) == {"got": 43,
                                                                                              "auth": "Bearer x"}
            assert c.get("/deals/state") == {"ok": True}
        assert runner._fast is not None and (runner._fast.served, runner._fast.handed_over) == (10, 0)


# ---- review of 2026-12-07 ----------------------------------------------------------------------------------
def _trickling(pki: Pki, head: bytes, every: float, pieces: list[bytes]) -> tuple[str, threading.Event]:
    """A server that answers the first request with ``head`` and then ``pieces``, one every ``every`` s."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT)
    done = threading.Event()

    def run() -> None:
        try:
            raw, _ = listener.accept()
            conn = server_context(pki.chain, pki.key).wrap_socket(raw, server_side=True)
            conn.recv(65536)
            conn.sendall(head)
            for piece in pieces:
                if done.wait(every):
                    break
                conn.sendall(piece)
            conn.close()
        except OSError:
            pass
        finally:
            listener.close()
    threading.Thread(target=run, daemon=True).start()
    return f"https://127.0.0.1:{listener.getsockname()[1]}", done


@pytest.mark.parametrize("head, pieces", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n", [b" "] * 40),
    (b"", [b"HTTP/1.1 100 Continue\r\n\r\n"] * 40),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", [b"X-T: 1\r\n"] * 40),
])
def test_a_server_trickling_its_answer_is_bounded_by_the_whole_requests_timeout(pki: Pki, head: bytes,
                                                                               pieces: list[bytes]) -> None:
    """Review of 2026-12-07: each read waited up to the timeout, the request as long as the server went on (a
    body a byte at a time, endless interim answers, an endless trailer: 6-7 s at a timeout of 0.5 s)."""
    url, done = _trickling(pki, head, 0.1, pieces)
    started = time.monotonic()
    try:
        with JsonClient(url, pki.root_pem, timeout=0.8) as c, pytest.raises(AnswerLost):
            c.post("/pay", {})
    finally:
        done.set()
    assert time.monotonic() - started < 2.0


def test_odd_answers_are_lost_answers_or_read_as_the_rfc_says(serve: Callable[..., Server], pki: Pki) -> None:
    """A Content-Length of 5,000 digits raised a ValueError (not a ChannelError); the same Content-Length twice is
    one (RFC 9110); a chunk size in Python's spelling, a chunk not ending where its size says, a header name with
    a space before its colon, a transfer coding that is not chunked: lost answers, not guesses."""
    body = b'{"ok": 1}'
    cases: list[tuple[bytes, bool]] = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nContent-Length: 9\r\n\r\n" + body, True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x9\r\n" + body + b"\r\n0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n" + body + b"XX0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length : 9\r\n\r\n" + body, False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunkedx\r\n\r\n9\r\n" + body + b"\r\n0\r\n\r\n", False),
    ]
    for raw, ok in cases:
        s = serve(lambda req, raw=raw: (raw, True))
        with JsonClient(s.url, pki.root_pem, timeout=WAIT) as c:
            if ok:
                assert c.get("/x") == {"ok": 1}
            else:
                with pytest.raises(AnswerLost) as e:
                    c.get("/x")
                assert not e.value.closed, raw[:60]                 # the server answered: not a silent close


def test_the_client_frames_its_requests_itself(serve: Callable[..., Server], pki: Pki) -> None:
    """Caller headers that would change where a request ends (or smuggle one), or carry control characters, are
    refused before anything is sent."""
    s = serve()
    with JsonClient(s.url, pki.root_pem, timeout=WAIT) as c:
        for bad in ({"Content-Length": "0"}, {"Transfer-Encoding": "chunked"}, {"host": "evil"},
                    {"Connection": "close"}, {"X-A": "a\x00b"}, {"X-A": "a\rb"}):
            with pytest.raises(ChannelError, match="cannot be sent"):
                c.post("/pay", {"n": 1}, headers=bad)
        assert c.post("/pay", {"n": 1}, headers={"X-Ok": "a\tb"})["method"] == "POST"
    assert s.count("/pay") == 1


def test_a_base_url_path_is_percent_encoded_and_close_keeps_nothing_in_flight(serve: Callable[..., Server],
                                                                              pki: Pki) -> None:
    s = serve()
    with JsonClient(s.url + "/base path", pki.root_pem, timeout=WAIT) as c:
        assert c.get("/x")["path"] == "/base%20path/x"
    gate = threading.Event()
    slow = serve(lambda req: (gate.wait(WAIT) and None) or echo(req))
    c = JsonClient(slow.url, pki.root_pem, timeout=WAIT)
    t = threading.Thread(target=lambda: c.get("/x"))
    t.start()
    deadline = time.monotonic() + WAIT
    while slow.count("/x") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    c.close()                                   # while the request is in flight
    gate.set()
    t.join(WAIT)
    assert c.idle_connections == 0              # its connection was not kept after close()
