"""The commands: ``semper buy`` against a running shop (scripted TINGUIN user, card image), and
``semper demo`` from start to end (pcscd, the services as processes, the TINGUIN's scripted user)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from semper.bench.policy_ui import PolicyUI
from semper.client.commerce.setup import BuyerConfig, open_buyer, register_card
from semper.client.demo_world import CARD_PIN, World
from semper.hardware.simulator import open_card

REPO = Path(__file__).resolve().parents[1]


def _semper(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_semper_buy_asks_and_the_tinguin_decides(tmp_path: Path) -> None:
    world = World.create(tmp_path / "w")
    s = world.start_in_process()
    try:
        world.buyer_dir.mkdir()
        with open_card(world.buyer_card, sync=False) as card:          # set-up: register and load the card
            cfg = BuyerConfig(shop_url=s.shop, ca_root_pem=world.root_pem, archive=world.buyer_dir / "ev.sqlite3",
                              bank_url=s.bank, bank_tls_root=world.bank_tls_root, account=world.accounts["buyer"])
            session = open_buyer(cfg, PolicyUI(pin=CARD_PIN), card)
            register_card(session, ca_url=s.ca, ca_root_pem=world.root_pem, registration_key=world.registration_key(),
                          name="Bob Buyer", email="bob@buyer.example", save_dir=world.buyer_dir)
            session.buyer.payments.module("card-purse").load(3_000)
            session.close()
        (tmp_path / "ca.pem").write_text(world.root_pem)
        (tmp_path / "pin").write_bytes(CARD_PIN)
        env = {**os.environ, "SEMPER_HOME": str(tmp_path / "home"), "SEMPER_CONFIG": str(tmp_path / "prefs.toml")}
        base = ["buy", s.shop, "--image", str(world.buyer_card), "--ca-root", str(tmp_path / "ca.pem"), "--json"]
        no_terminal = _semper(*base, "teapot", env=env)
        assert no_terminal.returncode == 2 and "--script" in no_terminal.stderr
        form = ["--form", "name=Bob Buyer", "--form", "street=1 Main St", "--form", "postcode=12345", "--form",
                "city=Teatown", "--form", "country=DE"]
        r = _semper(*base, "teapot", *form, "--pay", "card-purse", "--script", str(tmp_path / "pin"), env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout)
        assert out["status"] == "satisfied" and "delivered" in out["summary"]
        assert "SCRIPTED" in r.stderr or "scripted user" in r.stderr
        assert {e["kind"] for e in out["evidence"]} >= {"statement:offer", "statement:order", "payment",
                                                        "statement:delivery"}
        # the buyer seals its archive with a checkpoint signed on the card, exports the deal, and the judge rules
        archive = tmp_path / "home" / "evidence.sqlite3"
        cp = subprocess.run([sys.executable, "-m", "semper.client.cli", "archive", "checkpoint", "--db", str(archive),
                             "--image", str(world.buyer_card), "--pin-stdin"], cwd=REPO, env=env, input="1234\n",
                            capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, cp.stderr
        bundle = tmp_path / "deal.zip"
        assert _semper("archive", "export", out["deal"], "--db", str(archive), "--out", str(bundle),
                       env=env).returncode == 0
        (tmp_path / "scheme.pem").write_bytes(world.scheme.root_cert.public_bytes(Encoding.PEM))
        judged = _semper("judge", str(bundle), "--ca", str(tmp_path / "ca.pem"), "--purse-root",
                         str(tmp_path / "scheme.pem"), "--json", env=env)
        assert judged.returncode == 0, judged.stderr
        ruling = json.loads(judged.stdout)
        assert ruling["ruling"].endswith("both fulfilled") and ruling["bundle"]["ok"], ruling
        assert "scheme root checked" in ruling["facts"]["payment"]["proof"]
        # without the purse root the judge cannot check the card behind the payment: it says so first
        unchecked = _semper("judge", str(bundle), "--ca", str(tmp_path / "ca.pem"), env=env)
        assert unchecked.returncode == 0, unchecked.stderr
        assert unchecked.stdout.startswith("NOT CHECKED: no --purse-root"), unchecked.stdout
        # a form the seller's signed spec does not allow is refused before anything is signed
        bad = _semper(*base, "teapot", "--form", "name=Bob", "--script", str(tmp_path / "pin"), env=env)
        assert bad.returncode == 1 and "street" in json.loads(bad.stdout)["summary"]
        # a person in a terminal answers the TINGUIN while the JSON result goes to a file (issue 17)
        _tinguin_with_json_to_a_file(tmp_path, env, [*base, "teapot", *form, "--pay", "card-purse"])
    finally:
        world.stop()


def _tinguin_with_json_to_a_file(tmp_path: Path, env: dict[str, str], args: list[str]) -> None:
    """``semper buy ... --json > deal.json`` in a real terminal (tmux): the TINGUIN draws on the terminal,
    a person's keys answer it, and the file holds the JSON result."""
    import shlex
    import shutil
    import time
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (make test installs it)")
    sock, done, result = tmp_path / "tmux.sock", tmp_path / "exit-status", tmp_path / "deal.json"
    prefix = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("SEMPER_HOME", "SEMPER_CONFIG", "SEMPER_CARD_KEYS")
                      if k in env)
    command = (f"cd {REPO} && {prefix} {sys.executable} -m semper.client.cli {shlex.join(args)} > {result}; "
               f"echo $? > {done}; sleep 30")

    def tmux(*a: str) -> str:
        return subprocess.run(["tmux", "-S", str(sock), *a], capture_output=True, text=True, timeout=10).stdout
    tmux("new-session", "-d", "-s", "buy", "-x", "110", "-y", "45", command)
    answered: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.4)
            pane = tmux("capture-pane", "-p", "-t", "buy")
            status = [x for x in pane.splitlines() if "●" in x]
            line = status[-1] if status else ""
            if "● PIN" in line:
                tmux("send-keys", "-t", "buy", *CARD_PIN.decode(), "Enter")
                answered.append("pin")
            elif "● confirm" in line:
                time.sleep(0.8)
                tmux("send-keys", "-t", "buy", "End")
                time.sleep(0.3)
                tmux("send-keys", "-t", "buy", "y")
                answered.append("confirm")
            elif "● verified offer" in line or "● result" in line:
                tmux("send-keys", "-t", "buy", "Enter")
                answered.append(line.split("●")[1].split("·")[0].strip())
            else:
                continue
            settle = time.monotonic() + 5
            while time.monotonic() < settle and not done.exists():
                time.sleep(0.2)
                if tmux("capture-pane", "-p", "-t", "buy") != pane:
                    break
        screen = tmux("capture-pane", "-p", "-S", "-200", "-t", "buy")
    finally:
        tmux("kill-server")
    assert done.exists() and done.read_text().strip() == "0", screen[-3000:]
    assert "confirm" in answered and "pin" in answered, answered
    out = json.loads(result.read_text())
    assert out["status"] == "satisfied" and "delivered" in out["summary"]
    assert "SCRIPTED" not in screen


@pytest.mark.pcsc
def test_semper_demo_runs_scripted_and_stops_everything(tmp_path: Path) -> None:
    env = {**os.environ, "SEMPER_HOME": str(tmp_path / "home"), "SEMPER_CONFIG": str(tmp_path / "prefs.toml")}
    r = _semper("demo", env=env, timeout=110)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = r.stdout
    assert "SCRIPTED USER" in out
    for line in ("certificate", "loaded the purse: balance 50.00 EUR", "paid 12.50 EUR with card purse",
                 "fairly exchanged", "hash chain intact", "re-renders identically", "(fair: True)",
                 "cleared: 2 debit(s), 16.50 EUR", "money conserved", "demo finished: both deals satisfied"):
        assert line in out, line
    assert "buyer's purse 33.50 EUR, seller's account 16.50 EUR" in out


@pytest.mark.pcsc
def test_semper_demo_in_a_real_terminal(tmp_path: Path) -> None:
    """A person's keys in a real terminal (tmux): the demo opens the TINGUIN interactively."""
    import shutil
    import time
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (make test installs it)")
    sock, done = tmp_path / "tmux.sock", tmp_path / "exit-status"
    env_prefix = f"SEMPER_HOME={tmp_path / 'home'} SEMPER_CONFIG={tmp_path / 'prefs.toml'}"
    command = f"cd {REPO} && {env_prefix} {sys.executable} -m semper.client.cli demo; echo $? > {done}; sleep 30"

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-S", str(sock), *args], capture_output=True, text=True, timeout=10).stdout
    tmux("new-session", "-d", "-s", "demo", "-x", "110", "-y", "45", command)
    answered: list[str] = []
    try:
        deadline = time.monotonic() + 100
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
            pane = tmux("capture-pane", "-p", "-t", "demo")
            status = [x for x in pane.splitlines() if "●" in x]
            line = status[-1] if status else ""
            if "● PIN" in line:
                tmux("send-keys", "-t", "demo", "1", "2", "3", "4", "Enter")
                answered.append("pin")
            elif "● confirm" in line:
                time.sleep(0.8)                      # a 'y' before the text could be read does not count
                tmux("send-keys", "-t", "demo", "End")   # ... nor one before its end was on the screen
                time.sleep(0.3)
                tmux("send-keys", "-t", "demo", "y")
                answered.append("confirm")
            elif "● verified offer" in line or "● result" in line:
                tmux("send-keys", "-t", "demo", "Enter")
                answered.append(line.split("●")[1].split("·")[0].strip())
            else:
                continue
            settle = time.monotonic() + 5            # the answered screen goes away before we look again
            while time.monotonic() < settle and not done.exists():
                time.sleep(0.2)
                if tmux("capture-pane", "-p", "-t", "demo") != pane:
                    break
        screen = tmux("capture-pane", "-p", "-S", "-300", "-t", "demo")
    finally:
        tmux("kill-server")
    assert done.exists() and done.read_text().strip() == "0", screen[-3000:]
    assert "SCRIPTED" not in screen and "you will answer in the TINGUIN" in screen
    assert answered.count("confirm") == 2 and answered.count("pin") >= 7, answered
    assert "money conserved: 100.00 EUR before and 100.00 EUR after, equal" in screen
