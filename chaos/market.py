"""The chaos market: one demo world whose services run as real processes behind fault proxies.

What it starts (all loopback, all in one temporary folder): ``semper serve ca|bank|ttp|shop``
processes (the shop as ``python -m semper.chaos.cheating_shop`` while a cheat is set), a
:class:`~chaos.proxy.FaultProxy` in front of the bank, the third party and the shop (every party is
configured with the proxies' addresses, so a party restarted on a new port stays reachable), the
buyer's card as a :class:`~chaos.card.TearableCard` process, and the buyer's real client
(``open_buyer``) with a fixed-policy user (``bench.policy_ui``), its card key registered at the CA.

The world is made once per ``semper chaos`` invocation (about 10 s); runs share it, so the checks
compare each run's end with its start. With ``db="postgresql"`` every service keeps its state in a
database of a PostgreSQL cluster the market starts for itself (``semper.bench.postgres``: its own
folder and unix socket, stopped by pid when the market closes); otherwise each keeps SQLite in its
folder.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semper.client.demo_world import CARD_PIN, World

from .card import TearableCard
from .proxy import FaultProxy

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class ServiceProcess:
    """One ``semper serve ...`` process that can be SIGKILLed and started again on its folder."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.starts = 0
        self.kills = 0
        self.lock = threading.Lock()

    def start(self) -> int:
        with self.lock:
            cmd = [sys.executable, *self.argv, "--port", "0"]
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
            url = _announced(self.proc, self.name, START_TIMEOUT)
            self.port = int(url.rsplit(":", 1)[1].rstrip("/"))
            self.starts += 1
            return self.port

    def kill(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.kills += 1
            if self.proc is not None:
                self.proc.wait(STOP_TIMEOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        with self.lock:
            p = self.proc
            if p is None or p.poll() is not None:
                return
            p.terminate()
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(STOP_TIMEOUT)


def _announced(proc: subprocess.Popen[str], name: str, timeout: float) -> str:
    """The URL the service prints when it listens; its output is drained afterwards (bounded wait)."""
    box: dict[str, str] = {}
    tail: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "url" not in box:
                tail.append(line)
                if "listening on" in line:
                    box["url"] = line.strip().rsplit(" ", 1)[-1]
    t = threading.Thread(target=read, daemon=True)
    t.start()
    deadline = timeout
    while deadline > 0 and "url" not in box and proc.poll() is None:
        t.join(0.05)
        deadline -= 0.05
    if "url" not in box:
        proc.kill()
        proc.wait(STOP_TIMEOUT)
        raise RuntimeError(f"{name} did not start within {timeout:.0f} s: {''.join(tail)[-800:].strip()}")
    return box["url"]


@dataclass
class Market:
    world: World
    folder: Path
    services: dict[str, ServiceProcess]
    proxies: dict[str, FaultProxy]
    card: TearableCard
    session: Any                                   # client.commerce.setup.BuyerSession
    ui: Any                                        # bench.policy_ui.PolicyUI
    cheat: str | None = None
    closers: list[Any] = field(default_factory=list)
    cluster: Any = None                            # semper.bench.postgres.PostgresCluster, or None (SQLite)

    @property
    def buyer(self) -> Any:
        return self.session.buyer

    @classmethod
    def create(cls, folder: Path, *, patience: float = 2.0, say: Any = None, db: str = "sqlite") -> Market:
        from semper.bench.policy_ui import PolicyUI
        from semper.client.commerce.setup import BuyerConfig, open_buyer, register_card
        tell = say or (lambda _line: None)
        folder = Path(folder)
        cluster = None
        dbs: dict[str, str] = {}
        if db == "postgresql":
            from semper.bench.postgres import PostgresCluster, missing_reason
            reason = missing_reason()
            if reason is not None:
                raise ValueError(f"--db postgresql: {reason}")
            tell("starting a PostgreSQL cluster of the run's own (unix socket, stopped at the end)")
            cluster = PostgresCluster.start()
            dbs = {name: cluster.new_database(f"chaos_{name}") for name in ("ca", "bank", "ttp", "shop")}
        elif db != "sqlite":
            raise ValueError(f"--db is sqlite or postgresql, not {db!r}")
        tell("making the world: CA, bank, third party, shop, buyer card, tokens")
        try:
            world = World.create(folder, dbs=dbs)
        except BaseException:
            if cluster is not None:
                cluster.stop()
            raise
        env = world.child_env()
        pin = ["--pin-file", str(world.pin_file)]
        serve = ["-m", "semper.client.cli", "serve"]
        services = {"ca": ServiceProcess("semper serve ca", serve + ["ca", "--ca-dir", str(world.ca_dir)] + pin
                                         + world.db_args("ca"), env),
                    "bank": ServiceProcess("semper serve bank", serve + ["bank", "--bank-dir", str(world.bank_dir)]
                                           + pin + world.db_args("bank"), env),
                    "ttp": ServiceProcess("semper serve ttp", serve + ["ttp", "--dir", str(world.ttp_dir)] + pin
                                          + world.db_args("ttp"), env)}
        proxies: dict[str, FaultProxy] = {}
        market: Market | None = None
        card: TearableCard | None = None
        try:
            tell("starting semper serve ca, bank, ttp (one after the other: they share one SoftHSM2 folder)")
            tls = {name: (folder / "cert.pem", folder / "key.pem") for name, folder in
                   (("bank", world.bank_dir / "tls"), ("ttp", world.ttp_dir / "tls"), ("shop", world.shop_dir / "tls"))}
            roots = {"bank": world.bank_tls_root.read_text(), "ttp": world.root_pem, "shop": world.root_pem}
            for name in ("ca", "bank", "ttp"):
                port = services[name].start()
                if name != "ca":
                    proxies[name] = FaultProxy(name, port, services[name], tls=tls[name], upstream_root=roots[name])
            world._shop_home(None, proxies["ttp"].url, proxies["bank"].url)
            services["shop"] = ServiceProcess("semper serve shop", serve + ["shop", "--dir", str(world.shop_dir)] + pin
                                              + world.db_args("shop"), env)
            proxies["shop"] = FaultProxy("shop", services["shop"].start(), services["shop"], tls=tls["shop"],
                                         upstream_root=roots["shop"])
            tell("the buyer's card (a process that can be torn) and the buyer's client")
            card = TearableCard(world.buyer_card).start()
            ui = PolicyUI(pin=CARD_PIN, payment="card-purse")
            world.buyer_dir.mkdir(exist_ok=True)
            ttp_cert, escrow = world.ttp_files()
            cfg = BuyerConfig(shop_url=proxies["shop"].url, ca_root_pem=world.root_pem,
                              archive=world.buyer_dir / "evidence.sqlite3", purse_root=world.scheme.root_cert,
                              bank_url=proxies["bank"].url, bank_tls_root=world.bank_tls_root,
                              account=world.accounts["buyer"], ttp_url=proxies["ttp"].url, ttp_cert=ttp_cert,
                              escrow=escrow, tls=world.buyer_tls(), patience=patience,
                              modules=("card-purse", "cheque", "setpay"))
            session = open_buyer(cfg, ui, card)
            market = cls(world, folder, services, proxies, card, session, ui, cluster=cluster)
            ca_url = f"https://127.0.0.1:{services['ca'].port}"
            register_card(session, ca_url=ca_url, ca_root_pem=world.root_pem,
                          registration_key=world.registration_key(), name="Bob Buyer", email="bob@buyer.example",
                          save_dir=world.buyer_dir)
            world.bank.cash_in(world.accounts["buyer"], 10_000_000)
            market.top_up()
            return market
        except BaseException:
            if market is not None:
                market.close()
            else:
                for p in proxies.values():
                    p.close()
                for s in reversed(list(services.values())):
                    s.stop()
                if card is not None:
                    card.close()
                world.stop()
                if cluster is not None:
                    cluster.stop()
            raise

    # ---- the buyer's purse ------------------------------------------------------------------------
    def purse_balance(self) -> int:
        with self.buyer.card_lock:
            self.buyer.purse.select()
            return int(self.buyer.purse.info().balance)

    def top_up(self, low: int = 5_000, amount: int = 20_000) -> None:
        """Keep the purse able to pay (a load from the buyer's account, through the bank's proxy)."""
        if self.purse_balance() < low:
            self.buyer.payments.module("card-purse").load(amount)

    # ---- the shop's cheat -------------------------------------------------------------------------
    def set_cheat(self, cheat: str | None) -> None:
        """Restart the shop as the cheating shop (or as the real ``semper serve shop`` again)."""
        if cheat == self.cheat:
            return
        shop = self.services["shop"]
        shop.stop()
        w = self.world
        pin = ["--pin-file", str(w.pin_file)] + w.db_args("shop")
        if cheat is None:
            shop.argv = ["-m", "semper.client.cli", "serve", "shop", "--dir", str(w.shop_dir)] + pin
            shop.name = "semper serve shop"
        else:
            shop.argv = ["-m", "semper.chaos.cheating_shop", "--dir", str(w.shop_dir), "--cheat", cheat] + pin
            shop.name = f"cheating shop ({cheat})"
        self.proxies["shop"].retarget(shop.start())
        self.cheat = cheat

    def shop_admin_secret(self) -> str:
        return (self.world.shop_dir / "admin-secret").read_text().strip()

    def ensure_up(self) -> list[str]:
        """Every party back up after a run (a crash's restart finished); what had to be restarted."""
        restarted = []
        for name, proxy in self.proxies.items():
            proxy.wait_ready()
            if not self.services[name].alive():
                proxy.retarget(self.services[name].start())
                restarted.append(name)
        return restarted

    def close(self) -> None:
        try:
            self.session.close()
        except Exception:                       # closing is best effort
            pass
        for p in self.proxies.values():
            p.close()
        for s in reversed(list(self.services.values())):
            s.stop()
        self.card.close()
        self.world.stop()
        if self.cluster is not None:
            try:
                self.world.bank.db.close()        # the operator's handles, before the server goes
                self.world.ca.db.close()
            except Exception:                     # closing is best effort
                pass
            self.cluster.stop()
