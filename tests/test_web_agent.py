"""The agent's door and the shop's pages without a browser: what a page may ask, what is refused before a deal
starts (Host, Origin, secret, first contact, shape, rate), the ``web+semper:`` link, ``semper agent install``
and ``open``, and the shop's pages escaping what they show and keeping deliveries to their order's digest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from semper.client.agent.desktop import install
from semper.client.agent.handoff import BadHandoff, from_link, origin_of
from semper.client.agent.service import Agent
from semper.client.commerce.catalogue import Catalogue, CatalogueItem
from semper.client.commerce.setup import BuyerConfig
from semper.client.commerce.workflows import DealResult
from semper.client.servers.shop_web import ShopWeb, handoff_link
from semper.client.support.http_service import ServiceRunner
from semper.client.tinguin.model import OutcomeStatus

REPO = Path(__file__).resolve().parents[1]
SHOP = "https://shop.example:8446"
OFFER = "A" * 22
REQUEST = {"shop": SHOP, "offer": OFFER, "form": {"name": "Bob"}}


class Stub:
    """Stands in for the TINGUIN run: records each deal it was asked to run, runs none."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, workflow: Any) -> DealResult:
        self.calls += 1
        return DealResult("d" * 32, "mail-order", OutcomeStatus.SATISFIED, "done", documents={"order": b"order"})


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Agent, Stub, httpx.Client]]:
    stub = Stub()
    cfg = BuyerConfig(shop_url=SHOP, ca_root_pem="", archive=tmp_path / "a.sqlite3")
    a = Agent(cfg, lambda: None, stub, allowed=(SHOP,), burst=3, every=60.0, queue_limit=2)
    a.checkout = lambda shop, offer: ("mail-order", [("teapot", 1)])
    a.start(port=0)
    stop = threading.Event()
    worker = threading.Thread(target=a.serve, args=(stop,), daemon=True)
    worker.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{a.port}", timeout=10, trust_env=False) as c:
        try:
            yield a, stub, c
        finally:
            stop.set()
            worker.join(5)
            a.stop()


def wait_done(c: httpx.Client, job: str, headers: dict[str, str]) -> dict[str, Any]:
    for _ in range(100):
        s = c.get(f"/v1/purchases/{job}", headers=headers).json()
        if s["status"] in ("done", "refused"):
            return dict(s)
        threading.Event().wait(0.05)
    raise AssertionError(f"job {job} did not finish")


def test_the_agent_refuses_what_a_page_may_not_ask(agent: tuple[Agent, Stub, httpx.Client]) -> None:
    a, stub, c = agent
    port = a.port
    cases = [  # (headers, body or raw, expected status, expected code)
        ({"Host": f"rebind.test:{port}", "Origin": SHOP}, REQUEST, 421, "misdirected"),
        ({"Host": f"127.0.0.1.nip.io:{port}", "Origin": SHOP}, REQUEST, 421, "misdirected"),
        ({}, REQUEST, 403, "no_origin"),
        ({"Origin": "null"}, REQUEST, 403, "forbidden_origin"),
        ({"Origin": "http://shop.example:8446"}, REQUEST, 403, "forbidden_origin"),
        ({"Origin": "https://evil.example"}, {**REQUEST, "shop": "https://evil.example"}, 403, "first_contact"),
        ({"Origin": "https://evil.example"}, REQUEST, 403, "first_contact"),
        ({"Origin": SHOP}, {**REQUEST, "shop": "https://evil.example"}, 403, "not_the_shop"),
        ({"Origin": SHOP, "Authorization": "Bearer wrong"}, {**REQUEST, "shop": "https://other.example"}, 403,
         "not_the_shop"),
        ({"Origin": SHOP}, {**REQUEST, "price": 1}, 400, "unknown_field"),
        ({"Origin": SHOP}, {**REQUEST, "offer": "../../admin/clear"}, 400, "bad_value"),
        ({"Origin": SHOP}, {**REQUEST, "shop": "http://shop.example:8446"}, 400, "bad_shop"),
        ({"Origin": SHOP}, {**REQUEST, "form": {"Name": "x"}}, 400, "bad_value"),
    ]
    for headers, body, status, code in cases:
        r = c.post("/v1/purchases", json=body, headers=headers)
        assert (r.status_code, r.json()["error"]) == (status, code), (headers, body, r.text)
        assert "access-control-allow-origin" not in r.headers or headers.get("Origin") == SHOP
    r = c.post("/v1/purchases", content=json.dumps(REQUEST), headers={"Origin": SHOP, "Content-Type": "text/plain"})
    assert r.status_code == 415                              # what a cross-site form could send without preflight
    r = c.options("/v1/purchases", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = c.options("/v1/purchases", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Private-Network": "true"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == SHOP
    assert r.headers["access-control-allow-private-network"] == "true"
    assert stub.calls == 0 and len(a.refusals) >= len(cases) + 1


def test_a_page_learns_only_the_outcome_and_only_its_own(agent: tuple[Agent, Stub, httpx.Client]) -> None:
    a, stub, c = agent
    r = c.post("/v1/purchases", json=REQUEST, headers={"Origin": SHOP})
    assert r.status_code == 202 and r.headers["access-control-allow-origin"] == SHOP
    job = r.json()["job"]
    done = wait_done(c, job, {"Origin": SHOP})
    assert set(done) == {"job", "status", "outcome", "deal", "delivery"}            # no summary, no evidence
    assert done["outcome"] == "satisfied" and done["delivery"].startswith(f"{SHOP}/delivery/{'d' * 32}?order=")
    assert c.get(f"/v1/purchases/{job}", headers={"Origin": "https://evil.example"}).status_code == 404
    assert c.get(f"/v1/purchases/{job}").status_code == 404
    local = {"Authorization": f"Bearer {a.secret}"}
    assert c.get(f"/v1/purchases/{job}", headers=local).json()["reason"] == "done"
    assert stub.calls == 1


def test_a_flood_is_rate_limited(agent: tuple[Agent, Stub, httpx.Client]) -> None:
    a, stub, c = agent
    a.queue_limit = 100
    codes = [c.post("/v1/purchases", json=REQUEST, headers={"Origin": SHOP}).status_code for _ in range(10)]
    assert codes[:3] == [202] * 3 and set(codes[3:]) == {429}
    a.buckets.clear()
    a.queue_limit = 0                                        # the queue is full: busy, whatever the rate
    r = c.post("/v1/purchases", json=REQUEST, headers={"Origin": SHOP})
    assert (r.status_code, r.json()["error"]) == (429, "busy")


def test_the_first_contact_with_a_shop_is_asked_at_the_agent(tmp_path: Path) -> None:
    asked: list[str] = []
    answers = iter([False, True])

    def confirm(origin: str) -> bool:
        asked.append(origin)
        return next(answers)
    stub = Stub()
    cfg = BuyerConfig(shop_url=SHOP, ca_root_pem="", archive=tmp_path / "a.sqlite3")
    a = Agent(cfg, lambda: None, stub, confirm=confirm)
    a.checkout = lambda shop, offer: ("mail-order", [("teapot", 1)])
    a.start(port=0)
    stop = threading.Event()
    threading.Thread(target=a.serve, args=(stop,), daemon=True).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{a.port}", timeout=10, trust_env=False) as c:
            h = {"Origin": SHOP}
            assert c.options("/v1/purchases", headers=h).status_code == 204
            first = wait_done(c, c.post("/v1/purchases", json=REQUEST, headers=h).json()["job"], h)
            assert first["status"] == "refused" and stub.calls == 0 and SHOP not in a.allowed
            second = wait_done(c, c.post("/v1/purchases", json=REQUEST, headers=h).json()["job"], h)
            assert second["outcome"] == "satisfied" and SHOP in a.allowed
            wait_done(c, c.post("/v1/purchases", json=REQUEST, headers=h).json()["job"], h)
            assert asked == [SHOP, SHOP] and stub.calls == 2                  # asked once it was allowed, not again
    finally:
        stop.set()
        a.stop()


def test_web_semper_links() -> None:
    link = handoff_link(REQUEST)
    assert from_link(link) == from_link(f"web+semper:purchase?shop={SHOP}&offer={OFFER}&form.name=Bob")
    assert from_link(link).form == {"name": "Bob"}
    for bad in ("https://x", "web+semper:pay?shop=x", f"web+semper:purchase?shop={SHOP}",
                f"web+semper:purchase?shop={SHOP}&offer={OFFER}&offer={OFFER}",
                f"web+semper:purchase?shop={SHOP}&offer={OFFER}&price=1"):
        with pytest.raises(BadHandoff):
            from_link(bad)
    assert origin_of("https://Shop.Example:443/") == "https://shop.example"
    for bad in ("http://shop.example", "https://shop.example/path", "https://u@shop.example", "null",
                "https://shop.example:99999", "file:///etc/passwd", "https://shop.example?x=1"):
        assert origin_of(bad) is None, bad


def _semper(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_semper_agent_open_hands_a_link_over_with_the_secret(agent: tuple[Agent, Stub, httpx.Client],
                                                             tmp_path: Path) -> None:
    a, stub, _c = agent
    env = {**os.environ, "SEMPER_HOME": str(tmp_path / "home"), "SEMPER_CONFIG": str(tmp_path / "prefs.toml")}
    link = handoff_link(REQUEST)
    none = _semper("agent", "open", link, "--no-browser", env=env)
    assert none.returncode == 1 and "no SEMPER agent is running" in none.stderr
    (tmp_path / "home" / "agent").mkdir(parents=True)
    (tmp_path / "home" / "agent" / "agent.json").write_text(json.dumps({"url": f"http://127.0.0.1:{a.port}",
                                                                        "secret": a.secret}))
    r = _semper("agent", "open", link, "--no-browser", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outcome"] == "satisfied" and stub.calls == 1
    bad = _semper("agent", "open", "web+semper:purchase?shop=x", env=env)
    assert bad.returncode == 2 and "not a purchase request" in bad.stderr
    missing = _semper("agent", "--ca-root", str(tmp_path / "none.pem"), env=env)        # bad input: one line, 2
    assert missing.returncode == 2 and "none.pem" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "root.pem").write_text("a root\n")
    no_terminal = _semper("agent", "--ca-root", str(tmp_path / "root.pem"), env=env)
    assert no_terminal.returncode == 2 and "--script" in no_terminal.stderr
    out_of_range = _semper("agent", "--port", "99999", env=env)
    assert out_of_range.returncode == 2 and "99999" in out_of_range.stderr


def test_semper_agent_install_registers_the_link_handler(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "HOME": str(tmp_path)}
    r = _semper("agent", "install", env=env)
    assert r.returncode == 0, r.stderr
    entry = (tmp_path / "data" / "applications" / "semper-agent.desktop").read_text()
    assert "MimeType=x-scheme-handler/web+semper;" in entry and " agent open %u" in entry
    assert "NoDisplay=true" in entry and "Terminal=false" in entry
    if "xdg-mime" in r.stdout and "done" in r.stdout:
        assert "x-scheme-handler/web+semper=semper-agent.desktop" in (tmp_path / "config" / "mimeapps.list").read_text()
    done = install(tmp_path / "apps", command=["/opt/my semper/bin/python", "-m", "semper.client.cli"], register=False)
    assert 'Exec="/opt/my semper/bin/python" -m semper.client.cli agent open %u' in \
        (tmp_path / "apps" / "semper-agent.desktop").read_text() and len(done) == 1


# ---- the shop's pages, over a stand-in shop ------------------------------------------------------------
def test_pages_escape_what_they_show_and_keep_deliveries_to_their_order(tmp_path: Path) -> None:
    hostile = CatalogueItem("teapot", '<script>alert("x")</script> Teapot "&" </p>', "physical", 1250)
    sd = types.SimpleNamespace(order_digest="ab" * 32, paid=True, delivery=None, lines=[(hostile, 1)],
                               offer={"currency": 978, "total": 1250},
                               deal=types.SimpleNamespace(deal_id="c" * 32, workflow="mail-order"))
    deals = {"c" * 32: sd}
    shop = types.SimpleNamespace(name="<b>Shop</b>", catalogue=Catalogue.of([hostile]),
                                 find=lambda deal_id, *, fresh: deals.get(deal_id) if fresh else None,
                                 trust=None, content_of=lambda item: None)
    site = ShopWeb(shop, "http://127.0.0.1:8470")
    from aiohttp import web
    app = web.Application()
    app.add_routes(site.routes())
    with ServiceRunner(app, "127.0.0.1", 0) as runner, httpx.Client(base_url=runner.url, timeout=10) as c:
        page = c.get("/")
        assert page.status_code == 200 and "<script>alert" not in page.text and "&lt;script&gt;" in page.text
        assert "&lt;b&gt;Shop&lt;/b&gt;" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "connect-src 'self' http://127.0.0.1:8470" in page.headers["content-security-policy"]
        posted = c.post("/items/teapot/order", data={"quantity": "1", "name": "</script><script>x()</script>",
                                                     "street": "1 Lane", "postcode": "10115", "city": "B",
                                                     "country": "DE"})
        assert posted.status_code == 200 and "</script><script>x()" not in posted.text
        assert "\\u003c/script\\u003e" in posted.text                     # inside the JSON request, escaped
        assert c.get("/items/teapot/order?quantity=11").status_code == 400
        assert c.get("/items/nothing").status_code == 404
        assert c.get("/delivery/" + "c" * 32 + "?order=" + "ab" * 32).status_code == 200
        for wrong in ("?order=" + "ac" * 32, "?order=", "?order=" + "AB" * 32, ""):
            assert c.get("/delivery/" + "c" * 32 + wrong).status_code == 404
        sd.paid = False
        assert c.get("/delivery/" + "c" * 32 + "?order=" + "ab" * 32).status_code == 404
        key = posted.text.split('"offer": "')[1].split('"')[0]
        assert c.get(f"/checkouts/{key}").json() == {"workflow": "mail-order",
                                                     "items": [{"sku": "teapot", "quantity": 1}]}
        assert c.get("/checkouts/" + "B" * 22).status_code == 404
        assert c.get("/static/../shop_web.py").status_code == 404


def test_the_agent_takes_the_ca_root_from_the_preferences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`semper agent` without --ca-root reads trust.ca_root from the prefs (it raised TypeError before the
    type checker found the lookup: Prefs has get(), not [])."""
    import argparse

    from semper.client.commands.agent import buyer_config
    root = tmp_path / "root.pem"
    root.write_text("-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n")
    (tmp_path / "prefs.toml").write_text(f'[trust]\nca_root = "{root}"\n')
    monkeypatch.setenv("SEMPER_CONFIG", str(tmp_path / "prefs.toml"))
    monkeypatch.setenv("SEMPER_HOME", str(tmp_path / "home"))
    args = argparse.Namespace(ca_root=None, ttp=None, tls_dir=None, archive=None, purse_root=None, bank=None,
                              bank_tls_root=None, account=None, patience=1.0)
    assert buyer_config(args).ca_root_pem == root.read_text()


def test_the_agent_reads_the_bank_account_and_purse_root_from_the_preferences_as_buy_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent and `semper buy` read one configuration: the bank's TLS root, the account, the purse root and
    the bank's URL come from the prefs when no option names them (the agent ignored the first three), and a
    module that needs the bank says so before the agent starts listening."""
    import argparse

    from semper.client.commands import UsageError
    from semper.client.commands.agent import buyer_config
    pem = "-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n"
    files = {name: tmp_path / f"{name}.pem" for name in ("root", "bank", "purse")}
    for f in files.values():
        f.write_text(pem)
    prefs = tmp_path / "prefs.toml"
    prefs.write_text(f'[trust]\nca_root = "{files["root"]}"\nbank_tls_root = "{files["bank"]}"\n'
                     f'[servers]\nbank = "https://127.0.0.1:8443"\n[payment]\naccount = "acc-7"\n')
    monkeypatch.setenv("SEMPER_CONFIG", str(prefs))
    monkeypatch.setenv("SEMPER_HOME", str(tmp_path / "home"))
    args = argparse.Namespace(ca_root=None, ttp=None, tls_dir=None, archive=None, purse_root=None, bank=None,
                              bank_tls_root=None, account=None, patience=1.0, pay="setpay")
    cfg = buyer_config(args)
    assert (cfg.bank_url, cfg.account) == ("https://127.0.0.1:8443", "acc-7")
    assert Path(cfg.bank_tls_root) == files["bank"]
    prefs.write_text(f'[trust]\nca_root = "{files["root"]}"\n')
    with pytest.raises(UsageError, match="needs the bank: --bank URL"):
        buyer_config(args)
