"""Conservation under random faults: hundreds of interleaved loads, purchases, clearings, cheques,
account payments, withdrawals and deposits, with connections to the bank dropped (before the request
reaches it, or after it was handled so the answer is lost) and the buyer's card process killed
with SIGKILL at random moments. After every run ``semper audit`` (the command, on the bank's
folder) finds nothing, and the card, the issuer and the PSAM agree about every cent.

``SEMPER_FAULT_OPS`` sets the number of operations (default 200; e.g. 5000 for a long run),
``SEMPER_FAULT_SEED`` the seed.
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from test_payment_support import EUR, PARTY_PIN, World, card_pin, make_world

from semper.bench.tearing import VpcdServerConnection
from semper.client.payment.bank_client import BankClient
from semper.client.payment.errors import PaymentError
from semper.client.payment.manager import LocalPayee, PaymentManager, pay
from semper.client.payment.model import Terms
from semper.client.payment.module import PartyContext
from semper.client.payment.modules.ecash import EcashModule
from semper.client.payment.modules.purse import PurseModule, recover_debit
from semper.client.payment.wallet import TokenWalletKey, Wallet
from semper.client.servers.bank_audit import audit
from semper.hardware import errors as hw
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.purse_records import DEBIT_REQUEST, DebitRecord
from semper.hardware.simulator import open_card
from semper.hsm.rsa import RsaTokenKeys

REPO = Path(__file__).resolve().parents[1]
OPS = int(os.environ.get("SEMPER_FAULT_OPS", "200"))
SEED = int(os.environ.get("SEMPER_FAULT_SEED", "7"))


class DroppingProxy:
    """TCP between the clients and the bank that drops connections: before forwarding (nothing
    reached the bank) or after the bank answered (the answer is lost). Loopback only, bounded."""

    def __init__(self, target_port: int, rng: random.Random) -> None:
        self.target = target_port
        self.rng = rng
        self.drop_before = 0.0
        self.drop_after = 0.0
        self.dropped = {"before": 0, "after": 0}
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.5)
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            mode = "before" if self.rng.random() < self.drop_before else (
                "after" if self.rng.random() < self.drop_after else "")
            threading.Thread(target=self._serve, args=(client, mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        if mode == "before":
            self.dropped["before"] += 1
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            client.close()
            return
        client.settimeout(10)
        upstream.settimeout(10)

        def pump(src: socket.socket, dst: socket.socket, lose: bool) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if lose:                       # the bank has answered: drop the answer and the link
                        self.dropped["after"] += 1
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pump, args=(client, upstream, False), daemon=True)
        t.start()
        pump(upstream, client, mode == "after")
        t.join(10)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.close()


class KillableCard:
    """The buyer card as a child process behind a vpcd-style socket; ``kill()`` is SIGKILL."""

    def __init__(self, image: Path) -> None:
        self.image = image
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(15)
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: VpcdServerConnection | None = None
        self.kills = 0

    def start(self) -> PurseSession:
        self.proc = subprocess.Popen([sys.executable, "-m", "semper.card_applet_sim", str(self.image), "--port",
                                      str(self.server.getsockname()[1]), "--no-sync"], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        sock, _ = self.server.accept()
        self.conn = VpcdServerConnection(sock)
        self.conn.power_on()
        return PurseSession(self.conn)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            self.proc.wait(10)
        if self.conn is not None:
            self.conn.close()

    def restart(self) -> PurseSession:
        self.kill()
        self.stop()
        return self.start()


@pytest.fixture(scope="module")
def fault_world(tmp_path_factory: pytest.TempPathFactory, scheme: Any) -> Any:
    w = make_world(tmp_path_factory.mktemp("faultworld"), scheme)
    yield w
    w.runner.stop()


def test_money_is_conserved_under_dropped_connections_and_card_kills(fault_world: World, tmp_path: Path) -> None:
    w = fault_world
    rng = random.Random(SEED)
    proxy = DroppingProxy(w.runner.port, rng)
    url = f"https://127.0.0.1:{proxy.port}"

    def client(who: str) -> BankClient:
        return BankClient(url, w.home.tls_root, w.signers[who], timeout=5, retries=4)

    def ctx(who: str, **kw: Any) -> PartyContext:
        return PartyContext(bank=client(who), signer=w.signers[who], account=w.accounts[who], currency=EUR, **kw)

    for who in ("buyer", "buyer2"):
        w.bank.cash_in(w.accounts[who], 1_000_000)
    buyer_img, psam_img = w.cards(tmp_path / "cards")
    card = KillableCard(buyer_img)
    purse = card.start()
    psam_conn = open_card(psam_img, sync=False)
    psam = PsamSession(psam_conn)
    wallet = Wallet(tmp_path / "wallet.json", TokenWalletKey(RsaTokenKeys(w.signers["buyer"].module, "buyer",
                                                                           PARTY_PIN)))
    buyer_ctx = ctx("buyer", purse=purse, wallet=wallet, enter_pin=card_pin)
    buyer = PaymentManager(buyer_ctx, only=["card-purse", "ecash"])
    shop = PaymentManager(ctx("seller", psam=psam, purse_root=w.scheme.root_cert), only=["card-purse", "setpay"])
    shop2 = PaymentManager(ctx("seller2"), only=["cheque", "ecash"])
    buyer2 = PaymentManager(ctx("buyer2"), only=["cheque", "setpay"])
    purse_mod, ecash_mod = buyer.module("card-purse"), buyer.module("ecash")
    assert isinstance(purse_mod, PurseModule) and isinstance(ecash_mod, EcashModule)
    seller_purse = shop.module("card-purse")
    assert isinstance(seller_purse, PurseModule)
    counts: dict[str, int] = {}
    failures: dict[str, int] = {}
    proxy.drop_before, proxy.drop_after = 0.08, 0.08

    def set_purse(session: PurseSession) -> None:
        buyer_ctx.purse = session

    def recover_purchase(terms: Terms) -> None:
        """After a kill mid-purchase: a debit that committed on the card goes to the PSAM from the card's log."""
        rec = shop.store.get(terms.payment_id, "payee")
        if rec is None or rec.status.value != "pending":
            return
        flow = shop.sessions.get(terms.payment_id)
        if flow is None:
            return
        for entry in buyer_ctx.purse.log() if buyer_ctx.purse else []:
            if entry.kind != "debit":
                continue
            req_found = recover_debit(buyer_ctx.purse, _pending_request(psam, entry))
            if req_found is None:
                continue
            try:
                psam.select()
                psam.complete_debit(buyer_ctx.purse.certificate(), req_found)
                counts["recovered_debits"] = counts.get("recovered_debits", 0) + 1
            except hw.ReplayError:
                pass
            return

    for i in range(OPS):
        op = rng.choice(["load", "purchase", "purchase", "purchase", "clear", "cheque", "setpay", "withdraw",
                         "spend"])
        kill_timer = None
        if op in ("load", "purchase") and rng.random() < 0.15:
            kill_timer = threading.Timer(rng.uniform(0, 0.01), card.kill)
            kill_timer.start()
        try:
            if op == "load":
                purse_mod.load(rng.randint(100, 5_000))
            elif op == "purchase":
                terms = Terms.new(rng.randint(1, 400), EUR, w.accounts["seller"], f"order {i}".encode())
                shop.expect(terms)
                try:
                    pay(buyer, terms, shop.offer(), LocalPayee(shop))
                except PaymentError:
                    if kill_timer is not None:
                        kill_timer.join()
                        set_purse(card.restart())
                    recover_purchase(terms)
                    raise
            elif op == "clear":
                seller_purse.clear()
            elif op == "cheque":
                terms = Terms.new(rng.randint(1, 3_000), EUR, w.accounts["seller2"], f"cheque {i}".encode())
                shop2.expect(terms)
                pay(buyer2, terms, [a for a in shop2.offer() if a.module == "cheque"], LocalPayee(shop2))
            elif op == "setpay":
                terms = Terms.new(rng.randint(1, 3_000), EUR, w.accounts["seller"], f"set {i}".encode())
                shop.expect(terms)
                pay(buyer2, terms, [a for a in shop.offer() if a.module == "setpay"], LocalPayee(shop))
                if rng.random() < 0.3:
                    shop.refund(terms.payment_id, rng.randint(1, terms.amount))
            elif op == "withdraw":
                ecash_mod.withdraw(rng.randint(1, 2_000))
            elif op == "spend" and wallet.balance(EUR) > 0:
                amount = min(wallet.balance(EUR), rng.randint(1, 500))
                terms = Terms.new(amount, EUR, w.accounts["seller2"], f"coins {i}".encode())
                shop2.expect(terms)
                try:
                    pay(buyer, terms, [a for a in shop2.offer() if a.module == "ecash"], LocalPayee(shop2))
                except PaymentError:
                    proxy.drop_before, proxy.drop_after = 0.0, 0.0      # the payer reclaims on a good link
                    ecash_mod.reclaim(terms.payment_id)
                    proxy.drop_before, proxy.drop_after = 0.08, 0.08
                    raise
            counts[op] = counts.get(op, 0) + 1
        except (PaymentError, hw.HardwareError) as e:
            failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
            if isinstance(e, hw.HardwareError) or card.proc is None or card.proc.poll() is not None:
                set_purse(card.restart())
        finally:
            if kill_timer is not None:
                kill_timer.cancel()
                kill_timer.join()
            if card.proc is not None and card.proc.poll() is not None:
                set_purse(card.restart())
        if i % 50 == 49:
            report = audit(w.bank.db, w.bank.scheme_root)
            assert report.violations == [], (i, report.violations)

    # settle with a healthy network: finish withdrawals, clear the PSAM, then account for every cent
    proxy.drop_before = proxy.drop_after = 0.0
    if wallet.pending:
        ecash_mod.resume()
    for pid in list(wallet.in_flight):
        ecash_mod.reclaim(pid)
    seller_purse.clear()
    seller_purse.clear()
    info = buyer_ctx.purse.info()
    card_id = info.card_id
    with w.bank.db.transaction() as tx:
        pending = tx.all("SELECT counter, amount FROM loads WHERE card = ? AND state = 'pending'", (card_id,))
    unapplied = sum(a for c, a in pending if c > info.load_counter)
    psam.select()
    assert psam.info().batch_count == 0
    assert w.bank.shadow(card_id) == info.balance + unapplied, (w.bank.shadow(card_id), info.balance, unapplied)
    report = audit(w.bank.db, w.bank.scheme_root)
    assert report.violations == [], report.violations
    r = subprocess.run([sys.executable, "-m", "semper.client.cli", "audit", "--bank-dir", str(w.home.folder), "--json"],
                       capture_output=True, text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["clean"] is True
    print(json.dumps({"ops": OPS, "done": counts, "failed": failures, "card_kills": card.kills,
                      "dropped": proxy.dropped, "totals": report.totals}, default=str))
    assert card.kills > 0 and proxy.dropped["before"] + proxy.dropped["after"] > 0
    assert sum(counts.values()) > OPS // 2
    card.stop()
    psam_conn.close()
    proxy.close()


def _pending_request(psam: PsamSession, entry: Any) -> DebitRecord:
    """The request a logged debit answered (its fields equal the proof's)."""
    p = DebitRecord.decode(entry.signed.record, b"DPF1")
    return DebitRecord(DEBIT_REQUEST, p.psam_id, p.psam_sequence, p.card_number, p.debit_counter, p.amount,
                       p.currency, p.challenge)


def test_a_bank_the_pinned_root_does_not_vouch_for_is_refused_at_once(fault_world: World, tmp_path: Path) -> None:
    """A certificate mismatch is not a lost connection: no retry, no 'outcome unknown' (issue 13, item 7).
    Before: the client retried it three times, then said the outcome was unknown."""
    from aiohttp import web

    from semper.client.payment.errors import UntrustedService
    from semper.client.servers.bank_home import make_tls_identity
    from semper.client.support.channels import JsonClient, server_context
    from semper.client.support.http_service import ServiceRunner
    w = fault_world
    bank = BankClient(w.runner.url, w.home.tls_root, w.signers["buyer"], timeout=5, retries=3)
    bank.info()                                                       # the real bank, pinned, answered once
    chain, key = make_tls_identity(tmp_path / "impostor", ("127.0.0.1",))
    with ServiceRunner(web.Application(), ssl_context=server_context(chain, key)) as impostor:
        bank.http = JsonClient(impostor.url, w.home.tls_root, timeout=5, name="the bank")
        tries: list[str] = []
        request = bank.http.request
        bank.http.request = lambda *a, **k: (tries.append(a[1]), request(*a, **k))[1]
        with pytest.raises(UntrustedService, match="does not vouch"):
            bank.call("accounts/balance", {"account": w.accounts["buyer"]})
        assert len(tries) == 1
