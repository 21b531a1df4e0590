"""Lean buyers for ``semper bench throughput --lean-buyers``: the real protocol, cheaply, so the seller is measured.

Why: the full buyers (bench/throughput.py, ``_worker``) are whole clients — the workflow interpreter, the
TINGUIN's confirmation page, a durable archive of their own, chain checks — and cost about 5 ms of CPU per
purchase on the same 2 cores as the seller. The seller's figure then depends on that interference and on
the rate it allows, and the seller is never driven near its own limit.

What a lean buyer does in the timed window, for each purchase, with the client's own blocks
(``client/commerce/blocks.py``), so that the seller sees exactly what a full client sends it:
- an order signed on the buyer's card *before* the window (``presign``: the standing offer kept while valid,
  verified once, as the full client does; the confirmation text rendered by the TINGUIN's renderer and its
  digest in the order; one order per planned purchase, each with a deal id of its own);
- the card's hello with the order (as ``blocks.start_early``: the purse payer flow's first step on the card,
  the negotiation of the module done once per buyer), ``POST /deals/order`` (``blocks.send_order``);
- the purse debit between the card and the PSAM's messages and ``POST /deals/pay`` (``blocks.pay``: the
  shop's terms checked against the signed offer, then ``PayerFlow`` answers the PSAM's challenge on the card).

What it skips in the window: the workflow interpreter and its progress lines, the TINGUIN (offer review,
confirmation page), the card signature of the order (made before), any archive (``Deal.archive`` is None:
nothing is written or flushed; the payment records are not kept), and the checks of the seller's
confirmation and delivery note, which run after the window (``check``: the client's own
``blocks.fetch_confirmation`` and ``blocks.await_delivery``, against the CA root) and fail the run when one
does not pass. None of these is a message to the seller.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the lean buyers' default concurrency (``--buyers``, ``--processes``): enough purchases in flight that one shop
#: worker is at its limit (more only lengthen the latency: docs/performance.md, "the lean load generator"), in
#: as few runnable processes as keep the buyers' own CPU per purchase low
LEAN_BUYERS = 8
LEAN_PROCESSES = 2
#: purchases per second the supply of pre-signed orders is made for; past it a buyer signs in the window
#: (counted: ``orders_signed_live``), so a faster machine is measured honestly, only a little dearer
SUPPLY_RATE = 700.0


@dataclass
class Presigned:
    """One order signed before the window: its deal (no archive), the offer it is on, what was confirmed."""

    deal: Any                       # client.commerce.deal.Deal
    offer: Any                      # documents.ParsedOffer (the standing offer, with this deal's id)
    confirmed: Any                  # blocks.Confirmed
    order: bytes                    # the CMS signed order
    digest: str                     # its SHA-256, hex


@dataclass
class Purchase:
    """A purchase made in the window, kept for the check after it: the order and what the payment brought."""

    pre: Presigned
    paid: Any                       # blocks.Paid: the payer's record, the seller's confirmation / delivery answer


def _forgetful_store() -> Any:
    """A payment record store that keeps nothing: the payer's records are what a client archives, and a lean
    buyer archives nothing (the in-memory store wrote each record as JSON at every step, four a purchase)."""
    from semper.client.payment.store import RecordStore

    class Forgetful(RecordStore):
        def put(self, record: Any) -> None:
            pass
    return Forgetful()


class LeanBuyer:
    """One buyer: its card in process, a payment manager with the purse module only, the lean HTTPS client.

    Built from the client's own parts (``Buyer``, ``GatedSigner`` over the card's PIV key, ``PurseModule``),
    but with no archive and no exchange party; ``purse`` stays None on the :class:`Buyer`, so the payment's
    evidence (which nobody archives here) does not read the card's certificate again."""

    def __init__(self, shop_url: str, root_pem: str, card_path: Path) -> None:
        from cryptography import x509

        from semper.client.commerce.buyer import Buyer
        from semper.client.commerce.pin import GatedSigner, tinguin_pin
        from semper.client.commerce.shop_client import ShopClient
        from semper.client.demo_world import CARD_PIN
        from semper.client.payment.manager import PaymentManager
        from semper.client.payment.module import PartyContext
        from semper.client.payment.modules.purse import PurseModule
        from semper.client.support.trust import TrustStore
        from semper.hardware.piv import PivSession, PivSigner
        from semper.hardware.purse import PurseSession
        from semper.hardware.simulator import open_card

        from .policy_ui import PolicyUI
        self.card = open_card(card_path, sync=False)
        self.ui = PolicyUI(pin=CARD_PIN, payment="card-purse")
        lock = threading.RLock()
        purse = PurseSession(self.card)
        piv = PivSession(self.card, select=False)
        signer = GatedSigner(PivSigner(piv, label="your card"), self.ui, select=piv.select, lock=lock)
        ctx = PartyContext(signer=signer, enter_pin=tinguin_pin(self.ui), purse=purse, select_signer=piv.select)
        payments = PaymentManager(ctx, modules={"card-purse": PurseModule}, store=_forgetful_store())
        self.shop = ShopClient(shop_url, root_pem)
        trust = TrustStore([x509.load_pem_x509_certificate(root_pem.encode())])
        self.buyer = Buyer(self.ui, trust, self.shop, None, payments, signer=signer,  # type: ignore[arg-type]  # no archive: Deal takes None
                           card_lock=lock)
        self.orders: list[Presigned] = []
        self.signed_live = 0
        self.choice: Any = None          # payment.model.Choice: the purse on this card, negotiated once

    def close(self) -> None:
        self.shop.close()
        self.card.close()

    def presign(self, count: int) -> None:
        """``count`` orders signed on the card now, each on the kept standing offer with a deal of its own."""
        for _ in range(count):
            self.orders.append(self._sign_one())
            self.ui.offers.clear()
            self.ui.confirmations.clear()
            self.ui.pins.clear()

    def _sign_one(self) -> Presigned:
        from semper.client.commerce import blocks
        from semper.client.commerce import documents as docs
        from semper.client.commerce.deal import deal_attributes
        from semper.client.payment.model import Acceptance
        from semper.client.tinguin.model import Action

        from .throughput import ADDRESS, ITEM_SKU
        b = self.buyer
        deal, offer, vs = blocks.standing_offer(b, "mail-order", [(ITEM_SKU, 1)], deal_attributes("mail-order"))
        confirmed = blocks.review_and_confirm(b, deal, offer, vs, ADDRESS, Action.ORDER_AND_PAY)
        order = blocks.make_order(b, deal, offer, confirmed)
        digest = docs.sha256_hex(order)
        if self.choice is None:
            self.choice = b.payments.choose(self._terms(offer, digest), [Acceptance("card-purse", (offer.currency,))],
                                            deal.attributes.payment_requirements())
        return Presigned(deal, offer, confirmed, order, digest)

    @staticmethod
    def _terms(offer: Any, digest: str) -> Any:
        """The payment's terms as the signed offer and the order fix them (``blocks.start_early``'s)."""
        from semper.client.commerce import documents as docs
        from semper.client.payment.model import Terms
        return Terms(docs.payment_id_for(offer.deal_id, digest), offer.total, offer.currency, offer.seller_account,
                     digest)

    def _start(self, pre: Presigned) -> Any:
        """``blocks.start_early`` with the negotiation done once per buyer (it asked the card for its purse's
        instruments at every purchase: two APDUs and the negotiation, the same answer each time): the purse
        payer flow's first step on the card, the hello to go with the order."""
        from semper.client.commerce.blocks import EarlyPayment
        b = self.buyer
        session = b.payments.pay(self._terms(pre.offer, pre.digest), self.choice)
        with b.card_lock:
            first = session.start()
        return EarlyPayment(session, first)

    def buy(self) -> Purchase:
        """One purchase on the next pre-signed order (signed now if none is left): the card's hello with the
        order, the shop's terms checked, the card's debit answering the PSAM's challenge, the payment sent."""
        from semper.client.commerce import blocks
        if not self.orders:
            self.signed_live += 1
            self.orders.append(self._sign_one())
        pre = self.orders.pop()
        b = self.buyer
        early = self._start(pre)
        answer = blocks.send_order(b, pre.deal, pre.offer, pre.order, early=early)
        if answer.get("next") != "payment":
            raise RuntimeError(f"the shop answered the order with next={answer.get('next')!r}, not 'payment'")
        paid = blocks.pay(b, pre.deal, pre.offer, pre.digest, pre.confirmed, answer, early)
        return Purchase(pre, paid)

    def check(self, p: Purchase) -> None:
        """The seller's confirmation and delivery note as the buyer's client checks them (CMS signature and
        chain to the CA root, signed by the offer's seller, the payment confirmed is this order's and the
        payer's record's, the note is for this deal and order and lists what was ordered); raises
        ``Dispute`` (or another CommerceError) when one does not pass. Asks the shop only for what did not
        come with the payment's answer (``check_requests`` in the report: 0 when everything came)."""
        from semper.client.commerce import blocks
        b = self.buyer
        conf = blocks.fetch_confirmation(b, p.pre.deal, p.pre.offer, p.pre.digest, p.paid)
        blocks.await_delivery(b, p.pre.deal, p.pre.offer, p.pre.digest, patience=5.0,
                              sent=p.paid.delivery, confirmed=conf)


def tampered(p: Purchase, how: str, other: Purchase | None = None) -> Purchase:
    """``p`` with what the seller sent changed, for the tests that the check after the window can fail:
    ``note``, one letter of the delivery note's signed address changed (a field no check but the CMS
    signature's covers); ``other-order``, the seller's answers of another purchase (``other``) handed over as
    this one's."""
    import base64

    from semper.client.commerce.blocks import Paid

    from .throughput import ADDRESS
    if how == "other-order":
        if other is None:
            raise ValueError("'other-order' needs another purchase")
        return Purchase(p.pre, Paid(p.paid.record, other.paid.confirmation, other.paid.delivery))
    if how != "note":
        raise ValueError(f"tamper with 'note' or 'other-order', not {how!r}")
    delivery = dict(p.paid.delivery or {})
    raw = base64.b64decode(str(delivery.get("delivery") or ""))
    city = ADDRESS["city"].encode()
    if raw.count(city) != 1:
        raise ValueError("the purchase's delivery note does not name the bench's city once")
    delivery["delivery"] = base64.b64encode(raw.replace(city, city[:-1] + bytes([city[-1] ^ 0x01]))).decode()
    return Purchase(p.pre, dataclasses.replace(p.paid, delivery=delivery))


# ---- a worker process: some lean buyers, one thread each ------------------------------------------------
@dataclass
class _Sample:
    """One purchase of the run as a lean buyer made it, until its check after the window: when it started, how
    long it took, whether it succeeded (a failed check makes it failed), why not, what it made, whose it is."""

    start: float
    took: float
    ok: bool
    why: str
    purchase: Purchase | None
    buyer: LeanBuyer


def lean_worker(shop_url: str, root_pem: str, specs: list[Any], offsets: dict[str, float], profile: bool,
                out: Any, go: Any, base: Any, supply: int = 0, tamper: tuple[str, ...] = ()) -> None:
    """The lean buyers of one process, speaking to the parent as ``throughput._worker`` does (ready, then the
    samples, the window's CPU seconds and errors), and adding ``check``: the checks after the window.

    Each buyer signs ``supply`` orders, buys once (checked at once: connections warm, and a set-up that
    cannot buy fails before the window), then buys until the run stops; after the stop every purchase is
    checked, and a purchase whose check fails is a failed sample. ``tamper`` (tests only): the first
    purchases finishing in the window are handed to the check changed (:func:`tampered`)."""
    from .throughput import buy_until_stopped, drive_window
    samples: list[_Sample] = []
    lock = threading.Lock()
    errors: list[str] = []
    buyers: list[LeanBuyer] = []
    plan: dict[str, float] = {}
    planned = threading.Event()

    def run(spec: Any, ready: threading.Barrier) -> None:
        try:
            lb = LeanBuyer(shop_url, root_pem, Path(spec.card))
            buyers.append(lb)
            lb.presign(supply + 1)
            lb.check(lb.buy())                    # the first purchase, checked now
        except Exception as e:           # reported to the parent, which fails the run with it
            errors.append(f"{spec.name}: {type(e).__name__}: {e}")
            ready.abort()
            return
        try:
            ready.wait(600)                       # as long as the process waits: the others may still be signing
            def one() -> tuple[bool, str, Any]:
                return True, "", lb.buy()

            def keep(t0: float, took: float, ok: bool, why: str, made: Any) -> None:
                with lock:
                    samples.append(_Sample(t0, took, ok, why[:300], made, lb))
            buy_until_stopped(plan, planned, one, keep)
        except threading.BrokenBarrierError:
            pass

    window = drive_window(run, specs, plan, planned, errors, out, go, base, offsets, profile, ready_s=600)
    if window is None:
        return
    requests_before = sum(b.shop.requests for b in buyers)
    checked = _check_all(samples, plan, tamper)
    out.put({"samples": [(s.start, s.took, s.ok, s.why) for s in samples], "cpu_s": window[0],
             "profile": window[1], "errors": errors,
             "lean": {**checked, "orders_signed_live": sum(b.signed_live for b in buyers),
                      "check_requests": sum(b.shop.requests for b in buyers) - requests_before}})
    for b in buyers:
        b.close()


def _check_all(samples: list[_Sample], plan: dict[str, float], tamper: tuple[str, ...]) -> dict[str, Any]:
    """Every purchase checked after the window (:meth:`LeanBuyer.check`); a failed check makes its sample failed,
    with the reason. ``tamper``: the ways the first purchases finishing in the window are changed first."""
    inside = [s for s in samples if s.ok and plan["window_at"] <= s.start + s.took <= plan["window_end"]]
    plans = dict(zip((id(s) for s in inside), tamper, strict=False))
    failed = 0
    for s in samples:
        p = s.purchase
        if not s.ok or p is None:
            continue
        how = plans.get(id(s))
        if how is not None:
            p = tampered(p, how, other=next((o.purchase for o in samples if o is not s and o.purchase), None))
        try:
            s.buyer.check(p)
        except Exception as e:           # every failed check is a failed purchase, with its reason
            s.ok, s.why = False, f"check after the window: {type(e).__name__}: {e}"[:300]
            failed += 1
    # paid: purchases whose payment went through (checked or not), for the money check
    return {"paid": sum(1 for s in samples if s.purchase is not None), "check_failed": failed}
