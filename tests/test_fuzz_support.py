"""Helpers for the HTTP fuzzers (no tests here): a raw HTTPS client, hostile inputs, refusal checks.

Why a raw client: the project's own clients (``JsonClient``, ``BankClient``, ``JsonPoster``) only
send what a well-behaved party sends. The fuzzers must send what an attacker sends: any method,
any path, any content type, bodies that are not JSON or are cut short, headers that lie about the
length, bytes that are not HTTP at all. Every call is bounded by a socket timeout.

What every service promises (``client/support/http_service.py``): a refusal is a 4xx with a JSON object
``{"error", "message"}``; a 5xx appears only for a real bug. :func:`assert_refusal` and
:func:`assert_sane` check exactly that, and :func:`db_snapshot` captures a service's whole database
so a test can show that a refused request changed nothing.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from semper.client.support.channels import client_context
from semper.client.support.db import Database

TIMEOUT = 10.0
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "MKCOL")
CONTENT_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
                 "application/xml", "application/octet-stream", "", "json", "application/jsonx",
                 "application/timestamp-query", "text/json")


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawHttps:
    """Whatever bytes a test wants, over TLS to one service on loopback, the service's root pinned."""

    def __init__(self, url: str, root: str | bytes | Path) -> None:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        self.host, self.port = parts.hostname, parts.port
        self.context = client_context(root)

    def send(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
             ) -> Answer:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Answer(resp.status, resp.getheader("Content-Type", "") or "", resp.read())
        finally:
            conn.close()

    def post_json(self, path: str, obj: Any, content_type: str = "application/json") -> Answer:
        return self.send("POST", path, json.dumps(obj).encode(), {"Content-Type": content_type})

    def _socket(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
        return self.context.wrap_socket(raw, server_hostname=self.host)

    def exchange_bytes(self, data: bytes, *, read: bool = True) -> bytes:
        """Send ``data`` as is (no HTTP framing added); the first response (or what came before a close)."""
        s = self._socket()
        try:
            s.sendall(data)
            return _read_response(s) if read else b""
        finally:
            s.close()

    def truncated(self, path: str, body: bytes, keep: int, content_type: str = "application/json") -> None:
        """A POST announcing ``len(body)`` bytes that sends only the first ``keep`` and hangs up."""
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        self.exchange_bytes(head + body[:keep], read=False)

    def lying_length(self, path: str, declared: int, sent: int) -> Answer | None:
        """A POST that declares ``declared`` bytes and sends ``sent`` zero bytes: the answer, if any."""
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {declared}\r\nConnection: close\r\n\r\n").encode()
        s = self._socket()
        try:
            s.sendall(head)
            try:
                left = sent
                while left > 0:
                    n = min(left, 65536)
                    s.sendall(b"0" * n)
                    left -= n
            except (ConnectionError, ssl.SSLError, TimeoutError):
                pass                                    # the server stopped reading: fine, read its answer
            return parse_response(_read_response(s))
        finally:
            s.close()


def _read_response(s: ssl.SSLSocket) -> bytes:
    """Bytes up to the end of the first response (by its Content-Length), a close, or the timeout."""
    data = b""
    try:
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    return data
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (TimeoutError, ssl.SSLError, ConnectionError):
        return data


def parse_response(data: bytes) -> Answer | None:
    """A raw HTTP/1.1 response (as read off a socket) as an :class:`Answer`; None if there is none."""
    if not data.startswith(b"HTTP/1."):
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    ctype = ""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            ctype = value.strip().decode("latin-1")
    return Answer(status, ctype, body)


# ---- what every answer must look like ----------------------------------------------------------------
def assert_refusal(a: Answer, *statuses: int) -> dict[str, Any]:
    """A 4xx (one of ``statuses`` if given) with a JSON object ``{"error", "message"}``; returns it."""
    assert 400 <= a.status < 500, (a.status, a.body[:300])
    if statuses:
        assert a.status in statuses, (a.status, a.body[:300])
    assert a.content_type.startswith("application/json"), (a.status, a.content_type, a.body[:300])
    obj = json.loads(a.body)
    assert isinstance(obj, dict), obj
    assert isinstance(obj.get("error"), str) and obj["error"], obj
    assert isinstance(obj.get("message"), str) and obj["message"], obj
    assert "Traceback" not in obj["message"], obj
    return obj


def assert_sane(a: Answer, method: str = "POST") -> None:
    """No 5xx; a refusal has the JSON error body (HEAD answers carry no body at all)."""
    assert a.status < 500, (a.status, a.body[:300])
    if a.status >= 400 and method != "HEAD":
        assert_refusal(a)


# Not HTTP, or HTTP aiohttp's parser refuses before any handler runs (bad method, version, framing,
# a request line over 8190 bytes). aiohttp answers these itself with a text/plain 400: the one kind of
# refusal that is not JSON, and accepted as such (it never reaches the service's code).
NOT_HTTP = (b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"FOO / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


def protocol_level_refusals(raw: RawHttps, path: str) -> None:
    """Every :data:`NOT_HTTP` request (aimed at ``path``) gets a 4xx or a closed connection, never a 5xx."""
    for junk in NOT_HTTP:
        answer = raw.exchange_bytes(junk.replace(b" / ", f" {path} ".encode(), 1))
        status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.") else None
        assert status is None or 400 <= status < 500, (junk[:60], answer[:200])


def db_snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (SQLite or PostgreSQL): the whole state a refused request must leave as it was."""
    with db.transaction(write=False) as tx:
        if db.backend == "sqlite":
            tables = [r[0] for r in tx.all("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        else:
            tables = [r[0] for r in tx.all("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                                           "current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name")]
        return {t: sorted(tx.all(f'SELECT * FROM "{t}"'), key=repr) for t in tables}


# ---- hostile inputs ----------------------------------------------------------------------------------
LONE_SURROGATES = ("\ud800", "a\udfffb", "\udc80")
HUGE_INTS = (10**400, -(10**400), 2**64, -(2**63) - 1, 2**53, 2**31)


# Bodies each of which once reached a JSON endpoint as an exception (a 500) instead of a 400; every
# fuzzer sends all of them to every JSON endpoint it has, so none can come back by chance.
_RAW_BODIES = {
    "nested 5000 deep": b"[" * 5000 + b"]" * 5000,
    "open nesting": b'{"a":' * 5000,
    "not UTF-8": b'{"x": "\xff\xfe"}',
    "UTF-8 BOM": b"\xef\xbb\xbf{}",
    "empty": b"",
    "null": b"null",
    "a list": b"[]",
    "a string": b'"body"',
    "truncated": b'{"x": [1, 2',
}
_RAW_VALUES = {
    "a 5000-digit number": b"9" * 5000,
    "NaN": b"NaN",
    "-Infinity": b"-Infinity",
    "a lone surrogate": b'"\\ud800"',
    "a lone low surrogate": b'"x\\udfffy"',
    "5000 nested lists": b"[" * 5000 + b"]" * 5000,
}


def hostile_bodies(valid: dict[str, Any]) -> dict[str, bytes]:
    """``valid`` with each field in turn replaced by each hostile value (as raw JSON text), a lone
    surrogate as a key, and bodies that are not a JSON object at all."""
    out = dict(_RAW_BODIES)
    marker = "@@HOSTILE@@"
    for field in valid:
        template = json.dumps({**valid, field: marker}).encode()
        for name, raw in _RAW_VALUES.items():
            out[f"{field}: {name}"] = template.replace(json.dumps(marker).encode(), raw)
    out["a lone surrogate as a key"] = json.dumps({**valid, "\udfff": 1}).encode()
    return out


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON value, with the awkward ones made likely: huge integers, NaN, lone surrogates."""
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE_INTS),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
        st.sampled_from(LONE_SURROGATES), st.sampled_from(("", "0", "-1", "AA==", "%%%", "\x00", "a" * 300)))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
        max_leaves=max_leaves)


def dumps(obj: Any) -> bytes:
    """JSON as an attacker would write it: NaN and lone surrogates allowed (Python's parser takes both)."""
    return json.dumps(obj, allow_nan=True).encode()


@st.composite
def garbage_bodies(draw: st.DrawFn) -> bytes:
    """Bytes that are not a well-formed request body: not JSON, not UTF-8, too deep, too many digits."""
    kind = draw(st.sampled_from(("binary", "text", "truncated", "deep", "digits", "bom", "json")))
    if kind == "binary":
        return draw(st.binary(max_size=300))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "truncated":
        whole = dumps(draw(json_values()))
        return whole[:draw(st.integers(0, max(0, len(whole) - 1)))]
    if kind == "deep":
        n = draw(st.sampled_from((50, 5000, 100_000)))
        return draw(st.sampled_from((b"[", b'{"a":'))) * n
    if kind == "digits":
        return b'{"x": ' + b"9" * draw(st.sampled_from((4301, 20_000))) + b"}"
    if kind == "bom":
        return b"\xef\xbb\xbf{}"
    return dumps(draw(json_values()))


def mutations(valid: dict[str, Any], optional: tuple[str, ...] = (),
              kinds: tuple[str, ...] = ("drop", "retype", "extra", "oversize")) -> st.SearchStrategy[dict[str, Any]]:
    """A valid JSON object made invalid: a required field dropped, given another type, or blown up, or a
    field added that the endpoint does not know. ``optional`` fields are left alone (dropping one is valid)."""
    keys = sorted(k for k in valid if k not in optional)

    def other_type(original: Any) -> st.SearchStrategy[Any]:
        return json_values(4).filter(lambda v: type(v) is not type(original) and not (
            isinstance(v, (int, float)) and isinstance(original, (int, float)) and not isinstance(v, bool)))

    @st.composite
    def mutate(draw: st.DrawFn) -> dict[str, Any]:
        out = dict(valid)
        how = draw(st.sampled_from(kinds))
        key = draw(st.sampled_from(keys)) if keys else "x"
        if how == "drop" and keys:
            out.pop(key)
        elif how == "retype" and keys:
            out[key] = draw(other_type(out[key]))
        elif how == "oversize" and keys:
            out[key] = "A" * draw(st.sampled_from((5_000, 70_000)))
        else:
            out[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in valid and k not in optional))] = \
                draw(json_values(2))
        return out
    return mutate()


_SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%", max_size=12)


@st.composite
def paths(draw: st.DrawFn, known: tuple[str, ...] = ()) -> str:
    """A request path: a known one, a known one with junk added, or random segments (percent-encoded)."""
    kind = draw(st.sampled_from(("known", "suffix", "random", "encoded", "long")))
    if kind == "known" and known:
        return draw(st.sampled_from(known))
    if kind == "suffix" and known:
        return draw(st.sampled_from(known)) + draw(st.sampled_from(("/", "/x", "/../admin/list", "%2F..", "//")))
    if kind == "encoded":
        return "/" + quote(draw(st.binary(max_size=30)), safe="")
    if kind == "long":             # longer than 8190 bytes is refused by aiohttp's parser (tested apart)
        return "/" + "a" * draw(st.sampled_from((2000, 8000)))
    return "/" + "/".join(quote(s, safe="/%") for s in draw(st.lists(_SEGMENT, max_size=4)))


Step = Callable[[Any, st.DataObject], None]


def walk_every_rule(machine: Callable[[], Any], steps: list[Step], invariants: list[str]) -> None:
    """Run one state machine through ``steps`` in order (each a rule called with its arguments drawn from
    ``st.data()``), checking the named invariants after every step, then tear it down.

    Why: hypothesis picks rules at random (and switches some off per example, to find bugs that need a rule
    to stay quiet), so with the few examples a suite can afford on PostgreSQL a rule may not run at all in a
    given CI run. The walk makes sure every rule's checks run every time; the random rounds explore the
    interleavings on top of it.
    """
    @settings(max_examples=1, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def once(data: st.DataObject) -> None:
        m = machine()
        try:
            for step in steps:
                step(m, data)
                for name in invariants:
                    getattr(m, name)()
        finally:
            m.teardown()

    once()
