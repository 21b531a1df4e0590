"""``semper bench throughput``: purchases per second at one seller, N buyers buying at once.

The seller runs as in production: the real ``semper serve shop`` process, its signing key in its
SoftHSM2 token, its PSAM a simulated card behind pcscd (served with durable writes, as a card's
EEPROM), its evidence archive on disk. The buyers are real clients (the same ``mail_order``
workflow as ``semper buy``: offer verified with its chain, the exact confirmation text rendered and
hashed, the order signed on the buyer's card, the purse debit between card and PSAM, the seller's
confirmation and delivery note verified, everything archived on both sides); each buyer has its
own card (simulated in process: a buyer's card is not the seller's cost), account and archive. They
run as threads in a few worker processes, so that the buyers' CPU is spread the way the machine
allows. With ``--lean-buyers`` they are lean load generators instead (bench/lean_buyers.py): the same
requests to the seller on their own cards, orders signed before the window, the purse debit live, no
interpreter, TINGUIN or archive, every purchase's note checked after the window.

Timeline of one run: every buyer buys once (connections and caches warm), then everybody buys
for ``warmup`` seconds, then the timed window (purchases that *finish* in it count; the seller's,
pcscd's and the PSAM's CPU seconds are read from /proc at its edges), then, if asked, a profiled
window: the seller (``--profile`` signals) and the workers run yappi over every thread, and the
report says where each side's CPU goes, by area. Nothing from the profiled window is in the
timed figures.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import machine

ITEM_SKU = "tea-bag"
ITEM_PRICE = 5                       # cents: a card holds thousands of purchases, so nobody reloads mid-run
LOAD = 40_000                        # loaded on each buyer's purse before the run
TARGET = 300.0                       # purchases per second (docs/performance.md, issue 8)
ADDRESS = {"name": "Bob Buyer", "street": "1 Main St", "postcode": "12345", "city": "Teatown", "country": "DE"}


@dataclass(frozen=True)
class BuyerSpec:
    name: str
    card: str                        # the card image (opened in process by the worker)
    archive: str
    account: str


def bench_catalogue() -> Any:
    from semper.client.commerce.catalogue import Catalogue, CatalogueItem, demo_catalogue
    items = list(demo_catalogue().items.values())
    return Catalogue.of([*items, CatalogueItem(ITEM_SKU, "One tea bag (the benchmark's item)", "physical", ITEM_PRICE,
                                               max_quantity=1000)])


# ---- the crowd -------------------------------------------------------------------------------------
def make_buyers(world: Any, count: int, say: Callable[[str], None]) -> list[BuyerSpec]:
    """``count`` buyers, each with a personalised card whose signature key the CA certified, an
    account, the card linked to it and its purse loaded through the bank (the real load protocol)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from semper.client.commerce.setup import BuyerConfig, open_buyer
    from semper.client.demo_world import CARD_PIN, CARD_PUK, EUR
    from semper.client.payment.modules.purse import PurseModule
    from semper.client.support import pki
    from semper.client.support.personalisation import CardProfile, personalise_purse_card
    from semper.hardware.piv import PivSession, Slot
    from semper.hardware.purse import PurseSession
    from semper.hardware.simulator import open_card

    from .policy_ui import PolicyUI
    issuer = world.bank.keys.signer.public_point()
    specs = []
    folder = world.folder / "crowd"
    folder.mkdir(exist_ok=True)
    for i in range(count):
        name = f"Buyer {i:03d}"
        image = folder / f"buyer-{i:03d}.card"
        personalise_purse_card(image, world.scheme, CardProfile(CARD_PIN, CARD_PUK, max_balance=LOAD), sync=False,
                               issuer_point=issuer)
        with open_card(image, sync=False) as card:
            piv = PivSession(card)
            key = x509.load_der_x509_certificate(piv.certificate(Slot.SIGNATURE)).public_key()
            point = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            der = world.ca.issue_direct(pki.Subject(name, "person", f"buyer{i:03d}@buyers.example"), point).certificate
            piv.verify_pin(CARD_PIN)
            piv.put_certificate(Slot.SIGNATURE, der)
            cert = x509.load_der_x509_certificate(der)
            purse_cert = PurseSession(card).certificate()
            account = world.bank.open_account(name, EUR, cert)
            world.bank.link_card(purse_cert, account)
            world.bank.cash_in(account, LOAD)
            archive = folder / f"buyer-{i:03d}.sqlite3"
            cfg = BuyerConfig(shop_url=world.services.shop or "https://127.0.0.1:1", ca_root_pem=world.root_pem,
                              archive=archive, bank_url=world.services.bank, bank_tls_root=world.bank_tls_root,
                              account=account)
            session = open_buyer(cfg, PolicyUI(pin=CARD_PIN, payment="card-purse"), card)
            try:
                session.buyer.payments.module_as("card-purse", PurseModule).load(LOAD)
            finally:
                session.close()
        specs.append(BuyerSpec(name, str(image), str(archive), account))
        if (i + 1) % 8 == 0 or i + 1 == count:
            say(f"buyers ready: {i + 1}/{count}")
    return specs


# ---- a worker process: some buyers, one thread each ------------------------------------------------
def _worker(shop_url: str, root_pem: str, specs: list[BuyerSpec], offsets: dict[str, float], profile: bool,
            out: Any, go: Any, base: Any, keep_offers: bool = True) -> None:
    from semper.client.commerce.setup import BuyerConfig, open_buyer
    from semper.client.commerce.workflows import mail_order
    from semper.client.demo_world import CARD_PIN
    from semper.client.tinguin.model import OutcomeStatus
    from semper.hardware.simulator import open_card

    from .policy_ui import PolicyUI
    samples: list[tuple[float, float, bool, str]] = []
    lock = threading.Lock()
    errors: list[str] = []

    def buyer(spec: BuyerSpec, ready: threading.Barrier) -> None:
        try:
            card = open_card(Path(spec.card), sync=False)
            ui = PolicyUI(pin=CARD_PIN, payment="card-purse")
            session = open_buyer(BuyerConfig(shop_url=shop_url, ca_root_pem=root_pem, archive=Path(spec.archive)),
                                 ui, card)
        except Exception as e:           # reported to the parent, which fails the run with it
            errors.append(f"{spec.name}: {type(e).__name__}: {e}")
            ready.abort()
            return
        b = session.buyer
        b.keep_offers = keep_offers         # False: the standing offer asked for at every purchase
        try:
            first = mail_order(b, [(ITEM_SKU, 1)], form=ADDRESS)          # connections and caches warm
            if first.status is not OutcomeStatus.SATISFIED:
                errors.append(f"{spec.name}: the first purchase did not complete: {first.summary}")
                ready.abort()
                return
            ready.wait(60)
            def one() -> tuple[bool, str, Any]:
                r = mail_order(b, [(ITEM_SKU, 1)], form=ADDRESS)
                return r.status is OutcomeStatus.SATISFIED, r.summary, None

            def keep(t0: float, took: float, ok: bool, why: str, _made: Any) -> None:
                with lock:
                    samples.append((t0, took, ok, "" if ok else why[:300]))
                for bucket in (ui.offers, ui.confirmations, ui.pins, ui.steps, ui.outcomes):
                    bucket.clear()
            buy_until_stopped(plan, planned, one, keep)
        except threading.BrokenBarrierError:
            pass
        finally:
            session.close()
            card.close()

    plan: dict[str, float] = {}
    planned = threading.Event()
    window = drive_window(buyer, specs, plan, planned, errors, out, go, base, offsets, profile, ready_s=120)
    if window is not None:
        out.put({"samples": samples, "cpu_s": window[0], "profile": window[1], "errors": errors})


def buy_until_stopped(plan: dict[str, float], planned: threading.Event, one: Callable[[], tuple[bool, str, Any]],
                      keep: Callable[[float, float, bool, str, Any], None]) -> None:
    """A buyer's part of the run's timeline: the plan awaited, the warm-up's start, then purchases (``one()``:
    whether it succeeded, why not, what it made) until the stop, each kept with its start and duration. A
    purchase that raises is a failed one (a finding, not a crash of the benchmark)."""
    if not planned.wait(120):
        return
    while time.time() < plan["warmup_at"]:
        time.sleep(0.005)
    while time.time() < plan["stop_at"]:
        t0, p0 = time.time(), time.perf_counter()
        try:
            ok, why, made = one()
        except Exception as e:
            ok, why, made = False, f"{type(e).__name__}: {e}", None
        keep(t0, time.perf_counter() - p0, ok, why, made)


def drive_window(buyer: Callable[..., None], specs: list[Any], plan: dict[str, float], planned: threading.Event,
                 errors: list[str], out: Any, go: Any, base: Any, offsets: dict[str, float], profile: bool,
                 ready_s: float) -> tuple[float, Any] | None:
    """A worker process's side of the run's timeline, for either kind of buyer: one thread per buyer
    (``buyer(spec, ready)``), ready reported to the parent, the plan set when it says go, the process's CPU
    read at the timed window's edges, the profiled window if asked, the buyers joined. (The window's CPU
    seconds, the profile's summary), or None when the run ended before its window (the parent was told)."""
    from .profiling import CpuProfile
    ready = threading.Barrier(len(specs) + 1)
    threads = [threading.Thread(target=buyer, args=(s, ready), daemon=True) for s in specs]
    for t in threads:
        t.start()
    try:
        ready.wait(ready_s)
    except threading.BrokenBarrierError:
        out.put({"error": "; ".join(errors) or "a buyer did not get ready"})
        return None
    out.put({"ready": True})
    if not go.wait(120):
        return None
    plan.update({k: base.value + v for k, v in offsets.items()})
    planned.set()
    prof = CpuProfile() if profile else None

    def at(when: float) -> None:
        time.sleep(max(0.0, when - time.time()))
    at(plan["window_at"])
    start = time.process_time()
    at(plan["window_end"])
    cpu_s = time.process_time() - start
    summary = None
    if prof is not None:
        at(plan["profile_at"])
        prof.start()
        at(plan["profile_end"])
        summary = prof.stop()
    for t in threads:
        t.join(plan["stop_at"] - time.time() + 60)
    return cpu_s, summary


# ---- the parent: set up, time, read CPU, report --------------------------------------------------------
#: seconds of one process's time to sign an order before the window (lean buyers), for the wait on their set-up
PRESIGN_S = 0.02


def lean_supply(buyers: int, seconds: float) -> int:
    """Orders each lean buyer signs before the window: enough for ``lean_buyers.SUPPLY_RATE`` purchases per
    second over the run's ``seconds`` (warm-up, window, profiled window) shared by ``buyers``."""
    from .lean_buyers import SUPPLY_RATE
    return math.ceil(SUPPLY_RATE * seconds / buyers)


def _commit_counter(url: str) -> Callable[[], int]:
    """Transactions the shop's PostgreSQL database committed so far (``pg_stat_database``; its counters
    lag by up to the stats interval, so the window's edges are read after a short settle)."""
    def read() -> int:
        import psycopg
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0
    return read


def _shop_counter(url: str, root_pem: str) -> Callable[[], dict[str, dict[str, int]]]:
    """The shop's own counts (``GET /stats``: the process that answers; with one worker, all of them), on
    either back end: ``db``, its database transactions and statements; ``card_steps``, where its card
    payment steps ran (``shop_http.LoopSteps``: on the event loop, in the pool, and how often slow steps
    sent them there), which moves the seller's CPU per purchase by about a sixth (docs/performance.md);
    ``shop``, its counters (offers, orders, payments, deliveries, signatures made with its token)."""
    def read() -> dict[str, dict[str, int]]:
        from semper.client.support.channels import JsonClient
        got = JsonClient(url, root_pem, name="the shop", timeout=10).get("/stats")
        out = {part: {k: int(v) for k, v in (got.get(part) or {}).items()}
               for part in ("db", "card_steps", "archive")}
        out["shop"] = {k: int(got[k]) for k in SHOP_COUNTERS if isinstance(got.get(k), int)}
        return out
    return read


#: the shop's counters (``Shop.counters``) the report gives per purchase: token signatures, offers signed for one
#: deal (one per POST /deals), standing offers asked for (POST /offer) and signed, orders, payments, deliveries
SHOP_COUNTERS = ("offers", "orders", "payments", "deliveries", "signatures", "standing_asked", "standing_signed",
                 "orders_on_standing")


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and all its descendants: its own, its ended children's (counted in it once it
    waited for them: a worker or a database backend that ended) and every live descendant's."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(d.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")
        todo.extend(parents.get(p, []))
    return total


def _pcscd_pid() -> int | None:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "pcscd":
                    return int(d.name)
            except OSError:
                continue
    return None


def _percentiles(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))] * 1000, 2)
    return {"n": len(s), "p50_ms": q(0.50), "p90_ms": q(0.90), "p95_ms": q(0.95), "p99_ms": q(0.99),
            "max_ms": round(s[-1] * 1000, 2), "mean_ms": round(statistics.fmean(s) * 1000, 2)}


def bench_throughput(buyers: int = 16, seconds: float = 10.0, processes: int = 2, warmup: float = 2.0,
                     profile_seconds: float = 4.0, say: Callable[[str], None] | None = None, workers: int = 1,
                     db: str = "sqlite", phases: bool = False, keep_offers: bool = True, lean: bool = False,
                     tamper: tuple[str, ...] = (), lean_orders: int | None = None, psams: int = 1) -> dict[str, Any]:
    """``workers``: ``semper serve shop --workers N`` (N > 1: the PSAM in a device process of its own; no
    profile, the profiling wrapper runs one process). ``db``: the shop's storage, SQLite in its folder or a
    PostgreSQL cluster of the run's own with durable commits (the other parties stay on SQLite, so the
    database server's CPU is all the seller's). ``phases``: the window after the timed one times the
    seller's phases (bench/phases.py: microseconds per purchase, at nearly the unprofiled speed) instead
    of profiling seller and buyers with yappi. ``keep_offers``: the buyers keep the shop's standing offer
    while it is valid (the client's default); False, they ask for it at every purchase. ``lean``: the buyers
    are lean (bench/lean_buyers.py: the real protocol on their own cards with pre-signed orders, no
    interpreter, TINGUIN or archive; every purchase checked after the window), so that the seller is driven
    closer to its limit and its figure is less the buyers' interference. ``tamper`` (tests only, lean): the
    first purchases finishing in the window are checked with what the seller sent changed, one way each
    (``lean_buyers.tampered``): the run must report them failed. ``lean_orders``: orders each lean buyer signs
    before the window (default :func:`lean_supply`; the tests' small runs sign fewer)."""
    from semper.client.demo_world import World
    from semper.hardware.pcscd import VirtualCards
    tell = say or (lambda _line: None)
    if buyers < 1 or processes < 1 or seconds <= 0 or workers < 1:
        raise ValueError("buyers, processes, workers and seconds must be positive")
    if not (warmup >= 0 and profile_seconds >= 0):
        raise ValueError("--warmup and --profile-seconds are seconds, 0 or more")
    if db not in ("sqlite", "postgresql"):
        raise ValueError(f"--db is sqlite or postgresql, not {db!r}")
    if psams not in (1, 2):
        raise ValueError(f"--psams is 1 or 2 (pcscd's virtual reader driver has two readers), not {psams}")
    if tamper and not lean:
        raise ValueError("tamper is a test of the lean buyers' checks (lean=True)")
    if lean and not keep_offers:
        raise ValueError("--lean-buyers keep the shop's standing offer while it is valid: it cannot be combined "
                         "with --offer-every-purchase")
    if phases and (profile_seconds <= 0 or workers > 1):
        raise ValueError("--phases times the seller in the window after the timed one, in one shop process: it "
                         "needs that window (no --no-profile) and --workers 1")
    processes = min(processes, buyers)
    if lean and warmup + seconds + profile_seconds > 20:
        from semper.card_applet_sim.applets.psam import MAX_BATCH
        tell(f"warning: the PSAM's batch holds {MAX_BATCH} proofs and the bench never closes it; lean buyers fill it "
             "in about 20 s of buying, and a purchase past it fails the run (docs/performance.md)")
    if workers > 1:
        profile_seconds = 0.0
    from semper.hardware.simulator import card_keys_in
    cluster = None
    with tempfile.TemporaryDirectory(prefix="semper-bench-tp-") as d, card_keys_in(Path(d)):
        folder = Path(d)
        dbs: dict[str, str] = {}
        if db == "postgresql":
            from .postgres import PostgresCluster, missing_reason
            if missing_reason():
                raise ValueError(f"--db postgresql: {missing_reason()}")
            tell("starting a PostgreSQL cluster of the run's own for the shop (durable commits)")
            cluster = PostgresCluster.start(durable=True)
            dbs["shop"] = cluster.new_database("bench_shop")
        try:
            tell("making the market (CA, bank, third party, seller token, PSAM)")
            world = World.create(folder, dbs=dbs)
            try:
                psam_cards = [world.psam_card] + [world.add_psam(f"psam{i + 1}") for i in range(1, psams)]
                with VirtualCards(psam_cards, sync=True) as vc:
                    s = world.start_in_process(shop=False)
                    profile_file = folder / "seller-profile.json"
                    tell(f"starting 'semper serve shop --workers {workers} --db {db}' with its PSAM"
                         f"{'s' if psams > 1 else ''} in {', '.join(vc.readers)}")
                    launcher = ("-m", "semper.bench.profiled_shop", "--profile", str(profile_file),
                                *(("--phases",) if phases else ())) \
                        if profile_seconds > 0 else ("-m", "semper.client.cli", "serve", "shop")
                    shop_proc = world.start_shop_process(psam_reader=vc.readers[0], catalogue=bench_catalogue(),
                                                         launcher=launcher, extra=("--workers", str(workers)),
                                                         more_psams=tuple(vc.readers[1:]))
                    tell(f"personalising {buyers} buyer cards, certifying their keys, loading their purses")
                    specs = make_buyers(world, buyers, tell)
                    seller = {"seller (semper serve shop)": shop_proc.pid}       # its tree: workers, PSAM devices
                    if cluster is not None and cluster.pid is not None:
                        seller["database server (PostgreSQL)"] = cluster.pid
                    commits = _commit_counter(dbs["shop"]) if "shop" in dbs else None
                    report, results = _run(world, s.shop, seller, vc, specs, seconds, processes, warmup,
                                           profile_seconds, profile_file, tell, commits,
                                           _shop_counter(s.shop, world.root_pem), phases=phases,
                                           keep_offers=keep_offers, lean=lean, tamper=tamper,
                                           lean_orders=lean_orders)
                    report.update(shop_workers=workers, db=db, buyers_keep_offers=keep_offers, psams=psams)
                    world.stop()                     # the shop lets go of its PSAMs: read them for the money check
                    report["money"] = _money(specs, results, vc.readers)
                    report["met"] = report["met"] and report["money"]["conserved"]
                    return report
            finally:
                world.stop()
        finally:
            if cluster is not None:
                cluster.stop()


def _money(specs: list[BuyerSpec], results: list[dict[str, Any]], psam_readers: list[str]) -> dict[str, Any]:
    """Every completed purchase moved exactly its price from a card to one of the shop's PSAMs, and nothing
    else moved."""
    from semper.hardware.psam import PsamSession
    from semper.hardware.purse import PurseSession
    from semper.hardware.simulator import open_card
    from semper.hardware.transport import PcscConnection
    # + each buyer's first purchase; lean buyers count what paid (a purchase whose check after the window
    # failed still moved its money)
    completed = sum(r["lean"]["paid"] if "lean" in r else sum(1 for _, _, ok, _ in r["samples"] if ok)
                    for r in results) + len(specs)
    spent = 0
    for spec in specs:
        with open_card(Path(spec.card), sync=False) as card:
            spent += LOAD - PurseSession(card).info().balance
    each = []
    for reader in psam_readers:
        with PcscConnection(reader) as conn:
            each.append(PsamSession(conn).info().lifetime_total)
    received = sum(each)
    expected = completed * ITEM_PRICE
    return {"completed_purchases": completed, "expected_cents": expected, "cards_spent_cents": spent,
            "psam_received_cents": received, "psam_received_cents_each": each,
            "conserved": spent == received == expected}


def next_message(out: Any, workers: list[Any], timeout: float) -> dict[str, Any]:
    """The next message of the buyer processes within ``timeout`` (queue.Empty after it), or RuntimeError at
    once when one of them has died: a buyer process killed by a signal sends nothing, and the run used to wait
    out the whole timeout (up to minutes) and then call it void without saying why (a profiled buyer on Debian's
    python3.11 used to die of a segmentation fault so: docs/performance.md, "The interpreter")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return dict(out.get(timeout=min(1.0, max(0.0, deadline - time.monotonic()))))
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                code = dead[0].exitcode
                how = (f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
                       else f"exited with status {code}")
                hint = " (a profiled run on this interpreter? try --no-profile)" if code < 0 else ""
                raise RuntimeError(f"a buyer process {how}; the run is void{hint}") from None
            if time.monotonic() >= deadline:
                raise


def _run(world: Any, shop_url: str, seller: dict[str, int], vc: Any, specs: list[BuyerSpec], seconds: float,
         processes: int,
         warmup: float, profile_seconds: float, profile_file: Path, tell: Callable[[str], None],
         commits: Callable[[], int] | None = None, db_counts: Callable[[], dict[str, dict[str, int]]] | None = None,
         *, phases: bool = False, keep_offers: bool = True, lean: bool = False, tamper: tuple[str, ...] = (),
         lean_orders: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    groups = [specs[i::processes] for i in range(processes)]
    # the timeline, relative to the moment every buyer is ready (then the parent says go)
    offsets = {"warmup_at": 0.5, "window_at": 0.5 + warmup, "window_end": 0.5 + warmup + seconds}
    offsets.update(profile_at=offsets["window_end"], profile_end=offsets["window_end"] + profile_seconds,
                   stop_at=offsets["window_end"] + profile_seconds)
    go, base = ctx.Event(), ctx.Value("d", 0.0)
    profiled = profile_seconds > 0 and not phases
    supply = (lean_supply(len(specs), offsets["stop_at"]) if lean_orders is None else lean_orders) if lean else 0
    if lean:
        from .lean_buyers import lean_worker
        workers = [ctx.Process(target=lean_worker, args=(shop_url, world.root_pem, g, offsets, profiled, out, go, base,
                                                         supply, tamper if i == 0 else ()), daemon=True)
                   for i, g in enumerate(groups)]
    else:
        workers = [ctx.Process(target=_worker, args=(shop_url, world.root_pem, g, offsets, profiled, out, go,
                                                     base, keep_offers), daemon=True) for g in groups]
    tell(f"{len(specs)} {'lean ' if lean else ''}buyers in {processes} processes"
         + (f", {supply} orders each signed before the window" if lean else "")
         + f"; timed window {seconds:g} s after {warmup:g} s warm-up"
         + (f", then {profile_seconds:g} s {'with the seller phase-timed' if phases else 'profiled'}"
            if profile_seconds > 0 else ""))
    for w in workers:
        w.start()
    results: list[dict[str, Any]] = []
    try:
        ready = 0
        while ready < processes:
            msg = next_message(out, workers, 60 + 2.0 * len(specs) + PRESIGN_S * supply * len(specs))
            if "error" in msg:
                raise RuntimeError(f"a buyer process could not start: {msg['error']}")
            ready += 1
        base.value = time.time()
        plan = {k: base.value + v for k, v in offsets.items()}
        go.set()
        pcscd = _pcscd_pid()
        shop_pid = next(iter(seller.values()))
        pids = {**seller, "PSAM (simulated card process)": vc.server.pid, **({"pcscd": pcscd} if pcscd else {})}
        time.sleep(max(0.0, plan["window_at"] - time.time()))
        before = {k: _tree_cpu_seconds(p) for k, p in pids.items()}
        committed = [commits()] if commits is not None else []
        counted = [db_counts()] if db_counts is not None else []
        tell(f"timing for {seconds:g} s")
        time.sleep(max(0.0, plan["window_end"] - time.time()))
        after = {k: _tree_cpu_seconds(p) for k, p in pids.items()}
        if commits is not None:
            committed.append(commits())
        if db_counts is not None:
            counted.append(db_counts())
        if profile_seconds > 0:
            os.kill(shop_pid, signal.SIGUSR1)
            tell(f"{'timing the seller by phase' if phases else 'profiling'} for {profile_seconds:g} s")
            time.sleep(max(0.0, plan["profile_end"] - time.time()))
            os.kill(shop_pid, signal.SIGUSR2)
        while len(results) < processes:
            results.append(next_message(out, workers, max(5.0, plan["stop_at"] - time.time() + 90)))
    except queue.Empty:
        raise RuntimeError("the buyers did not get ready or stopped answering; the run is void") from None
    finally:
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
    report = _report(specs, seconds, processes, warmup, plan, results, before, after, profile_file, profile_seconds,
                     phases, lean)
    if lean:
        # the lean buyers' own counts: purchases paid (checked after the window), checks that failed, orders they
        # had to sign in the window (the pre-signed supply ran out), requests the checks made (0: everything the
        # check needs came with the payment's answer, as the full client gets it)
        report["lean"] = {k: sum(int(r["lean"][k]) for r in results)
                          for k in ("paid", "check_failed", "orders_signed_live", "check_requests")}
        report["lean"]["orders_signed_before_per_buyer"] = supply + 1
    if len(committed) == 2 and report["purchases"]:
        # the window's commits over the purchases that finished in it (a few at the edges belong to neighbours)
        report["db_commits_per_purchase"] = round((committed[1] - committed[0]) / report["purchases"], 2)
    if len(counted) == 2 and report["purchases"] and counted[0]["db"]:
        # the shop's own count (both back ends): transactions begun, read-only and writing, and their statements
        report["db_per_purchase"] = {k: round((counted[1]["db"].get(k, 0) - v) / report["purchases"], 2)
                                     for k, v in counted[0]["db"].items()}
    if len(counted) == 2 and report["purchases"] and counted[0].get("archive"):
        # the evidence archive's writes in transactions of its own, in the deals' transactions (the deals in its
        # file: docs/services.md, section 8), and its own flushes of the log to disk, per purchase
        report["archive_per_purchase"] = {k: round((counted[1]["archive"].get(k, 0) - v) / report["purchases"], 2)
                                          for k, v in counted[0]["archive"].items()}
    if len(counted) == 2 and report["purchases"] and counted[0].get("shop"):
        # the shop's counters over the window's purchases: token signatures (confirmation and delivery note,
        # offers), offers for one deal (POST /deals), standing offers asked for (POST /offer) and signed, orders
        n = report["purchases"]
        d = {k: counted[1]["shop"].get(k, 0) - counted[0]["shop"].get(k, 0) for k in SHOP_COUNTERS}
        report["shop_per_purchase"] = {k: round(d[k] / n, 2) for k in counted[0]["shop"]}
        # offer requests (POST /deals and POST /offer) and offer signatures per purchase in the window, from the
        # counters of the process that answers /stats (with one worker: the shop's; with more, one worker's)
        report["offers_per_purchase"] = {
            "offer_requests": round((d["offers"] + d["standing_asked"]) / n, 3),
            "offer_signatures": round((d["offers"] + d["standing_signed"]) / n, 3),
            "orders_on_standing_offers": round(d["orders_on_standing"] / max(1, d["orders"]), 3)}
    if len(counted) == 2 and counted[0]["card_steps"]:
        # where the window's card payment steps ran (attempts: one waiting for PSAM room asks again)
        report["card_steps_in_window"] = {k: counted[1]["card_steps"].get(k, 0) - v
                                          for k, v in counted[0]["card_steps"].items()}
    return report, results


def _report(specs: list[BuyerSpec], seconds: float, processes: int, warmup: float, plan: dict[str, float],
            results: list[dict[str, Any]], before: dict[str, float], after: dict[str, float], profile_file: Path,
            profile_seconds: float, phases: bool = False, lean: bool = False) -> dict[str, Any]:
    inside = [(t, dt, ok, why) for r in results for t, dt, ok, why in r["samples"]
              if plan["window_at"] <= t + dt <= plan["window_end"]]
    done = [dt for _, dt, ok, _ in inside if ok]
    failed = [why for _, _, ok, why in inside if not ok]
    failed_anywhere = [why for r in results for _, _, ok, why in r["samples"] if not ok]
    rate = len(done) / seconds
    cpu = {k: round(after[k] - before[k], 3) for k in before}
    cpu["buyers (worker processes)"] = round(sum(r["cpu_s"] for r in results), 3)
    per = {k: round(v / len(done) * 1000, 3) if done else None for k, v in cpu.items()}
    total_ms = round(sum(v for v in per.values() if v is not None), 3) if done else None
    per["all processes"] = total_ms
    # the seller's cost: its workers and PSAM owner, its database server, pcscd for its PSAM reader; not
    # the simulated PSAM card (a real card computes on its own chip) nor the buyers
    mine = [k for k in per if k.startswith(("seller", "database server", "pcscd"))]
    seller_ms = round(sum(per[k] or 0.0 for k in mine), 3) if done else None
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {
        "bench": "throughput",
        "what": "mail-order purchases paid from the card purse at one seller ('semper serve shop': token in "
                "SoftHSM2, PSAM behind pcscd with durable writes, evidence archived, deals in its database), N "
                + ("buyers at once, each a lean load generator with its own in-process card (orders signed on it "
                   "before the window, the purse debit live, no archive; every purchase's confirmation and "
                   "delivery note checked after the window: bench/lean_buyers.py)" if lean else
                   "buyers at once, each a full client with its own in-process card and archive") +
                "; CA, bank and third party on loopback HTTPS",
        "buyer_kind": "lean" if lean else "full",
        "buyers": len(specs), "buyer_processes": processes, "window_s": seconds, "warmup_s": warmup,
        "purchases": len(done), "failed": len(failed), "failed_whole_run": len(failed_anywhere),
        "failures": sorted(set(failed_anywhere))[:5],
        "purchases_per_s": round(rate, 1),
        "latency": _percentiles(done) if done else None,
        "cpu_s_in_window": cpu, "cpu_ms_per_purchase": per,
        # the seller's own processes: 'semper serve shop' with every worker and PSAM device process, its
        # database server (PostgreSQL), pcscd for its PSAM reader
        "seller_cpu_ms_per_purchase": seller_ms, "seller_cpu_parts": mine,
        "seller_capacity_per_core": round(1000 / seller_ms, 1) if seller_ms else None,
        # how many purchases per second this machine's cores could take if they ran the seller alone
        "seller_capacity_per_s": round(cores * 1000 / seller_ms, 1) if seller_ms else None, "cores": cores,
        # every process of the purchase shares this machine's cores: at this much CPU per purchase the
        # machine cannot do more than this many purchases per second, however many buyers there are
        "cpu_ceiling_per_s": round(cores * 1000 / total_ms, 1) if total_ms else None,
        "target_per_s": TARGET, "met": rate >= TARGET and not failed,
        "machine": machine(),
    }
    if profile_seconds > 0:
        seller = None
        try:
            deadline = time.time() + 15
            while not profile_file.exists() and time.time() < deadline:
                time.sleep(0.1)
            import json
            seller = json.loads(profile_file.read_text())
        except (OSError, ValueError):
            seller = {"error": "the seller wrote no profile"}
        if phases:
            report["phases"] = {"note": f"a separate {profile_seconds:.0f} s window with the seller's phases timed "
                                        "(bench/phases.py): each phase's own CPU (less the phases it calls) per "
                                        "purchase, from the thread CPU clock; 'rest' is the shop process's CPU no "
                                        "phase covers (event loop, TLS, handlers); buyers not profiled",
                                "seller": seller}
            return report
        report["profile"] = {"note": f"a separate {profile_seconds:.0f} s window under yappi (CPU clock, every "
                                     "thread): "
                                     "profiling slows everything, so only the shares count; each side's 'gc' "
                                     "says whether its garbage collector ran (off on CPython 3.11.0-3.11.2)",
                             "seller": seller,
                             "buyers": [r["profile"] for r in results if r.get("profile")][:1]}
    return report
