"""``semper demo``: a whole marketplace on this machine, and a buyer who buys twice with a card.

What it does, in order (everything real, everything throwaway in a temporary folder):

1. makes the world: purse scheme, SoftHSM2 tokens, the CA, the bank, the third party, the shop's
   folder, the buyer's card and the seller's PSAM (``client/demo_world.py``);
2. starts pcscd if needed and serves both cards to its virtual readers (vpcd);
3. starts ``semper serve ca``, ``bank``, ``ttp`` and ``shop`` on loopback (the shop opens its PSAM in
   the second reader through pcscd);
4. opens the TINGUIN — interactive in a terminal; otherwise a scripted user answers the same
   screens and says so — and, as the buyer: registers the card's key at the CA, loads the purse
   from the bank account, buys a teapot by mail order paid from the card purse, and buys a market
   report whose payment is fairly exchanged for it; every PIN is typed into the TINGUIN and goes
   to the card;
5. verifies the evidence (the archive's hash chain and signed checkpoint, both deals' bundles, the
   deal judge and the exchange judge), lets the seller clear its PSAM batch, and shows the balances
   before and after;
6. stops everything it started, also on Ctrl-C.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .support.money import format_amount

if TYPE_CHECKING:
    from .commerce.buyer import Buyer

ADDRESS = {"name": "Bob Buyer", "street": "1 Teapot Lane", "postcode": "10115", "city": "Berlin", "country": "DE"}


class Narrator:
    """The demo's own lines: printed at once when a script answers, after the TINGUIN closes otherwise."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.lines: list[str] = []
        self.start = time.monotonic()

    def __call__(self, line: str) -> None:
        stamped = f"[{time.monotonic() - self.start:5.1f}s] {line}"
        if self.live:
            print(stamped, flush=True)
        else:
            self.lines.append(stamped)

    def flush(self) -> None:
        for line in self.lines:
            print(line)
        self.lines.clear()
        self.live = True


def run_demo(keep: bool = False, interactive: bool | None = None) -> int:
    from semper.hardware.simulator import card_keys_in
    folder = Path(tempfile.mkdtemp(prefix="semper-demo-"))
    with card_keys_in(folder):            # the demo cards' sealing keys stay in the demo folder
        return _run_demo(folder, keep, interactive)


def _run_demo(folder: Path, keep: bool, interactive: bool | None) -> int:
    from semper.hardware.pcscd import VirtualCards

    from .demo_world import CARD_PIN, World
    from .tinguin.api import Script, run_deal
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    say = Narrator(live=True)
    world: World | None = None
    try:
        say(f"semper demo in {folder}")
        if interactive:
            say(f"you will answer in the TINGUIN; the demo card's PIN is {CARD_PIN.decode()} (you will be asked for "
                "it before each signature the card makes)")
        else:
            say("standard input is not a terminal: a SCRIPTED USER will answer the TINGUIN's screens (it says so on "
                "every screen, and the signed orders record that no person confirmed)")
        world = World.create(folder, card_sync=True, say=lambda line: say(f"  set-up: {line}"))
        say("starting pcscd (if needed) and serving the buyer's card and the seller's PSAM to its virtual readers")
        with VirtualCards([world.buyer_card, world.psam_card], sync=True) as vc:
            say(f"  readers: {vc.readers[0]!r} (buyer's card), {vc.readers[1]!r} (seller's PSAM)")
            say("starting the CA, the bank, the third party and the shop (semper serve ...) on loopback")
            services = world.start_processes(psam_reader=vc.readers[1])
            for name in ("ca", "bank", "ttp", "shop"):
                say(f"  {name:5} {getattr(services, name)}")
            narrate = Narrator(live=not interactive)
            narrate.start = say.start
            result = run_deal(lambda ui: _buyer(ui, world, vc.readers[0], narrate), interactive=interactive,
                              script=Script(payment="card-purse", pin=CARD_PIN.decode()),
                              say=lambda line: say(f"  {line}"))
            narrate.flush()
            say("the seller clears its PSAM batch at the acquirer")
            cleared = _clear(world)
            say(f"  cleared: {cleared}")
            before = _balances(say, "balances before", world, result["purse_before"], result["before"])
            after = _balances(say, "balances after ", world, result["purse_after"])
            conserved = before == after
            say(f"money conserved: {format_amount(before, 978)} before and {format_amount(after, 978)} after, "
                f"{'equal' if conserved else 'NOT EQUAL'}")
            ok = result["ok"] and conserved
        say("demo finished: " + ("both deals satisfied, the evidence verifies, money is conserved" if ok
                                 else "something did not check; see above"))
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\nsemper demo: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        if world is not None:
            world.stop()
        if keep:
            print(f"(kept {folder}; its cards open with SEMPER_CARD_KEYS={folder / 'card-keys'})")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _balances(say: Callable[[str], None], title: str, world: Any, purse: int, bank: dict[str, int] | None = None
              ) -> int:
    """Say the balances; returns their sum (the buyer's and the seller's money together)."""
    b = bank or {"buyer account": world.bank.balance(world.accounts["buyer"]),
                 "seller account": world.bank.balance(world.accounts["seller"])}
    say(f"{title}: buyer's account {format_amount(b['buyer account'], 978)}, buyer's purse "
        f"{format_amount(purse, 978)}, seller's account {format_amount(b['seller account'], 978)}")
    return b["buyer account"] + purse + b["seller account"]


def _clear(world: Any) -> Any:
    from .support.channels import ChannelError, JsonClient
    secret = (world.shop_dir / "admin-secret").read_text().strip()
    try:
        with JsonClient(world.services.shop, world.root_pem, timeout=30, name="the shop") as shop:
            answer = shop.post("/admin/clear", {}, {"Authorization": f"Bearer {secret}"})
    except ChannelError as e:
        return str(e)
    c = answer.get("cleared") or {}
    return f"{c.get('count', 0)} debit(s), {format_amount(int(c.get('total', 0)), 978)}" if c else answer


def purse_balance(buyer: Buyer) -> int:
    """The buyer's purse balance (the demo's buyer has a card, so a purse)."""
    balance = buyer.balance()
    if balance is None:
        raise RuntimeError("the demo's buyer has no purse")
    return balance[0]


def _buyer(ui: Any, world: Any, reader: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Everything the buyer does, in the TINGUIN's worker thread."""
    from semper.hardware import cards
    from semper.hardware.iso7816 import AID

    from .commerce.judge import judge_deal
    from .commerce.setup import BuyerConfig, open_buyer, register_card
    from .commerce.workflows import buy_information, mail_order
    from .exchange.judge import judge as judge_exchange
    from .payment.item import item_verifiers
    from .payment.modules.purse import PurseModule
    from .support.archive import verify_bundle
    from .support.trust import TrustStore
    from .tinguin.model import ProgressStep, StepState
    s = world.services
    ttp_cert, escrow = world.ttp_files()
    world.buyer_dir.mkdir(exist_ok=True)
    cfg = BuyerConfig(shop_url=s.shop, ca_root_pem=world.root_pem, archive=world.buyer_dir / "evidence.sqlite3",
                      purse_root=world.scheme.root_cert, bank_url=s.bank, bank_tls_root=world.bank_tls_root,
                      account=world.accounts["buyer"], ttp_url=s.ttp, ttp_cert=ttp_cert, escrow=escrow,
                      tls=world.buyer_tls(), patience=10.0)
    out: dict[str, Any] = {"ok": False}
    with cards.connection(AID.PURSE, reader) as card:
        session = open_buyer(cfg, ui, card)
        try:
            b = session.buyer

            def step(key: str, title: str, state: StepState, detail: str = "") -> None:
                ui.progress(ProgressStep(key, title, state, detail))
            out["before"] = {"buyer account": world.bank.balance(world.accounts["buyer"]),
                             "seller account": world.bank.balance(world.accounts["seller"])}
            out["purse_before"] = purse_balance(b)
            step("register", "register your card's key at the CA", StepState.RUNNING)
            say("buyer: registers the card's key at the CA (the operator handed over a registration key)")
            serial = register_card(session, ca_url=s.ca, ca_root_pem=world.root_pem,
                                   registration_key=world.registration_key(), name="Bob Buyer",
                                   email="bob@buyer.example", save_dir=world.buyer_dir)
            say(f"  certificate {serial} on the card (PIV 9C)")
            step("register", "register your card's key at the CA", StepState.DONE, f"certificate {serial[:16]}…")
            step("load", "load 50.00 EUR into the purse from your account", StepState.RUNNING)
            loaded = b.payments.module_as("card-purse", PurseModule).load(5_000)
            say(f"buyer: loaded the purse: balance {format_amount(loaded['balance'], 978)}")
            step("load", "load 50.00 EUR into the purse from your account", StepState.DONE)
            say("buyer: mail order of a teapot, paid from the card purse")
            teapot = mail_order(b, [("teapot", 1)], form=ADDRESS, prefer="card-purse")
            say(f"  {teapot.status.value}: {teapot.summary}")
            say("buyer: on-line purchase of the market report, the payment fairly exchanged for it")
            report = buy_information(b, "market-report", prefer="card-purse")
            say(f"  {report.status.value}: {report.summary}")
            out["purse_after"] = purse_balance(b)
            ok = teapot.ok and report.ok
            step("evidence", "check the evidence of both deals", StepState.RUNNING)
            say("buyer: checks its evidence (a checkpoint signed on the card seals the archive)")
            trust = TrustStore([world.ca_root])
            report_chain = b.archive.verify(trust)
            say(f"  archive: {'hash chain intact' if report_chain.ok else report_chain.problems}")
            ok = ok and report_chain.ok
            for r in (teapot, report):
                if r.deal_id is None:
                    continue
                path = b.archive.export(r.deal_id, world.folder / f"deal-{r.deal_id[:8]}.zip")
                bundle = verify_bundle(path, trust)
                ruling = judge_deal(path, trust, world.scheme.root_cert)
                say(f"  deal {r.deal_id[:8]}: bundle {'verifies' if bundle.ok else bundle.problems}; judge: "
                    f"{ruling.ruling}")
                say(f"    what you saw is what you signed: {ruling.facts.get('what_you_see_is_what_you_sign')}")
                ok = ok and bundle.ok and ruling.ruling.endswith("both fulfilled")
                xids = [e for e in b.archive.entries(r.deal_id) if e.kind == "exchange"]
                if xids:
                    import json
                    xid = json.loads(xids[-1].content)["xid"]
                    xr = judge_exchange(b.archive.export(xid, world.folder / "exchange.zip"), trust,
                                        item_verifiers(purse_root=world.scheme.root_cert))
                    say(f"    the exchange {xid[:12]}…: {xr.ruling} (fair: {xr.fair})")
                    ok = ok and xr.fair
            step("evidence", "check the evidence of both deals", StepState.DONE if ok else StepState.FAILED)
            out["ok"] = ok
            return out
        finally:
            session.close()
