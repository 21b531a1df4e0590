"""The lean request path in front of aiohttp (``client/support/fast_http.py``).

What must hold: the JSON routes given to ``make_app`` are answered by the lean path on keep-alive
connections, pipelined requests in order; everything it does not take (malformed requests, unknown
paths, wrong methods, chunked or oversized bodies, 100-continue, the pages added after ``make_app``)
gets exactly aiohttp's answer, because the connection is handed to aiohttp; a slow or idle client
is cut off; a stop lets the answers under way go out and ends in bounded time.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from semper.client.commerce.errors import NoSuchDeal
from semper.client.support import fast_http
from semper.client.support.http_service import ServiceRunner, json_response, make_app, read_json
from semper.client.support.shapes import Shape

TIMEOUT = 10.0


class Ping(Shape, frozen=True):
    n: int
    text: str = ""


release = threading.Event()        # what the slow handler waits for


def _app(max_body: int = 1024) -> web.Application:
    routes = web.RouteTableDef()

    @routes.post("/ping")
    async def ping(request: web.Request) -> web.Response:
        body = await read_json(request, Ping)
        return json_response({"n": body.n + 1, "auth": request.headers.get("Authorization", "")})

    @routes.post("/type")
    async def media_type(request: web.Request) -> web.Response:
        return json_response({"type": request.content_type})

    @routes.get("/state")
    async def state(request: web.Request) -> web.Response:
        return json_response({"ok": True})

    @routes.get("/missing")
    async def missing(request: web.Request) -> web.Response:
        raise NoSuchDeal("no such deal here")

    @routes.get("/bug")
    async def bug(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    @routes.get("/moved")
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/state")

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 5.0)
        return json_response({"slow": True})

    app = make_app(list(routes), max_body=max_body)

    async def page(request: web.Request) -> web.Response:       # as shop_web.mount adds its pages
        return web.Response(text="<p>hello</p>", content_type="text/html")
    app.router.add_get("/page", page)
    return app


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceRunner]:
    monkeypatch.setenv("SEMPER_FAST_HTTP", "1")
    with ServiceRunner(_app()) as runner:
        assert runner._fast is not None
        yield runner


class Raw:
    """A keep-alive connection that sends any bytes and reads whole answers (by Content-Length)."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock = context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        line = self.file.readline()
        assert line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), line
        status = int(line.split()[1])
        headers: dict[str, str] = {}
        while (h := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b"" if head else self.file.read(int(headers.get("content-length", "0")))
        return status, headers, body

    def closed(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.sock.close()


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_many_requests_on_one_keep_alive_connection_are_answered_by_the_lean_path(served: ServiceRunner) -> None:
    assert served._fast is not None
    raw = Raw(served.port)
    for n in range(200):
        raw.send(_post("/ping?q=x%20y", json.dumps({"n": n}).encode(), "Authorization: Bearer s3\r\n"))
        status, headers, body = raw.answer()
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"n": n + 1, "auth": "Bearer s3"}
        assert "date" in headers and "connection" not in headers
    raw.close()
    assert served._fast.served == 200 and served._fast.handed_over == 0


def test_pipelined_requests_are_answered_in_order(served: ServiceRunner) -> None:
    raw = Raw(served.port)
    raw.send(b"".join(_post("/ping", json.dumps({"n": n}).encode()) for n in range(5))
             + b"GET /state HTTP/1.1\r\nHost: x\r\n\r\n")
    answers = [raw.answer() for _ in range(6)]
    expected = [{"n": n + 1, "auth": ""} for n in range(5)] + [{"ok": True}]
    assert [json.loads(b) for _, _, b in answers] == expected
    raw.close()
    assert served._fast is not None and (served._fast.served, served._fast.handed_over) == (6, 0)


def test_a_body_in_pieces_is_read_whole_and_its_head_parsed_once(served: ServiceRunner,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A body sent a few bytes at a time: answered once whole, its head parsed once (parsing it again for
    every piece let a client that trickles its body cost the service CPU for each byte)."""
    heads: list[object] = []
    parse = fast_http.FastConnection._parse_head

    def counted(self: fast_http.FastConnection) -> object:
        head = parse(self)
        heads.append(head)
        return head
    monkeypatch.setattr(fast_http.FastConnection, "_parse_head", counted)
    raw = Raw(served.port)
    data = _post("/ping", json.dumps({"n": 7, "text": "é" * 100}).encode())
    end = data.index(b"\r\n\r\n") + 4
    raw.send(data[:end])
    for i in range(end, len(data), 5):
        raw.send(data[i:i + 5])
        time.sleep(0.001)
    status, _, body = raw.answer()
    assert status == 200 and json.loads(body)["n"] == 8
    raw.close()
    assert len([h for h in heads if h is not None]) == 1
    assert served._fast is not None and (served._fast.served, served._fast.handed_over) == (1, 0)


def test_refusals_keep_their_status_code_and_say_nothing_internal(served: ServiceRunner) -> None:
    raw = Raw(served.port)
    raw.send(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = raw.answer()
    assert (status, json.loads(body)) == (404, {"error": "unknown_deal", "message": "no such deal here"})
    raw.send(b"GET /bug HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = raw.answer()
    assert status == 500 and json.loads(body)["error"] == "internal"
    assert b"secret" not in body and b"Traceback" not in body
    raw.send(_post("/ping", b"{not json"))
    status, _, body = raw.answer()
    assert status == 400 and json.loads(body)["error"] == "malformed_json"
    raw.send(_post("/ping", b'{"n": 1}').replace(b"application/json", b"text/plain"))
    status, _, body = raw.answer()
    assert status == 415 and json.loads(body)["error"] == "unsupported_media_type"
    raw.close()
    assert served._fast is not None and (served._fast.served, served._fast.handed_over) == (4, 0)


ODD_REQUESTS = {
    "unknown path": b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
    "wrong method": b"PUT /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "oversize body": _post("/ping", b"x" * 2000),
    "chunked body": (b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n4\r\n{\"n\"\r\n4\r\n: 3}\r\n0\r\n\r\n"),
    "oversize chunked body": (b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n800\r\n" + b"x" * 2048 + b"\r\n0\r\n\r\n"),
    "no length": b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n",
    "two lengths": _post("/ping", b'{"n": 1}', "Content-Length: 8\r\n"),
    "malformed request line": b"POST /ping HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "not http": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
    "bad header": b"GET /state HTTP/1.1\r\nHost x\r\n\r\n",
    "escaped path": b"GET /st%61te HTTP/1.1\r\nHost: x\r\n\r\n",
    "huge header": b"GET /state HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "web page": b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n",
    "head": b"HEAD /state HTTP/1.1\r\nHost: x\r\n\r\n",
    "http/1.0": b"GET /state HTTP/1.0\r\n\r\n",
    "a length int() cannot read": _post("/ping", b'{"n": 1}').replace(b"Content-Length: 8", b"Content-Length: "
                                                                       + b"9" * 5000),
    "more headers than aiohttp takes": _post("/ping", b'{"n": 1}', "".join(f"X-{i}: v\r\n" for i in range(129))),
}


def _first_answer(port: int, data: bytes) -> tuple[int, bytes, str | None, str | None]:
    """Status, body (but aiohttp's plain-text parser pages), Location and Content-Type of the first answer."""
    raw = Raw(port)
    try:
        raw.send(data)
        status, headers, body = raw.answer(head=data.startswith(b"HEAD "))
        plain = headers.get("content-type", "").startswith("text/plain")
        return status, b"" if plain else body, headers.get("location"), headers.get("content-type")
    finally:
        raw.close()


def test_what_the_lean_path_does_not_take_gets_aiohttps_own_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each odd request, to the service with the lean path and without it: the same status and body
    (aiohttp's plain-text 400 pages excepted from the body comparison: they quote parser details)."""
    answers: dict[str, dict[str, tuple[int, bytes, str | None, str | None]]] = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("SEMPER_FAST_HTTP", mode)
        with ServiceRunner(_app()) as runner:
            assert (runner._fast is not None) == (mode == "1")
            answers[mode] = {name: _first_answer(runner.port, data) for name, data in ODD_REQUESTS.items()}
            if runner._fast is not None:
                assert runner._fast.served == 0 and runner._fast.handed_over == len(ODD_REQUESTS)
    assert answers["1"] == answers["0"]
    got = answers["1"]
    assert got["unknown path"][0] == 404 and json.loads(got["unknown path"][1])["error"] == "not_found"
    assert got["wrong method"][0] == 405 and json.loads(got["wrong method"][1])["error"] == "method_not_allowed"
    assert got["oversize body"][0] == 413 and json.loads(got["oversize body"][1])["error"] == "body_too_large"
    assert got["oversize chunked body"][0] == 413
    assert got["chunked body"][0] == 200 and json.loads(got["chunked body"][1])["n"] == 4
    assert got["malformed request line"][0] == 400 and got["not http"][0] == 400
    assert got["web page"][:2] == (200, b"<p>hello</p>")


TAKEN_REQUESTS = {
    "ping": _post("/ping?q=a+b&q=c", b'{"n": 1, "text": "\xc3\xa9"}', "Authorization: Bearer x\r\n"),
    "header not utf-8": _post("/ping", b'{"n": 1}').replace(b"Host: x", b"Host: x\r\nAuthorization: Bearer \xff\xfe"),
    "header utf-8": _post("/ping", b'{"n": 1}', "Authorization: Bearer \xc3\xa9\r\n"),
    # a value's spaces and tabs around it are not its own, those inside are
    "header spaced": _post("/ping", b'{"n": 1}', "Authorization:\t  Bearer \t x \t \r\n"),
    "header blank": _post("/ping", b'{"n": 1}', "Authorization: \t \r\n"),
    "header bare": _post("/ping", b'{"n": 1}', "Authorization:Bearer:x:\r\n"),
    "header twice": _post("/ping", b'{"n": 1}', "Authorization: one\r\nAuthorization: two\r\n"),
    "type with charset": _post("/ping", b'{"n": 1}').replace(b"application/json", b"Application/JSON; charset=utf-8"),
    "no type": _post("/ping", b'{"n": 1}').replace(b"Content-Type: application/json\r\n", b""),
    "not json": _post("/ping", b"{"),
    "wrong field": _post("/ping", b'{"n": "1"}'),
    "empty body": _post("/ping", b""),
    "refusal": b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
    "bug": b"GET /bug HTTP/1.1\r\nHost: x\r\n\r\n",
    "redirect": b"GET /moved HTTP/1.1\r\nHost: x\r\n\r\n",
    "get with a body": b"GET /state HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
}
#: Content-Type values, well formed and not: the lean path's request reads each as aiohttp's does
ODD_TYPES = ["Application/JSON; charset=utf-8", "application/json;", " application/json ", "application/json ;x=1",
             "", "text", "json", "application/", "/json", "application/json/x", "application/json garbage",
             '"application/json"', "application/json, text/html", "application / json", "*/*", "TEXT/Plain;q=1"]
TAKEN_REQUESTS.update({f"type {t!r}": _post("/type", b"{}").replace(b"application/json", t.encode())
                       for t in ODD_TYPES})


def test_what_the_lean_path_takes_it_answers_as_aiohttp_did(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, dict[str, tuple[int, bytes, str | None, str | None]]] = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("SEMPER_FAST_HTTP", mode)
        with ServiceRunner(_app()) as runner:
            answers[mode] = {name: _first_answer(runner.port, data) for name, data in TAKEN_REQUESTS.items()}
            if runner._fast is not None:
                assert runner._fast.served == len(TAKEN_REQUESTS) and runner._fast.handed_over == 0
    assert answers["1"] == answers["0"]
    assert answers["1"]["ping"] == (200, b'{"n":2,"auth":"Bearer x"}', None, "application/json")
    assert answers["1"]["redirect"][0::2] == (302, "/state")
    types = {t: json.loads(answers["1"][f"type {t!r}"][1])["type"] for t in ODD_TYPES}
    assert types["Application/JSON; charset=utf-8"] == "application/json"
    assert types["text"] == types[""] == types["application/json/x"] == "application/octet-stream"


def test_expect_100_continue_is_aiohttps(served: ServiceRunner) -> None:
    raw = Raw(served.port)
    body = json.dumps({"n": 41}).encode()
    head = _post("/ping", b"", "Expect: 100-continue\r\n")
    raw.send(head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode()))
    assert raw.file.readline().startswith(b"HTTP/1.1 100")
    assert raw.file.readline() == b"\r\n"
    raw.send(body)
    status, _, answer = raw.answer()
    assert status == 200 and json.loads(answer)["n"] == 42
    raw.close()


def test_after_a_hand_over_the_same_connection_still_serves_the_api(served: ServiceRunner) -> None:
    raw = Raw(served.port)
    raw.send(_post("/ping", b'{"n": 1}') + b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n" + _post("/ping", b'{"n": 2}'))
    assert [raw.answer()[2] for _ in range(3)] == [b'{"n":2,"auth":""}', b"<p>hello</p>", b'{"n":3,"auth":""}']
    raw.close()
    assert served._fast is not None and (served._fast.served, served._fast.handed_over) == (1, 1)


def test_connection_close_is_honoured(served: ServiceRunner) -> None:
    raw = Raw(served.port)
    raw.send(b"GET /state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /state HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = raw.answer()
    assert status == 200 and headers["connection"] == "close"
    assert raw.closed()
    assert served._fast is not None and (served._fast.served, served._fast.handed_over) == (1, 0)


def test_a_slow_or_idle_client_is_cut_off(served: ServiceRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_http, "REQUEST_TIMEOUT", 0.5)
    monkeypatch.setattr(fast_http, "KEEPALIVE_TIMEOUT", 0.5)
    slow = Raw(served.port)
    slow.send(b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")     # never finished
    idle = Raw(served.port)
    idle.send(b"GET /state HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.answer()[0] == 200
    started = time.monotonic()
    assert slow.closed() and idle.closed()
    assert time.monotonic() - started < 4.0


@pytest.fixture()
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    return server, client


def test_over_tls_keep_alive_and_pipelining_hold(tls: tuple[ssl.SSLContext, ssl.SSLContext],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMPER_FAST_HTTP", "1")
    server, client = tls
    with ServiceRunner(_app(), ssl_context=server) as runner:
        assert runner._fast is not None and runner.url.startswith("https://")
        raw = Raw(runner.port, client)
        for n in range(50):
            raw.send(_post("/ping", json.dumps({"n": n}).encode()))
            assert json.loads(raw.answer()[2])["n"] == n + 1
        raw.send(_post("/ping", b'{"n": 1}') * 3 + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [raw.answer()[0] for _ in range(4)] == [200, 200, 200, 404]
        raw.close()
        assert runner._fast.served == 53 and runner._fast.handed_over == 1


def test_a_stop_sends_the_answer_under_way_and_ends_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMPER_FAST_HTTP", "1")
    release.clear()
    runner = ServiceRunner(_app()).start()
    busy, idle = Raw(runner.port), Raw(runner.port)
    idle.send(b"GET /state HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.answer()[0] == 200
    busy.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    threading.Timer(0.3, release.set).start()           # the handler ends within the stop's 1 s grace
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 5.0
    status, headers, body = busy.answer()
    assert (status, json.loads(body), headers["connection"]) == (200, {"slow": True}, "close")
    assert busy.closed() and idle.closed()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", runner.port), timeout=1).close()


def test_a_stop_does_not_wait_for_ever_on_a_stuck_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMPER_FAST_HTTP", "1")
    release.clear()
    runner = ServiceRunner(_app()).start()
    stuck = Raw(runner.port)
    stuck.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 5.0
    assert stuck.closed()
    release.set()


def test_reading_pauses_while_a_handler_runs_and_pipelined_requests_pile_up(
        served: ServiceRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """More pipelined bytes than MAX_BUFFER behind a busy handler: reading pauses, and every request
    is still answered, in order, once the handler is done."""
    monkeypatch.setattr(fast_http, "MAX_BUFFER", 4096)
    release.clear()
    raw = Raw(served.port)
    pings = [_post("/ping", json.dumps({"n": n}).encode()) for n in range(4000)]      # ~400 KB
    sender = threading.Thread(target=raw.send, args=(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + b"".join(pings),))
    sender.start()
    time.sleep(0.3)
    conn = next(iter(served._fast.connections)) if served._fast else None
    assert conn is not None and conn.paused_reading and len(conn.buffer) < len(b"".join(pings))
    release.set()
    assert raw.answer()[2] == b'{"slow":true}'
    assert [json.loads(raw.answer()[2])["n"] for _ in pings] == [n + 1 for n in range(4000)]
    sender.join(TIMEOUT)
    raw.close()
