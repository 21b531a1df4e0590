"""The marketplace for the web tests: the services in this process (the shop with its web site), the buyer's
card registered and loaded, and the buyer's agent on loopback, whose TINGUIN is answered by the scripted
user on the real screens, as ``semper demo`` scripts it; what each screen showed is kept for the tests."""
from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from semper.bench.policy_ui import PolicyUI
from semper.client.agent.service import Agent
from semper.client.commerce.setup import BuyerConfig, open_buyer, register_card
from semper.client.commerce.workflows import DealResult
from semper.client.demo_world import CARD_PIN, World
from semper.client.servers.shop_web import AGENT_ENV
from semper.client.tinguin.api import Script, ScriptedUI
from semper.client.tinguin.app import TinguinApp
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card

ADDRESS = {"name": "Bob Buyer", "street": "1 Teapot Lane", "postcode": "10115", "city": "Berlin", "country": "DE"}


@dataclass
class Tinguin:
    """Runs each deal's workflow in the TINGUIN with the scripted user (the demo's way), recording the
    text of every screen it answered (``seen``) and what it said (``said``)."""

    script: Script
    seen: list[str] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    deals: int = 0

    def __call__(self, workflow: Any) -> DealResult:
        self.deals += 1

        async def main() -> DealResult:
            app = TinguinApp(phrase=None, scripted=True, start=None)
            async with app.run_test(headless=True, size=(100, 40), notifications=False) as pilot:
                ui = ScriptedUI(app, asyncio.get_running_loop(), pilot, self.script, self.said.append)
                try:
                    return await asyncio.wait_for(asyncio.to_thread(workflow, ui), 120)
                finally:
                    self.seen.extend(ui.seen)
        return asyncio.run(main())


@dataclass
class WebWorld:
    world: World
    agent: Agent
    tinguin: Tinguin
    shop: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.shop, verify=ssl.create_default_context(cadata=self.world.root_pem),
                            timeout=30)

    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.agent.port}"

    def money(self) -> dict[str, int]:
        """The card's purse, the buyer's and the seller's accounts, and the shop's payments counter."""
        with open_card(self.world.buyer_card, sync=False) as card:
            purse = PurseSession(card)
            purse.select()
            balance = purse.info().balance
        shop = self.world.services.opened_shop.shop
        return {"purse": balance, "buyer account": self.world.bank.balance(self.world.accounts["buyer"]),
                "seller account": self.world.bank.balance(self.world.accounts["seller"]),
                "shop payments": shop.counters["payments"], "shop orders": shop.counters["orders"]}


def make_web_world(folder: Path, *, script: Script | None = None, load: int = 5_000, burst: int = 3,
                   every: float = 20.0) -> WebWorld:
    world = World.create(folder)
    tinguin = Tinguin(script or Script(payment="card-purse", pin=CARD_PIN.decode()))
    placeholder = BuyerConfig(shop_url="https://127.0.0.1:1", ca_root_pem=world.root_pem, archive=folder / "none")
    agent = Agent(placeholder, lambda: open_card(world.buyer_card, sync=False), tinguin, burst=burst, every=every)
    agent.start(port=0)
    old = os.environ.get(AGENT_ENV)
    os.environ[AGENT_ENV] = f"http://127.0.0.1:{agent.port}"      # what the shop's page tells its script
    try:
        s = world.start_in_process()
    finally:
        if old is None:
            os.environ.pop(AGENT_ENV, None)
        else:
            os.environ[AGENT_ENV] = old
    world.buyer_dir.mkdir(exist_ok=True)
    ttp_cert, escrow = world.ttp_files()
    cfg = BuyerConfig(shop_url=s.shop, ca_root_pem=world.root_pem, archive=world.buyer_dir / "evidence.sqlite3",
                      purse_root=world.scheme.root_cert, bank_url=s.bank, bank_tls_root=world.bank_tls_root,
                      account=world.accounts["buyer"], ttp_url=s.ttp, ttp_cert=ttp_cert, escrow=escrow,
                      tls=world.buyer_tls(), patience=10.0)
    with open_card(world.buyer_card, sync=False) as card:          # set-up: register the card's key, load the purse
        session = open_buyer(cfg, PolicyUI(pin=CARD_PIN), card)
        register_card(session, ca_url=s.ca, ca_root_pem=world.root_pem, registration_key=world.registration_key(),
                      name="Bob Buyer", email="bob@buyer.example", save_dir=world.buyer_dir)
        if load:
            session.buyer.payments.module("card-purse").load(load)
        session.close()
    agent.config = cfg
    agent.allowed.add(s.shop)
    return WebWorld(world, agent, tinguin, s.shop)
