"""``semper buy --service``: a shop offers a new commerce service (a subscription); the command downloads it,
the TINGUIN shows it (its scripted user on the real screens) and it runs. A module of its own: it makes
a world of its own (a new SoftHSM2 folder re-initialises the PKCS#11 module for the whole process)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

from test_services import PERMITS, SUBSCRIPTION, _Admin

from semper.bench.policy_ui import PolicyUI
from semper.client.commerce.setup import BuyerConfig, open_buyer, register_card
from semper.client.demo_world import CARD_PIN, World
from semper.client.support import prefs
from semper.hardware.simulator import open_card


# ---- semper buy --service ---------------------------------------------------------------------------------------
def test_semper_buy_downloads_shows_and_runs_a_subscription(tmp_path: Path) -> None:
    """The command against a shop offering a new service: it downloads it, the TINGUIN (its scripted user,
    on the real screens) shows what the service may do, and it runs: three periods, one payment each."""
    import os
    import subprocess
    import sys
    world = World.create(tmp_path / "w")
    s = world.start_in_process()
    try:
        world.start_certifier()
        world.buyer_dir.mkdir()
        with open_card(world.buyer_card, sync=False) as card:          # set-up: register and load the card
            cfg = BuyerConfig(shop_url=s.shop, ca_root_pem=world.root_pem, archive=world.buyer_dir / "ev.sqlite3",
                              bank_url=s.bank, bank_tls_root=world.bank_tls_root, account=world.accounts["buyer"])
            session = open_buyer(cfg, PolicyUI(pin=CARD_PIN), card)
            register_card(session, ca_url=s.ca, ca_root_pem=world.root_pem, registration_key=world.registration_key(),
                          name="Bob Buyer", email="bob@buyer.example", save_dir=world.buyer_dir)
            session.buyer.payments.module("card-purse").load(3_000)   # type: ignore[attr-defined]
            session.close()
        secret = (world.certifier_dir / "admin-secret").read_text().strip()
        doc = {**SUBSCRIPTION, "repeat": {"periods": 3, "every_seconds": 1}}
        cert = base64.b64decode(_Admin(s.certifier, world.root_pem, secret).post(
            "/certify", {"document": doc, "permits": PERMITS, "days": 30})["certificate"])
        services = world.shop_dir / "services"
        services.mkdir()
        (services / "tea-news.json").write_text(json.dumps(doc))
        (services / "tea-news.cert").write_bytes(cert)
        (tmp_path / "ca.pem").write_text(world.root_pem)
        (tmp_path / "pin").write_bytes(CARD_PIN)
        env = {**os.environ, "SEMPER_HOME": str(tmp_path / "home"), "SEMPER_CONFIG": str(tmp_path / "prefs.toml")}

        def semper(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], env=env, capture_output=True,
                                  text=True, timeout=240, stdin=subprocess.DEVNULL)
        base = ["buy", s.shop, "--service", "tea-news", "--image", str(world.buyer_card), "--ca-root",
                str(tmp_path / "ca.pem"), "--script", str(tmp_path / "pin"), "--json"]
        untrusting = semper(*base)
        assert untrusting.returncode == 2 and "trust.certifiers" in untrusting.stderr
        assert semper("prefs", "set", "trust.certifiers", str(world.certifier_dir / "certifier.pem")).returncode == 0
        r = semper(*base)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout)
        assert out["status"] == "satisfied" and "3 of 3 periods delivered, one payment each (12.00 EUR in all)" \
            in out["summary"], out
        assert "scripted user: allowed the service 'tea-news'" in r.stderr
        assert sum(1 for e in out["evidence"] if e["kind"] == "payment") == 3
        kept = prefs.load(tmp_path / "prefs.toml").values
        assert [v for k, v in kept.items() if k.startswith("services.")] == ["allow"]
        # the shop's PSAM took the three payments (its batch: the purse payments are offline)
        shop = s.opened_shop.shop
        assert shop.payments.ctx.psam.desk().info().lifetime_total == 3 * 400     # through the PSAM's one owner
    finally:
        world.stop()
