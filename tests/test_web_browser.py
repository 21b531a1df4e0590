"""The shop's web page and the hand-off to the buyer's agent, in a real browser (Debian's chromium, headless).

A buyer browses the catalogue, fills the order form, hands the order to the agent, the TINGUIN confirms
(its scripted user, on the real screens, as ``semper demo`` scripts it), and the page shows the delivery.
Then the hostile pages: another origin, a file:// page, a rebound DNS name, a page that forges the price
in its own text or slips a price into the hand-off, and a flood of hand-offs. Each is refused, or shown
truthfully in the TINGUIN; nothing is paid without the TINGUIN's confirmation (purse, accounts and the
shop's payment counter compared before and after).
"""
from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from browser import Shots, chromium, need_browser, spki_hash, wait_for
from web_world import ADDRESS, WebWorld, make_web_world

from semper.client.demo_world import CARD_PIN
from semper.client.support.channels import server_context
from semper.client.support.http_service import ServiceRunner
from semper.client.tinguin.api import Script

PAY = Script(payment="card-purse", pin=CARD_PIN.decode())
DECLINE = Script(accept_offer=False)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebWorld]:
    need_browser()
    ww = make_web_world(tmp_path_factory.mktemp("web") / "w", every=2.0)    # the rate itself: test_web_agent.py
    stop = threading.Event()
    worker = threading.Thread(target=ww.agent.serve, args=(stop,), name="agent-deals", daemon=True)
    worker.start()
    try:
        yield ww
    finally:
        stop.set()
        worker.join(10)
        ww.agent.stop()
        ww.world.stop()


@pytest.fixture(scope="module")
def browser(market: WebWorld) -> Iterator[Any]:
    with chromium([spki_hash(market.world.shop_dir / "tls" / "cert.pem")]) as driver:
        yield driver


@pytest.fixture
def shots(tmp_path: Path, record_property: Any) -> Shots:
    return Shots(tmp_path, record_property)


def by(driver: Any, css: str) -> Any:
    return driver.find_element("css selector", css)


def all_by(driver: Any, css: str) -> list[Any]:
    return driver.find_elements("css selector", css)


def visible(driver: Any, *selectors: str) -> None:
    """Each element is on the page, shown, and inside the window the screenshot captures."""
    width, height = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    for css in selectors:
        found = all_by(driver, css)
        assert found, f"{css} is not on the page"
        e = found[0]
        assert e.is_displayed(), f"{css} is not shown"
        r = e.rect
        assert r["x"] >= 0 and r["y"] >= 0 and r["x"] < width and r["y"] < height, f"{css} is outside the window"


def settle(market: WebWorld, timeout: float = 90.0) -> None:
    """Wait (bounded) until the agent has no deal waiting or running."""
    deadline = time.monotonic() + timeout
    while market.agent.pending and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not market.agent.pending, "the agent's deals did not finish in time"


def order_page(driver: Any, shop: str, sku: str, form: dict[str, str] | None = None) -> None:
    """From the shop's catalogue to the hand-off page of one item, filling its form."""
    driver.get(shop + "/")
    by(driver, f"#item-{sku} h2 a").click()
    wait_for(driver, lambda d: all_by(d, "#order"), "the product page")
    by(driver, "#order").click()
    wait_for(driver, lambda d: all_by(d, "#continue"), "the order form")
    for name, value in (form or {}).items():
        field = by(driver, f"#f-{name}")
        field.clear()
        field.send_keys(value)
    by(driver, "#continue").click()
    wait_for(driver, lambda d: all_by(d, "#semper-pay") and by(d, "#semper-pay").is_displayed(), "the hand-off page")


def outcome(driver: Any, what: str, timeout: float = 90.0) -> str:
    def done(d: Any) -> str | None:
        text = by(d, "#semper-status").text
        return text if text.startswith("SEMPER") else None
    return str(wait_for(driver, done, what, timeout))


# ---- the buyer's path ---------------------------------------------------------------------------------
def test_browse_fill_hand_off_confirm_delivery(market: WebWorld, browser: Any, shots: Shots) -> None:
    market.tinguin.script = PAY
    before = market.money()
    browser.get(market.shop + "/")
    assert browser.title == "Catalogue · Teapot Shop"
    visible(browser, "h1", "#item-teapot h2 a", "#item-teapot .price", "#item-market-report .price")
    assert by(browser, "#item-teapot .price").text == "12.50 EUR"
    shots.take(browser, "catalogue")
    by(browser, "#item-teapot h2 a").click()
    wait_for(browser, lambda d: all_by(d, "#quantity"), "the product page")
    by(browser, "#order").click()
    wait_for(browser, lambda d: all_by(d, "#order-form"), "the order form")
    labels = [e.text.rstrip(" *") for e in all_by(browser, "#order-form label")]
    assert labels == ["Deliver to", "Street", "Postcode", "City", "Country"]     # the DELIVERY spec, in order
    for name, value in {**ADDRESS, "postcode": "!!"}.items():
        by(browser, f"#f-{name}").send_keys(value)
    by(browser, "#f-postcode").send_keys("")
    by(browser, "#continue").click()
    wait_for(browser, lambda d: all_by(d, "#errors"), "the form's error list")
    assert "Postcode" in by(browser, "#errors").text and "is not a postcode" in by(browser, "#errors").text
    assert by(browser, "#f-postcode").get_attribute("aria-invalid") == "true"
    field = by(browser, "#f-postcode")
    field.clear()
    field.send_keys(ADDRESS["postcode"])
    visible(browser, "h1", "#order-form", "#f-name", "#f-country", "#continue")
    shots.take(browser, "order-form")
    by(browser, "#continue").click()
    wait_for(browser, lambda d: all_by(d, "#semper-pay") and by(d, "#semper-pay").is_displayed(), "the hand-off page")
    assert "12.50 EUR" in by(browser, "#page-summary").text and "1 Teapot Lane" in by(browser, "#page-summary").text
    assert by(browser, "#semper-link").get_attribute("href").startswith("web+semper:purchase?shop=https")
    shots.take(browser, "hand-off")
    seen = len(market.tinguin.seen)
    by(browser, "#semper-pay").click()
    said = outcome(browser, "the agent's outcome")
    assert "is satisfied" in said, said
    wait_for(browser, lambda d: by(d, "#semper-result").is_displayed(), "the delivery link")
    by(browser, "#semper-delivery").click()
    wait_for(browser, lambda d: all_by(d, "#tracking"), "the delivery page")
    visible(browser, "h1", "#deal", "#tracking")
    assert by(browser, "#tracking").text.startswith("TRK-")
    assert "Bob Buyer" in by(browser, "#note").text and "Berlin" in by(browser, "#note").text
    assert "12.50" in by(browser, "#payment").text          # the note is the payment's confirmation too
    shots.take(browser, "delivery")
    after = market.money()
    assert before["purse"] - after["purse"] == 1250
    assert after["shop payments"] == before["shop payments"] + 1
    screens = "\n".join(market.tinguin.seen[seen:])
    assert "Teapot Shop" in screens and "12.50 EUR" in screens and "SCRIPTED USER" in screens
    assert any("accepted the confirmation" in s for s in market.tinguin.said)


def test_information_is_delivered_to_the_browser(market: WebWorld, browser: Any, shots: Shots) -> None:
    """The market report, its payment fairly exchanged for it, is downloadable from the delivery page."""
    market.tinguin.script = PAY
    before = market.money()
    order_page(browser, market.shop, "market-report")
    by(browser, "#semper-pay").click()
    said = outcome(browser, "the exchange's outcome")
    assert "is satisfied" in said, said
    wait_for(browser, lambda d: by(d, "#semper-result").is_displayed(), "the delivery link")
    by(browser, "#semper-delivery").click()
    wait_for(browser, lambda d: all_by(d, "#download"), "the download link")
    visible(browser, "h1", "#download")
    shots.take(browser, "download")
    href = by(browser, "#download").get_attribute("href")
    with market.client() as c:
        content = c.get(href.removeprefix(market.shop)).content
        item = market.world.services.opened_shop.shop.catalogue.get("market-report")
        assert hashlib.sha256(content).hexdigest() == item.sha256
        assert c.get(href.removeprefix(market.shop).split("?")[0] + "?order=" + "0" * 64).status_code == 404
    assert before["purse"] - market.money()["purse"] == 400


# ---- hostile pages ----------------------------------------------------------------------------------------
EVIL = """<!doctype html><html><head><title>evil</title></head><body><h1>Free teapots</h1>
<p id="out">working</p>
<form id="f" method="post" action="{agent}/v1/purchases" enctype="text/plain" target="sink">
<input name='{{"shop":"{shop}","offer":"AAAAAAAAAAAAAAAAAAAAAA","form":{{}},"x":"' value='"}}'></form>
<iframe name="sink" title="sink"></iframe>
<script>
var results = [];
function note(t) {{ results.push(t); document.getElementById("out").textContent = results.join(" | "); }}
fetch("{agent}/v1/purchases", {{method: "POST", headers: {{"Content-Type": "application/json"}},
  body: JSON.stringify({{shop: "{shop}", offer: "AAAAAAAAAAAAAAAAAAAAAA", form: {{}}}})}})
  .then(function (r) {{ note("fetch " + r.status); }}, function (e) {{ note("fetch refused"); }});
fetch("{agent}/v1/purchases", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{shop: "{shop}", offer: "AAAAAAAAAAAAAAAAAAAAAA", form: {{}}}})}})
  .then(function (r) {{ note("no-cors sent"); }}, function (e) {{ note("no-cors refused"); }});
document.getElementById("f").submit();
</script></body></html>"""


def _evil_servers(market: WebWorld, tmp: Path) -> tuple[list[ServiceRunner], list[str], Path]:
    """The attacker's page on another origin: plain http, https (a valid certificate for another port),
    and a file on disk."""
    page = EVIL.format(agent=market.agent_url, shop=market.shop)

    async def evil(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")
    app_http, app_https = web.Application(), web.Application()
    app_http.add_routes([web.get("/", evil)])
    app_https.add_routes([web.get("/", evil)])
    tls = market.world.shop_dir / "tls"
    runners = [ServiceRunner(app_http, "127.0.0.1", 0).start(),
               ServiceRunner(app_https, "127.0.0.1", 0, server_context(tls / "cert.pem", tls / "key.pem")).start()]
    file_page = tmp / "evil.html"
    file_page.write_text(page)
    return runners, [r.url + "/" for r in runners] + [file_page.as_uri()], file_page


def test_pages_of_other_origins_cannot_hand_off(market: WebWorld, browser: Any, shots: Shots, tmp_path: Path
                                               ) -> None:
    market.tinguin.script = PAY
    before, deals, refusals = market.money(), market.tinguin.deals, len(market.agent.refusals)
    runners, pages, _ = _evil_servers(market, tmp_path)
    try:
        seen: dict[str, str] = {}
        for url in pages:
            browser.get(url)
            wait_for(browser, lambda d: by(d, "#out").text.count("|") >= 1, f"the evil page at {url}")
            time.sleep(1.0)                                   # the form post and the no-cors fetch land
            seen[url] = by(browser, "#out").text
            shots.take(browser, "evil-" + url.split(":")[0])
        settle(market)
    finally:
        for r in runners:
            r.stop()
    new = market.agent.refusals[refusals:]
    codes = {c for c, _ in new}
    for url, text in seen.items():
        shots.saw(f"the page at {url.split('?')[0][:60]} saw: {text}")
    shots.saw("the agent refused: " + "; ".join(f"{code} ({what})" for code, what in new))
    for text in seen.values():
        assert "fetch refused" in text                      # CORS: no answer reaches another site's script
    assert codes <= {"forbidden_origin", "first_contact"} and len(new) >= 3 * 2, new   # preflights, simple posts
    assert any("'null'" in what for _, what in new)                    # the file:// page
    assert any("https://127.0.0.1:" in what and market.shop not in what for _, what in new)
    assert market.tinguin.deals == deals                                # the TINGUIN was never opened
    assert market.money() == before


def test_dns_rebinding_gets_nothing(market: WebWorld, browser: Any, shots: Shots) -> None:
    """A page on a name that rebinds to loopback, talking to the agent same-origin: Host is refused."""
    market.tinguin.script = PAY
    before, deals = market.money(), market.tinguin.deals
    rebound = f"http://rebind.test:{market.agent.port}"
    browser.get(rebound + "/")                    # the attacker's name now resolves to the agent's port
    assert "misdirected" in browser.page_source
    status = browser.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "fetch('/v1/purchases', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({shop: arguments[0], offer: 'AAAAAAAAAAAAAAAAAAAAAA', form: {}})})"
        ".then(function (r) { return r.text().then(function (t) { done(r.status + ' ' + t); }); },"
        " function () { done('failed'); });", market.shop)
    shots.take(browser, "rebinding")
    shots.saw(f"the page at {rebound} saw: {status}")
    assert status.startswith("421 ") and "misdirected" in status
    assert market.agent.refusals[-1][0] == "misdirected" and "rebind.test" in market.agent.refusals[-1][1]
    with httpx.Client() as c:                     # and a rebinding Host with the real shop's Origin: same
        r = c.post(market.agent_url + "/v1/purchases", headers={"Host": f"rebind.test:{market.agent.port}",
                                                              "Origin": market.shop},
                   json={"shop": market.shop, "offer": "A" * 22, "form": {}})
        assert r.status_code == 421 and "access-control-allow-origin" not in r.headers
    assert market.tinguin.deals == deals and market.money() == before


HAND_OFF = """
var done = arguments[arguments.length - 1], agent = arguments[0], change = arguments[1];
var request = JSON.parse(document.getElementById('semper-request').textContent);
change(request);
fetch(agent + '/v1/purchases', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                body: JSON.stringify(request)})
  .then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
  .then(function (a) {
    if (a[0] !== 202) { done(a); return; }
    (function poll() {
      fetch(agent + '/v1/purchases/' + a[1].job).then(function (r) { return r.json(); }).then(function (s) {
        if (s.status === 'waiting' || s.status === 'running') { setTimeout(poll, 200); } else { done([202, s]); }
      });
    }());
  }, function (e) { done([0, String(e)]); });
"""


def hand_off(driver: Any, market: WebWorld, change: str) -> tuple[int, dict[str, Any]]:
    """What a hostile script on the shop's own page gets when it hands off its own version of the request."""
    driver.set_script_timeout(120)
    try:
        status, body = driver.execute_async_script(HAND_OFF.replace("change(request);", change), market.agent_url,
                                                   None)
    finally:
        driver.set_script_timeout(30)
    return int(status), body


def test_a_forged_price_on_the_page_is_not_what_the_tinguin_shows(market: WebWorld, browser: Any, shots: Shots
                                                                 ) -> None:
    market.tinguin.script = PAY
    before = market.money()
    order_page(browser, market.shop, "tea-sampler", ADDRESS)
    # the page lies about the price in its own text ...
    browser.execute_script("document.querySelector('#page-summary .price').textContent = '0.01 EUR';")
    assert by(browser, "#page-summary .price").text == "0.01 EUR"
    # ... slips a price into the hand-off: the request has no such field
    status, body = hand_off(browser, market, "request.price = 1;")
    shots.saw(f"a price slipped into the hand-off: {status} {body}")
    assert status == 400 and body["error"] == "unknown_field" and "price" in body["message"]
    # ... or into the form: the signed offer's form has no such field, so the agent refuses before anything is signed
    seen = len(market.tinguin.seen)
    status, body = hand_off(browser, market, "request.form.price = '0.01';")
    shots.saw(f"a price slipped into the form: {status} {body}")
    assert status == 202 and body["outcome"] == "failed" and body["delivery"] is None
    assert "has no such field" in "\n".join(market.tinguin.seen[seen:])      # the TINGUIN says why
    assert market.money() == before                                            # nothing signed, nothing paid
    # the page's own button, under the forged text: the TINGUIN shows the signed price, which is what is paid
    seen = len(market.tinguin.seen)
    by(browser, "#semper-pay").click()
    said = outcome(browser, "the deal at the signed price")
    shots.take(browser, "forged-price")
    assert "is satisfied" in said, said
    offer_screen = market.tinguin.seen[seen]
    shots.saw("the page showed 0.01 EUR; the TINGUIN showed: " + " | ".join(
        line.strip() for line in offer_screen.splitlines() if "Teapot Shop" in line or "EUR" in line))
    assert "8.90 EUR" in offer_screen and "0.01" not in offer_screen and "Teapot Shop" in offer_screen
    assert before["purse"] - market.money()["purse"] == 890                   # what the TINGUIN showed


def test_a_flood_of_hand_offs_is_limited_and_nothing_is_paid(market: WebWorld, browser: Any, shots: Shots) -> None:
    market.tinguin.script = DECLINE                          # the user declines whatever reaches the TINGUIN
    before, deals = market.money(), market.tinguin.deals
    order_page(browser, market.shop, "teapot", ADDRESS)
    market.agent.buckets.clear()                             # a page that has not handed anything off yet
    statuses = browser.execute_async_script(
        "var done = arguments[arguments.length - 1], agent = arguments[0], out = [], n = 40;"
        "var body = document.getElementById('semper-request').textContent;"
        "for (var i = 0; i < n; i++) {"
        "  fetch(agent + '/v1/purchases', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: body})"
        "  .then(function (r) { out.push(r.status); }, function () { out.push(0); })"
        "  .then(function () { if (out.length === n) { done(out); } });"
        "}", market.agent_url)
    shots.take(browser, "flood")
    settle(market)
    accepted = statuses.count(202)
    shots.saw(f"a flood of 40 hand-offs: {accepted} accepted (shown in the TINGUIN, declined there), "
              f"{statuses.count(429)} refused with 429")
    assert statuses.count(429) == 40 - accepted and 1 <= accepted <= market.agent.queue_limit
    assert market.tinguin.deals - deals == accepted          # each accepted one was shown, and declined
    assert any("declined the offer" in s for s in market.tinguin.said)
    assert market.money() == before


# ---- semper demo --web ---------------------------------------------------------------------------------
@pytest.mark.pcsc
@pytest.mark.timeout(300)                   # pcscd is shared: the demo may wait its turn for the readers
def test_semper_demo_web_prints_the_shop_and_sells_through_its_agent(tmp_path: Path, record_property: Any) -> None:
    """The real thing: ``semper demo --web`` (services as processes, cards behind pcscd, the agent in the demo's
    process, its scripted user in the TINGUIN), a browser on the URL it prints, a teapot bought on the page."""
    import os
    import signal
    import subprocess
    import sys
    need_browser()
    env = {**os.environ, "SEMPER_HOME": str(tmp_path / "home"), "SEMPER_CONFIG": str(tmp_path / "prefs.toml")}
    proc = subprocess.Popen([sys.executable, "-m", "semper.client.cli", "demo", "--web", "--agent-port", "0"],
                            cwd=Path(__file__).resolve().parents[1], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C ends the demo" in line:
                ready.set()
    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(200), "".join(lines)[-3000:]
        text = "".join(lines)
        shop = text.split("the shop is at ")[1].split()[0].rstrip("/")
        folder = Path(text.split("a throwaway marketplace in ")[1].split()[0])
        assert "SCRIPTED USER" in text and "purse balance 50.00 EUR" in text
        with chromium([spki_hash(folder / "shop" / "tls" / "cert.pem")]) as driver:
            order_page(driver, shop, "teapot", ADDRESS)
            by(driver, "#semper-pay").click()
            said = outcome(driver, "the demo agent's outcome")
            assert "is satisfied" in said, said
            by(driver, "#semper-delivery").click()
            wait_for(driver, lambda d: all_by(d, "#tracking"), "the delivery page")
            Shots(tmp_path, record_property).take(driver, "demo-web-delivery")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    text = "".join(lines)
    assert proc.returncode == 0 and "semper demo --web: stopped" in text, text[-3000:]
    assert "accepted the confirmation" in text and "satisfied" in text

