"""``semper bench exchange``: messages, round trips and latency of each exchange protocol on loopback.

Everything is real and throwaway, in a temporary folder: SoftHSM2 tokens for the CA, the seller,
the buyer and the third party; a semper CA that certifies them; the third party on HTTPS with its
escrow key in its token; a personalised buyer card and seller PSAM in process; both parties on
HTTPS. The card payments go the way a shop's and a buyer's do: each party's payment manager with the
card-purse module, wrapped as the exchange layer's payment items (``ItemPayer``, ``ItemPayee``), and
checked with the verifiers the third party uses. For each protocol it runs fault-free exchanges and
*resolved* ones (the seller stops before its last message, the buyer goes to the third party after
``patience`` seconds; fault-free runs wait up to 10 s per step, which they never need) and reports:

* ``messages`` (party to party), ``ttp_requests``, ``https_requests`` (their sum: each is one
  HTTPS request on a kept-alive connection), ``round_trips`` (party-to-party flights / 2, rounded
  up, plus one per third-party request);
* ``signatures``: token signatures made by the parties and the third party (the cryptographic floor
  of a run is these plus the checks);
* latency (median, p95) of whole runs; for resolved runs also ``resolution_ms`` = the run minus
  the patience the buyer spent waiting (what going to the third party costs).
"""
from __future__ import annotations

import asyncio
import math
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import card_pair, machine

PIN = b"bench-pin-1234"


def _ms(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"n": len(s), "median_ms": round(statistics.median(s) * 1000, 2),
            "p95_ms": round(s[min(len(s) - 1, int(len(s) * 0.95))] * 1000, 2), "min_ms": round(s[0] * 1000, 2)}


def bench_exchange(runs: int = 20, resolved_runs: int = 5, patience: float = 0.05) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="semper-bench-x-") as d, card_pair() as cp:
        return asyncio.run(_bench(Path(d), cp, runs, resolved_runs, patience))


async def _bench(folder: Path, cp: Any, runs: int, resolved_runs: int, patience: float) -> dict[str, Any]:
    from semper.client.exchange.errors import PartyStopped
    from semper.client.exchange.identity import Identity, TtpInfo
    from semper.client.exchange.party import Party, ResponsePlan
    from semper.client.exchange.run import Outbox
    from semper.client.payment.card_purse import load
    from semper.client.payment.item import ItemPayee, ItemPayer, ItemPayments, item_verifiers
    from semper.client.payment.manager import PaymentManager as Payments
    from semper.client.payment.module import PartyContext
    from semper.client.servers.ca import CertificationAuthority
    from semper.client.servers.ca_home import issue_tls_identity
    from semper.client.servers.ttp_home import TtpHome
    from semper.client.support import pki
    from semper.client.support.channels import server_context
    from semper.client.support.db import Database
    from semper.client.support.http_service import ServiceRunner
    from semper.client.support.trust import TrustStore
    from semper.client.transfer.binding import cert_id
    from semper.client.transfer.information import (
        InformationManager,
        InformationOffer,
        describe,
    )
    from semper.client.transfer.items import Description, PackageDescription
    from semper.client.transfer.managers import Managers, PackageOffer
    from semper.client.transfer.payment import PaymentOffer
    from semper.client.transfer.statements import (
        CredentialManager,
        CredentialOffer,
        StatementManager,
        StatementOffer,
    )
    from semper.hardware import cards
    from semper.hardware.iso7816 import AID
    from semper.hardware.psam import PsamSession
    from semper.hardware.purse import PurseSession
    from semper.hsm.signer import Pkcs11Signer
    from semper.hsm.softhsm import SoftHsmStore, provision

    store = SoftHsmStore.in_folder(folder / "softhsm")
    for label in ("b-ca", "b-seller", "b-buyer", "b-ttp"):
        provision(store, label, PIN, secrets.token_hex(8).encode())
    conf = str(store.conf)
    ca_signer = Pkcs11Signer.open("b-ca", softhsm_conf=conf)
    ca_signer.verify_pin(PIN)
    ca = CertificationAuthority(Database(f"sqlite:///{folder / 'ca.db'}"), ca_signer)
    ca.initialise("bench CA", token_label="b-ca", softhsm_conf=conf)
    trust = TrustStore([ca.certificate()])
    ids = {}
    for label, role in (("b-seller", "seller"), ("b-buyer", "person")):
        s = Pkcs11Signer.open(label, softhsm_conf=conf)
        s.verify_pin(PIN)
        s.store_certificate(ca.issue_direct(pki.Subject(label, role, f"{label}@bench.example"),
                                            s.public_point()).certificate)
        ids[label] = Identity(s)
    home = TtpHome.create(folder / "ttp", ca=ca, token_label="b-ttp", pin=PIN, softhsm_conf=conf,
                          purse_root=cp.scheme.root_cert)
    opened = home.open(PIN)
    runner = ServiceRunner(opened.app(), "127.0.0.1", 0, server_context(*opened.tls)).start()
    tls = issue_tls_identity(ca, ("127.0.0.1",), folder / "tls")
    root_pem = pki.pem(ca.certificate())
    info = TtpInfo.load(runner.url, home.certificate(), home.escrow_file.read_bytes(), trust)
    assert info.escrow is not None
    escrows = {cert_id(info.certificate): info.escrow.key_id}
    buyer_card = cards.open_connection(AID.PURSE, image=cp.buyer, sync=False)
    psam_card = cards.open_connection(AID.PSAM, image=cp.psam, sync=False)
    purse, psam = PurseSession(buyer_card), PsamSession(psam_card)
    load(purse, cp.scheme, 10_000_000, b"1234")
    class StopBefore(Outbox):
        """The seller's outbox: sends everything, or stops before one message kind (the item, so the buyer
        resolves at the third party). chaos/party_faults.py has the general one, but chaos imports bench
        (its PostgreSQL cluster), so bench does not import chaos (tests/test_layout.py: no cycle)."""

        stop_before: str | None = None

        async def release(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
            if kind == self.stop_before:
                raise PartyStopped(f"the seller stops before sending {kind}")
            return body

    seller_stops = StopBefore()                  # stops before its item when a resolution is measured
    verifiers = item_verifiers(purse_root=cp.scheme.root_cert)
    buyer_payments = Payments(PartyContext(purse=purse), only=["card-purse"])
    seller_payments = Payments(PartyContext(psam=psam, purse_root=cp.scheme.root_cert), only=["card-purse"])
    payee = ItemPayee(seller_payments, "card-purse", verifiers["card-purse"], account="bench-seller",
                      payee_name="b-seller")
    seller = Party("seller", ids["b-seller"], trust, Managers(
        StatementManager(trust), CredentialManager(trust), InformationManager(escrows),
        ItemPayments(verifiers, {"card-purse": payee})), folder / "seller.archive",
        tls=tls, root_pem=root_pem, ttp=info, step_timeout=10.0, outbox=seller_stops)
    buyer = Party("buyer", ids["b-buyer"], trust, Managers(
        StatementManager(trust), CredentialManager(trust), InformationManager(escrows), ItemPayments(verifiers)),
        folder / "buyer.archive", tls=tls, root_pem=root_pem, ttp=info, step_timeout=10.0)
    await seller.start()
    await buyer.start()
    report = b"bench report " * 64
    price = 100

    def deal(protocol: str) -> tuple[Any, Any, ResponsePlan, bool]:
        pay = Description("payment", {"module": "card-purse", "amount": price, "currency": 978})
        payer = PaymentOffer(ItemPayer(buyer_payments, "card-purse", verifiers["card-purse"]), price, 978)
        offer: Any
        if protocol == "gen-ver":
            receipt = {"type": "receipt", "amount": price}
            offer = PackageOffer((InformationOffer(report), StatementOffer(ids["b-seller"].sign, receipt)))
            expect = PackageDescription((describe(report), Description("statement", {"statement_type": "receipt"})))
            return offer, pay, ResponsePlan(expect, payer), True
        if protocol == "rev-rev":
            offer = CredentialOffer(ids["b-seller"].sign, {"voucher": "V"}, revocable=True)
            want = Description("statement", {"statement_type": "signature", "revocable": True})
            mine = StatementOffer(ids["b-buyer"].sign, {"type": "signature"}, revocable=True)
            return offer, want, ResponsePlan(Description("credential", {"attributes": {"voucher": "V"},
                                                                        "revocable": True}), mine), True
        return InformationOffer(report), pay, ResponsePlan(describe(report), payer), False

    def signatures() -> int:
        return ids["b-seller"].signatures + ids["b-buyer"].signatures

    async def one(protocol: str, resolved: bool) -> dict[str, Any]:
        offer, want, plan, fair = deal(protocol)
        buyer.plans.append(plan)
        seller_stops.stop_before = "item" if resolved else None
        buyer.waits = {"item": patience} if resolved else {}
        ttp_before = opened.ttp.stats()["total_requests"]
        sig_before, ttp_decisions = signatures(), opened.ttp.counters.decisions + opened.ttp.counters.refusals
        t0 = time.perf_counter()
        o = await seller.originate(buyer.url, offer, want, fair=fair)
        r = await buyer.wait_outcome(o.session, 30)
        elapsed = time.perf_counter() - t0
        want_status = ("resolved" if protocol == "gen-ver" else "revoked") if resolved else "completed"
        if r.status != want_status:
            raise RuntimeError(f"bench run ended {r.status}, not {want_status}: {r.reason}")
        t_sigs = opened.ttp.counters.decisions + opened.ttp.counters.refusals - ttp_decisions
        return {"elapsed": elapsed, "messages": o.messages_sent + r.messages_sent,
                "ttp_requests": opened.ttp.stats()["total_requests"] - ttp_before,
                "signatures": signatures() - sig_before + t_sigs + (1 if resolved and protocol == "gen-ver" else 0)}

    out: dict[str, Any] = {"machine": machine(), "patience_s": patience, "protocols": {}}
    try:
        for protocol in ("gen-ver", "rev-rev", "plain"):
            await one(protocol, False)                                   # warm-up: TLS sessions, caches
            entry: dict[str, Any] = {}
            for resolved, n in ((False, runs), (True, resolved_runs)):
                if resolved and protocol == "plain":
                    entry["resolved"] = None                             # no third party in plain transfers
                    continue
                samples = [await one(protocol, resolved) for _ in range(n)]
                first = samples[0]
                lat = _ms([s["elapsed"] for s in samples])
                flights = math.ceil(first["messages"] / 2)
                case = {"messages": first["messages"], "ttp_requests": first["ttp_requests"],
                        "https_requests": first["messages"] + first["ttp_requests"],
                        "round_trips": flights + first["ttp_requests"], "signatures": first["signatures"],
                        "latency": lat}
                if resolved:
                    case["resolution_ms"] = round(lat["median_ms"] - patience * 1000, 2)
                entry["resolved" if resolved else "fault_free"] = case
            out["protocols"][protocol] = entry
    finally:
        await seller.stop()
        await buyer.stop()
        seller.close()
        buyer.close()
        runner.stop()
        opened.close()
        buyer_card.close()
        psam_card.close()
    return out
