"""Fuzzing the CA's HTTPS endpoints: whatever arrives, a 4xx with a JSON error and an unchanged database.

The CA runs as in ``test_ca.py`` (its key in a SoftHSM2 token, HTTPS on loopback, fresh database).
Hypothesis sends random methods, paths, content types and bodies, mutated registration requests,
and operator requests with wrong or undecodable secrets; the whole database (registrations,
certificates, CRL state) is compared before and after every refused request. Replays of a valid
registration must re-deliver the same certificate and issue nothing new. Truncated, oversized and
lying requests, and bytes that are not HTTP, must leave the service answering and unchanged.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres import Storage, storages
from test_ca_support import (
    RunningCa,
    SoftwareSigner,
    Tokens,
    request_body,
    start_ca,
    tokens,
)
from test_fuzz_support import (
    CONTENT_TYPES,
    LONE_SURROGATES,
    METHODS,
    RawHttps,
    assert_refusal,
    assert_sane,
    db_snapshot,
    dumps,
    garbage_bodies,
    hostile_bodies,
    json_values,
    mutations,
    paths,
    protocol_level_refusals,
)

KNOWN = ("/ca", "/crl", "/crl.pem", "/certificates/1", "/certificates/zz", "/register", "/admin/persons",
         "/admin/revoke", "/admin/list")
pytestmark = storages()          # refusals burn nothing and change nothing, on SQLite and on PostgreSQL
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


class InternalErrors(logging.Handler):
    """Collects what the services log as an internal error: a request that reached a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens, storage: Storage) -> Iterator[RunningCa]:
    url = storage.url("fuzzca") if storage.is_postgres else None
    rc = start_ca(tmp_path_factory.mktemp("fuzz-ca"), tokens, db_url=url)
    rc.ca.crl()                      # a fresh CRL is stored: a GET /crl that follows changes nothing
    yield rc
    rc.runner.stop()
    rc.home.close()


@pytest.fixture(scope="module")
def errors() -> Iterator[InternalErrors]:
    h = InternalErrors()
    logger = logging.getLogger("semper.services")
    logger.addHandler(h)
    yield h
    logger.removeHandler(h)


@pytest.fixture(scope="module")
def raw(ca: RunningCa) -> RawHttps:
    return RawHttps(ca.url, ca.root_pem)


@pytest.fixture(scope="module")
def pending(ca: RunningCa) -> dict[str, Any]:
    """A registration nobody has used yet, with a valid request body for it."""
    key = ca.add_person("Fuzz Person", "fuzz@example.org")
    signer = SoftwareSigner()
    return {"key": key, "signer": signer, "body": request_body(signer, key, "Fuzz Person", "fuzz@example.org")}


def _unchanged(ca: RunningCa, before: dict[str, Any], answer: Any) -> None:
    after = db_snapshot(ca.ca.db)
    assert after == before, f"the CA's database changed on a refused request ({answer.status} {answer.body[:200]!r})"


@FUZZ
@given(method=st.sampled_from(METHODS), path=paths(KNOWN), ctype=st.sampled_from(CONTENT_TYPES + ("application/json",)),
       body=st.one_of(st.none(), garbage_bodies()))
def test_random_requests_change_nothing(ca: RunningCa, raw: RawHttps, errors: InternalErrors, method: str, path: str,
                                        ctype: str, body: bytes | None) -> None:
    before = db_snapshot(ca.ca.db)
    headers = {"Content-Type": ctype} if ctype else {}
    a = raw.send(method, path, body, headers)
    assert_sane(a, method)
    _unchanged(ca, before, a)
    assert errors.seen == []


@FUZZ
@given(data=st.data())
def test_mutated_registrations_are_refused_and_burn_nothing(ca: RunningCa, raw: RawHttps, pending: dict[str, Any],
                                                            errors: InternalErrors, data: st.DataObject) -> None:
    body = data.draw(mutations(pending["body"]))
    before = db_snapshot(ca.ca.db)
    ctype = data.draw(st.sampled_from(("application/json",) * 4 + CONTENT_TYPES))
    a = raw.send("POST", "/register", dumps(body), {"Content-Type": ctype})
    assert_refusal(a)
    _unchanged(ca, before, a)
    assert ca.registration(pending["key"])["used_at"] is None
    assert errors.seen == []


_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                       max_size=40)


@FUZZ
@given(scheme=st.sampled_from(("Bearer", "bearer", "Basic", "", "Bearer  ")), secret=_HEADER_TEXT,
       path=st.sampled_from(("/admin/persons", "/admin/revoke", "/admin/list")),
       body=json_values())
def test_operator_endpoints_refuse_wrong_secrets(ca: RunningCa, raw: RawHttps, errors: InternalErrors, scheme: str,
                                                  secret: str, path: str, body: Any) -> None:
    """Any Authorization header but the right one (latin-1 bytes too: not valid UTF-8 on the wire)."""
    if secret.strip() == ca.admin:
        secret += "x"
    before = db_snapshot(ca.ca.db)
    a = raw.send("GET" if path.endswith("list") else "POST", path, dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"{scheme} {secret}".strip()})
    assert_refusal(a, 400, 401, 403)
    _unchanged(ca, before, a)
    assert errors.seen == []


@FUZZ
@given(path=st.sampled_from(("/admin/persons", "/admin/revoke")), data=st.data())
def test_operator_bodies_with_the_right_secret(ca: RunningCa, raw: RawHttps, errors: InternalErrors, path: str,
                                                data: st.DataObject) -> None:
    """The operator is authenticated but the body is wrong: refused, nothing recorded or revoked."""
    valid = {"name": "Op Person"} if path == "/admin/persons" else {"serial": "1"}
    optional = ("email", "role", "hosts") if path == "/admin/persons" else ("reason",)
    body = data.draw(st.one_of(mutations(valid, optional), st.fixed_dictionaries(
        {k: st.sampled_from(LONE_SURROGATES) if k in ("name", "serial") else st.just(v) for k, v in valid.items()})))
    before = db_snapshot(ca.ca.db)
    a = raw.send("POST", path, dumps(body), {"Content-Type": "application/json",
                                             "Authorization": f"Bearer {ca.admin}"})
    assert_refusal(a)
    _unchanged(ca, before, a)
    assert errors.seen == []


def test_hostile_json_at_every_json_endpoint(ca: RunningCa, raw: RawHttps, pending: dict[str, Any],
                                             errors: InternalErrors) -> None:
    """Deep nesting, 5000-digit numbers, NaN, lone surrogates in every field: 400, never a 500."""
    auth = {"Authorization": f"Bearer {ca.admin}"}
    before = db_snapshot(ca.ca.db)
    for path, valid, headers in (("/register", pending["body"], {}),
                                 ("/admin/persons", {"name": "Op Person", "email": "op@example.org", "hosts": ["h"]},
                                  auth),
                                 ("/admin/revoke", {"serial": "1", "reason": "unspecified"}, auth)):
        for name, body in hostile_bodies(valid).items():
            a = raw.send("POST", path, body, {"Content-Type": "application/json", **headers})
            assert 400 <= a.status < 500, (path, name, a.status, a.body[:200])
            assert_refusal(a)
    assert db_snapshot(ca.ca.db) == before
    assert errors.seen == []


def test_a_replayed_registration_redelivers_and_issues_nothing_new(ca: RunningCa, raw: RawHttps,
                                                                   errors: InternalErrors) -> None:
    key = ca.add_person("Replay Person", "replay@example.org")
    signer = SoftwareSigner()
    body = request_body(signer, key, "Replay Person", "replay@example.org")
    first = raw.post_json("/register", body)
    assert first.status == 200, first.body
    issued = first.json()
    state = db_snapshot(ca.ca.db)
    for _ in range(3):
        again = raw.post_json("/register", body)
        assert again.status == 200 and again.json()["repeated"] is True
        assert again.json()["certificate"] == issued["certificate"]
        assert db_snapshot(ca.ca.db) == state
    # the same registration with another key's request: refused, nothing issued
    thief = request_body(SoftwareSigner(), key, "Replay Person", "replay@example.org")
    assert_refusal(raw.post_json("/register", thief), 409)
    assert db_snapshot(ca.ca.db) == state
    assert errors.seen == []


def test_truncated_oversized_lying_and_non_http_requests(ca: RunningCa, raw: RawHttps, pending: dict[str, Any],
                                                         errors: InternalErrors) -> None:
    before = db_snapshot(ca.ca.db)
    whole = dumps(pending["body"])
    for keep in (0, 1, len(whole) // 2, len(whole) - 1):
        raw.truncated("/register", whole, keep)
    big = raw.post_json("/register", {**pending["body"], "csr": "A" * 70_000})
    assert_refusal(big, 413)
    lying = raw.lying_length("/register", 10**9, 100_000)
    assert lying is not None
    assert_refusal(lying, 413)
    protocol_level_refusals(raw, "/register")
    assert db_snapshot(ca.ca.db) == before
    assert ca.registration(pending["key"])["used_at"] is None
    ok = raw.post_json("/register", pending["body"])               # and the service still works
    assert ok.status == 200, ok.body
    assert errors.seen == []
