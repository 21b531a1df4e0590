"""HTTPS channels over real loopback sockets: root pinning, and bad input answered 4xx in JSON."""
from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ca_support import (
    RunningCa,
    SoftwareSigner,
    Tokens,
    raw_request,
    request_body,
    running_ca,
    start_ca,
    tokens,
)

from semper.client.support.channels import (
    ChannelError,
    JsonClient,
    ServiceError,
    TlsError,
    UnreachableError,
    client_context,
)
from semper.client.support.http_service import MAX_BODY

JSON = {"Content-Type": "application/json"}


def test_client_trusts_only_the_pinned_root(running_ca: RunningCa, tmp_path: Path, tokens: Tokens) -> None:
    other = start_ca(tmp_path / "other", tokens, label="ca-other", name="another CA")
    try:
        with pytest.raises(TlsError, match="pinned semper CA root"):
            JsonClient(running_ca.url, other.root_pem).get("/ca")
        assert JsonClient(other.url, other.root_pem).get("/ca")["certificate"] == other.root_pem
    finally:
        other.runner.stop()
        other.home.close()
    ctx = client_context(running_ca.root_pem)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1                          # nothing from the system store


def test_host_name_is_checked(running_ca: RunningCa, tmp_path: Path) -> None:
    from semper.client.servers.ca_home import issue_tls_identity
    from semper.client.servers.ca_http import build_app
    from semper.client.support.channels import server_context
    from semper.client.support.http_service import ServiceRunner
    url = running_ca.url.replace("127.0.0.1", "localhost")      # in the certificate: fine
    assert JsonClient(url, running_ca.root_pem).get("/ca")
    chain, key = issue_tls_identity(running_ca.ca, ("127.0.0.1",), tmp_path / "ip-only")
    with ServiceRunner(build_app(running_ca.ca), ssl_context=server_context(chain, key)) as runner:
        assert JsonClient(runner.url, running_ca.root_pem).get("/ca")
        with pytest.raises(TlsError, match="localhost|mismatch"):
            JsonClient(runner.url.replace("127.0.0.1", "localhost"), running_ca.root_pem).get("/ca")


def test_plain_http_and_bad_urls_are_refused(running_ca: RunningCa) -> None:
    with pytest.raises(ChannelError, match="https"):
        JsonClient(running_ca.url.replace("https", "http"), running_ca.root_pem)
    with pytest.raises(ChannelError, match="PEM"):
        JsonClient(running_ca.url, "not a certificate")
    with pytest.raises(ChannelError, match="cannot read"):
        JsonClient(running_ca.url, Path("/nonexistent/root.pem"))


def test_unreachable_service_is_one_clear_error(running_ca: RunningCa) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                                # bound, not listening: refused
        with pytest.raises(UnreachableError, match="unreachable"):
            JsonClient(f"https://127.0.0.1:{port}", running_ca.root_pem, timeout=3).get("/ca")


def test_a_silent_server_times_out_within_the_bound(running_ca: RunningCa) -> None:
    import time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)                                              # accepts, never answers the handshake
        start = time.monotonic()
        with pytest.raises(UnreachableError, match="did not answer"):
            JsonClient(f"https://127.0.0.1:{s.getsockname()[1]}", running_ca.root_pem, timeout=0.5).get("/ca")
        assert time.monotonic() - start < 5


BAD_REQUESTS = [
    ("POST", "/register", b"{not json", JSON, 400, "malformed_json"),
    ("POST", "/register", b"\xff\xfe", JSON, 400, "malformed_json"),
    ("POST", "/register", b"[1, 2]", JSON, 400, "malformed_json"),
    ("POST", "/register", b"{}", JSON, 400, "missing_field"),
    ("POST", "/register", b'{"registration_id": 1, "csr": "", "mac": ""}', JSON, 400, "wrong_type"),
    ("POST", "/register", b'{"registration_id": "00", "csr": "", "mac": "", "x": 1}', JSON, 400, "unknown_field"),
    ("POST", "/register", b'{"registration_id": "00", "csr": "AA==", "mac": "AA=="}', JSON, 400,
     "bad_registration_id"),
    ("POST", "/register", json.dumps({"registration_id": "0" * 32, "csr": "%%%", "mac": "AA=="}).encode(), JSON,
     400, "bad_base64"),
    ("POST", "/register", json.dumps({"registration_id": "0" * 32, "csr": "AAAA", "mac": "A" * 100}).encode(),
     JSON, 400, "bad_length"),
    ("POST", "/register", b'{"registration_id": "00"}', {"Content-Type": "text/plain"}, 415,
     "unsupported_media_type"),
    ("POST", "/register", b"x" * (MAX_BODY + 1), JSON, 413, "body_too_large"),
    ("GET", "/register", None, {}, 405, "method_not_allowed"),
    ("GET", "/nowhere", None, {}, 404, "not_found"),
    ("GET", "/certificates/" + "A" * 80, None, {}, 400, "bad_serial"),
    ("GET", "/certificates/xyz", None, {}, 400, "bad_serial"),
    ("GET", "/certificates/ABCDEF", None, {}, 404, "unknown_serial"),
    ("POST", "/admin/persons", b'{"name": "X"}', JSON, 401, "unauthorised"),
    ("POST", "/admin/persons", b'{"name": "X"}', {**JSON, "Authorization": "Bearer wrong"}, 403, "forbidden"),
    ("GET", "/admin/list", None, {"Authorization": "Basic abc"}, 401, "unauthorised"),
]


@pytest.mark.parametrize("method, path, body, headers, status, code", BAD_REQUESTS)
def test_bad_requests_get_4xx_json(running_ca: RunningCa, method: str, path: str, body: bytes | None,
                                   headers: dict[str, str], status: int, code: str) -> None:
    got, answer = raw_request(running_ca.client(), method, path, body, headers)
    assert (got, answer["error"]) == (status, code), answer
    assert set(answer) == {"error", "message"} and answer["message"]


def test_a_well_formed_request_with_a_garbage_csr_is_400(running_ca: RunningCa) -> None:
    key = running_ca.add_person()
    body = request_body(SoftwareSigner(), key, csr=b"\x30\x03\x02\x01\x00")
    with pytest.raises(ServiceError) as e:
        running_ca.client().post("/register", body)
    assert (e.value.status, e.value.code) == (400, "csr_invalid")
    assert running_ca.registration(key)["used_at"] is None


def test_admin_endpoints_with_the_secret(running_ca: RunningCa) -> None:
    auth = {"Authorization": f"Bearer {running_ca.admin}"}
    client = running_ca.client()
    made = client.post("/admin/persons", {"name": "Erin Shop", "email": "erin@example.org", "role": "seller"}, auth)
    assert len(made["registration_key"].replace("-", "")) == 32
    with pytest.raises(ServiceError) as e:
        client.get_bytes("/admin/list")                          # no auth header: refused
    assert e.value.status == 401
    got, answer = raw_request(client, "GET", "/admin/list", None, auth)
    assert got == 200 and any(r["name"] == "Erin Shop" and r["role"] == "seller" for r in answer["registrations"])
    with pytest.raises(ServiceError) as e:
        client.post("/admin/persons", {"name": "X", "role": "wizard"}, auth)
    assert (e.value.status, e.value.code) == (400, "bad_role")
    with pytest.raises(ServiceError) as e:
        client.post("/admin/persons", {"name": "X", "hosts": [1]}, auth)
    assert e.value.status == 400


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=300),
                      st.dictionaries(st.sampled_from(["registration_id", "csr", "mac", "name", "extra"]),
                                      st.one_of(st.none(), st.integers(), st.text(max_size=50),
                                                st.lists(st.integers(), max_size=3)), max_size=4)
                      .map(lambda d: json.dumps(d).encode())),
       path=st.sampled_from(["/register", "/admin/persons", "/admin/revoke"]))
def test_fuzzed_bodies_never_get_a_5xx(running_ca: RunningCa, body: bytes, path: str) -> None:
    got, answer = raw_request(running_ca.client(), "POST", path, body, JSON)
    assert 400 <= got < 500 and isinstance(answer.get("error"), str)
