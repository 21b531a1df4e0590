"""``semper demo --web``: the marketplace of ``semper demo``, with the shop's web site and the buyer's agent.

What it does: makes the same throwaway world (``demo_world.py``), serves the buyer's card and the seller's
PSAM through pcscd, starts the CA, bank, third party and shop as ``semper serve`` processes, and starts
the buyer's agent (``client/agent``) on loopback in this process. As the buyer it then registers the
card's key at the CA and loads the purse (in the TINGUIN), prints the shop's URL and, in a terminal with a
display, opens a browser on it. From then on every order handed over from the page is a deal in the
TINGUIN in this terminal, exactly as ``semper buy`` runs it; without a terminal the scripted user answers
(and says so). It runs until Ctrl-C (or SIGTERM) and then stops everything it started.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .support.money import format_amount

AGENT_PORT = 8470
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def run_web_demo(keep: bool = False, interactive: bool | None = None, agent_port: int = AGENT_PORT,
                 browse: bool = True) -> int:
    from semper.hardware.simulator import card_keys_in
    folder = Path(tempfile.mkdtemp(prefix="semper-demo-web-"))
    with card_keys_in(folder):
        return _run(folder, keep, interactive, agent_port, browse)


def _say(line: str) -> None:
    print(f"semper demo --web: {line}", flush=True)


def _run(folder: Path, keep: bool, interactive: bool | None, agent_port: int, browse: bool) -> int:
    from semper.hardware.pcscd import VirtualCards

    from .agent.service import Agent
    from .commerce.setup import BuyerConfig
    from .demo_world import CARD_PIN, World
    from .servers.shop_web import AGENT_ENV
    from .tinguin.api import Script, run_deal
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    script = Script(payment="card-purse", pin=CARD_PIN.decode())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    world: World | None = None
    agent: Agent | None = None
    browser: subprocess.Popen[bytes] | None = None
    try:
        _say(f"a throwaway marketplace in {folder}")
        if interactive:
            _say(f"you answer in the TINGUIN in this terminal; the demo card's PIN is {CARD_PIN.decode()}")
        else:
            _say("standard input is not a terminal: a SCRIPTED USER answers the TINGUIN (it says so on every screen)")
        world = World.create(folder, card_sync=True, say=lambda line: _say(f"  set-up: {line}"))
        with VirtualCards([world.buyer_card, world.psam_card], sync=True) as vc:
            reader = vc.readers[0]

            def card() -> Any:
                from semper.hardware.cards import open_connection
                from semper.hardware.iso7816 import AID
                return open_connection(AID.PURSE, reader)

            def runner(workflow: Any) -> Any:
                return run_deal(workflow, interactive=interactive, script=script, say=lambda line: _say(f"  {line}"))
            placeholder = BuyerConfig(shop_url="https://127.0.0.1", ca_root_pem=world.root_pem,
                                      archive=folder / "buyer" / "evidence.sqlite3")
            agent = Agent(placeholder, card, runner, say=lambda line: _say(f"agent: {line}"))
            try:
                agent_url = agent.start(port=agent_port)
            except OSError:
                agent_url = agent.start(port=0)
            os.environ[AGENT_ENV] = agent_url              # the shop's page tells its script where the agent is
            _say(f"the buyer's agent listens on {agent_url} (loopback only)")
            _say("starting the CA, the bank, the third party and the shop (semper serve ...) on loopback")
            s = world.start_processes(psam_reader=vc.readers[1])
            ttp_cert, escrow = world.ttp_files()
            world.buyer_dir.mkdir(exist_ok=True)
            cfg = BuyerConfig(shop_url=s.shop, ca_root_pem=world.root_pem,
                              archive=world.buyer_dir / "evidence.sqlite3", purse_root=world.scheme.root_cert,
                              bank_url=s.bank, bank_tls_root=world.bank_tls_root, account=world.accounts["buyer"],
                              ttp_url=s.ttp, ttp_cert=ttp_cert, escrow=escrow, tls=world.buyer_tls(), patience=10.0)
            _say("the buyer registers the card's key at the CA and loads 50.00 EUR into the purse (TINGUIN)")
            balance = run_deal(lambda ui: _set_up(ui, world, card, cfg), interactive=interactive, script=script,
                               say=lambda line: _say(f"  {line}"))
            _say(f"  purse balance {format_amount(balance, 978)}")
            agent.config = cfg
            agent.allowed.add(s.shop)
            (folder / "ca-root.pem").write_text(world.root_pem)
            _say(f"the demo CA's root (for your browser, if it asks): {folder / 'ca-root.pem'}")
            _say(f"the shop is at {s.shop}/")
            if interactive and browse:
                browser = _open_browser(s.shop + "/", folder, world.shop_dir / "tls" / "cert.pem")
            _say("order on the page; each order opens the TINGUIN here. Ctrl-C ends the demo")
            try:
                agent.serve(stop)
            except KeyboardInterrupt:
                pass
        return 0
    except KeyboardInterrupt:
        print("\nsemper demo --web: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        if browser is not None and browser.poll() is None:
            browser.terminate()
        if agent is not None:
            agent.stop()
        if world is not None:
            world.stop()
        _say("stopped")
        if keep:
            print(f"(kept {folder}; its cards open with SEMPER_CARD_KEYS={folder / 'card-keys'})")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _set_up(ui: Any, world: Any, card: Callable[[], Any], cfg: Any) -> int:
    """Register the card's key and load the purse, in the TINGUIN's worker thread; returns the balance."""
    from .commerce.setup import open_buyer, register_card
    from .payment.modules.purse import PurseModule
    connection = card()
    try:
        session = open_buyer(cfg, ui, connection)
        try:
            register_card(session, ca_url=world.services.ca, ca_root_pem=world.root_pem,
                          registration_key=world.registration_key(), name="Bob Buyer", email="bob@buyer.example",
                          save_dir=world.buyer_dir)
            loaded = session.buyer.payments.module_as("card-purse", PurseModule).load(5_000)
            return int(loaded["balance"])
        finally:
            session.close()
    finally:
        connection.close()


def _open_browser(url: str, folder: Path, shop_cert: Path) -> subprocess.Popen[bytes] | None:
    """A browser on the shop, when this terminal has a display: Chromium with a profile of its own that accepts
    exactly the shop's key (the demo CA is no root it knows), else the desktop's default browser."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        _say("no display here: open the shop's URL in a browser yourself")
        return None
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    exe = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if exe is None:
        import webbrowser
        opened = webbrowser.open(url)
        _say("opened your browser" if opened else "no browser found: open the shop's URL yourself")
        return None
    cert = x509.load_pem_x509_certificates(shop_cert.read_bytes())[0]
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    _say(f"opening {Path(exe).name} on the shop")
    return subprocess.Popen([exe, f"--user-data-dir={folder / 'browser'}", "--no-first-run",
                             f"--ignore-certificate-errors-spki-list={pin}", url],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
