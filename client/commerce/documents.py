"""The commerce statements: what each block signs, and the checks the other side makes on it.

Why pure functions: both parties (and a judge, later) must build and check the same documents the
same way, from the signed bytes alone. Every document names the deal; every document after the
offer names the digest of the one before it (order -> offer, confirmation and delivery note ->
order), so a bundle of them is a chain a verifier can follow without trusting either party.

=====================  ==========  =============================================================
type                   signed by   body (besides ``type`` and ``deal``)
=====================  ==========  =============================================================
offer                  seller      buyer's ``nonce`` (anti-replay), ``workflow``, ``items``, ``total``,
                                   ``currency``, accepted ``payment`` modules, ``seller_account``,
                                   ``psam``, ``valid_until``, ``attributes``, ``form`` spec; a
                                   *standing* offer (mail order) has ``standing: true`` and no
                                   ``deal`` or ``nonce``: the order names the deal
order                  buyer card  ``offer_sha256``, ``items``, ``total``, ``payment``, ``form`` values,
                       (none when  ``confirmation``: SHA-256 of the exact TINGUIN text and what it
                       anonymous)  needs to be re-rendered
order-confirmation     seller      ``order_sha256``, ``payment`` (module, id, amount, status)
delivery               seller      ``order_sha256``, ``items`` shipped (with ``sha256`` for information),
                                   ``ship_to``, ``tracking``; and ``payment`` as the confirmation's when it
                                   is signed in its stead (one statement for both, :func:`confirmed_payment`)
registration           seller      ``order_sha256``, ``member`` (form values), ``member_id``, ``valid_until``;
                                   ``payment`` as a delivery note's
receipt                seller      (in the information exchange) ``order_sha256``, ``sku``, ``sha256``, amount
contract-signature     each side   (in the contract exchange) ``contract_sha256``, ``role``, and for the
                                   buyer ``confirmation_sha256``
=====================  ==========  =============================================================
"""
from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..payment.model import Status
from ..support.canonical import canonical as _canonical
from ..support.pki import ROLES
from ..support.small_cache import MAX_BYTES
from ..support.verify import VerifiedStatement
from .catalogue import CatalogueItem
from .deal import WORKFLOWS, DealAttributes, check_deal_id
from .errors import CommerceError, FormError, OfferRefused
from .forms import FormSpec

MAX_LINES = 20
MAX_VALIDITY = dt.timedelta(days=1)
CLOCK_SKEW = dt.timedelta(minutes=5)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payment_id_for(deal_id: str, order_digest: str) -> str:
    """The id of an ordered deal's payment, which buyer and seller both derive from the deal (the seller's
    fresh id, named by its signed offer) and the order's digest (one order per deal).

    Why derived and not drawn by the seller: the payer's first message names its payment, and a module
    that can start early (``ExchangeProperties.starts_early``) sends it with the order, before the order's
    answer could tell it an id (docs/commerce.md, "The card's hello with the order"). Derived, not
    proposed by the payer: a payer cannot name another deal's payment, and the seller needs no check
    that an id is free. The same order sent again gives the same id, so the PSAM, which answers a
    repeated begin for the same payment with the same request, is not asked for a second debit."""
    return hashlib.sha256(f"semper-payment\0{deal_id}\0{order_digest}".encode()).hexdigest()[:32]


def canonical(obj: Any) -> bytes:
    return _canonical(obj, "document", CommerceError)


def rfc3339(when: dt.datetime) -> str:
    """``when`` in UTC as ``YYYY-MM-DDTHH:MM:SSZ``: ``strftime("%Y-%m-%dT%H:%M:%SZ")``'s text, written by
    hand for the years it pads to four digits (a third of its time; the seller writes one per offer)."""
    w = when.astimezone(dt.UTC)
    if w.year < 1000:                   # strftime writes such a year unpadded (glibc): kept as it was
        return w.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{w.year:04d}-{w.month:02d}-{w.day:02d}T{w.hour:02d}:{w.minute:02d}:{w.second:02d}Z"


def parse_time(text: Any, what: str) -> dt.datetime:
    """A time exactly as :func:`rfc3339` writes it (every field zero-padded, UTC, ``Z``); anything else is
    refused. Read by hand rather than by ``strptime``, which also takes unpadded fields and costs the
    seller a measurable share of an order (it reads two per purchase; docs/performance.md)."""
    s = str(text)
    known = _times.get(s)
    if known is not None:
        return known
    if len(s) == 20 and s.isascii() and s[4] + s[7] + s[10] + s[13] + s[16] + s[19] == "--T::Z":
        digits = (s[0:4], s[5:7], s[8:10], s[11:13], s[14:16], s[17:19])
        if all(d.isdigit() for d in digits):
            try:
                year, month, day, hour, minute, second = (int(d) for d in digits)
                when = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
            except ValueError:
                pass
            else:
                if len(_times) >= _REMEMBERED:
                    _times.clear()
                _times[s] = when
                return when
    raise OfferRefused(f"the offer's {what} is not a time (YYYY-MM-DDTHH:MM:SSZ)")


#: how many times and certificates' roles this process keeps read (parse_time, has_role): a handful are in
#: use at once (the offers of the last seconds, the buyers of the hour); past the bound they are read again
_REMEMBERED = 4096
_times: dict[str, dt.datetime] = {}             # (datetimes are immutable)


def has_role(cert: x509.Certificate, role: str) -> bool:
    """Whether ``cert``'s extended key usage names ``role``'s OID. The usages are read once per certificate
    (an order's signer is a returning buyer: the seller asked cryptography for them at every order)."""
    oids = _usages.get(cert)
    if oids is None:
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            oids = frozenset(o.dotted_string for o in eku)
        except x509.ExtensionNotFound:
            oids = frozenset()
        # a certificate is kept by its DER (its hash and equality): only one of at most small_cache.MAX_BYTES,
        # as every memo keyed on bytes from the network (a CA's certificate is 0.5-2 KB)
        if len(cert.public_bytes(serialization.Encoding.DER)) <= MAX_BYTES:
            if len(_usages) >= _REMEMBERED:
                _usages.clear()
            _usages[cert] = oids
    return ROLES[role].role_oid in oids


_usages: dict[x509.Certificate, frozenset[str]] = {}    # a certificate's usages, by its DER (x509 equality)


# ---- offer -----------------------------------------------------------------------------------------
def offer_body(*, deal_id: str | None, nonce: str | None, workflow: str, lines: Sequence[tuple[CatalogueItem, int]],
               payment: Sequence[str], seller_account: str, psam: str | None, attributes: DealAttributes,
               form: FormSpec, valid_until: dt.datetime) -> dict[str, Any]:
    """The body of an offer: for one deal, answering the buyer's ``nonce``; or, both None, a *standing*
    offer (``standing: true``, no deal, no nonce) that any number of orders may take while it is valid,
    each naming a deal id of its buyer's (docs/commerce.md, "Standing offers")."""
    if (deal_id is None) != (nonce is None):
        raise CommerceError("an offer names both a deal and the buyer's nonce, or neither (a standing offer)")
    items = []
    for item, qty in lines:
        d: dict[str, Any] = {"sku": item.sku, "description": item.description, "kind": item.kind, "quantity": qty,
                             "unit_price": item.unit_price}
        if item.content is not None:
            d.update(sha256=item.sha256, length=len(item.content), name=item.name or item.sku)
        if item.contract is not None:
            d.update(contract=item.contract, contract_sha256=item.sha256)
        items.append(d)
    currency = {i.currency for i, _ in lines}
    if len(currency) != 1:
        raise CommerceError("one offer is in one currency")
    head: dict[str, Any] = {"type": "offer", "standing": True} if deal_id is None else \
        {"type": "offer", "deal": deal_id, "nonce": nonce}
    return {**head, "workflow": workflow, "items": items,
            "currency": currency.pop(), "total": sum(i.unit_price * q for i, q in lines), "payment": list(payment),
            "seller_account": seller_account, "psam": psam, "attributes": attributes.as_dict(),
            "form": form.to_json(), "valid_until": rfc3339(valid_until)}


#: the workflows whose offers may be standing (Shop.standing_offer): the others answer a nonce, per deal
STANDING_WORKFLOWS = frozenset({"mail-order"})


def is_standing(body: Mapping[str, Any]) -> bool:
    """Whether an offer's body is a standing offer's (``standing: true``, no deal, no nonce)."""
    return body.get("standing") is True and "deal" not in body and "nonce" not in body


@dataclass(frozen=True)
class OfferLine:
    sku: str
    description: str
    kind: str
    quantity: int
    unit_price: int
    sha256: str | None = None
    length: int | None = None
    name: str | None = None
    contract: str | None = None


@dataclass(frozen=True)
class ParsedOffer:
    """A verified offer statement, parsed and checked against the buyer's request."""

    der: bytes
    digest: str
    deal_id: str
    workflow: str
    lines: tuple[OfferLine, ...]
    currency: int
    total: int
    payment: tuple[str, ...]
    seller_account: str
    psam: str | None
    attributes: DealAttributes
    form: FormSpec
    valid_until: dt.datetime
    seller: x509.Certificate
    signed_at: dt.datetime
    tag: str = ""           # the shop's tag of the offer (not signed: the shop's own check), sent back with the order
    standing: bool = False  # a standing offer: ``deal_id`` is the buyer's own for this deal, not in the offer


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise OfferRefused(f"the offer's {what} must be a whole number from {lo} to {hi}, not {v!r}")
    return v


def parse_offer(vs: VerifiedStatement, *, deal_id: str | None, nonce: str | None, now: dt.datetime | None = None
                ) -> ParsedOffer:
    """Everything the buyer checks on a seller's offer before showing it; OfferRefused says what failed.

    ``nonce`` is the buyer's fresh value from its request: an offer signed for another request (a
    replayed offer, even a genuine one) does not carry it. ``nonce`` None: a *standing* offer is
    expected (no deal, no nonce, ``standing: true``, a workflow whose offers may stand), and ``deal_id``
    is the id of the buyer's own deal on it (its order names it), which the result carries. Why a
    standing offer needs no nonce: it names no deal, so a replayed one (still valid) is the same offer
    the shop makes to anyone, and the deal id, the buyer's own, cannot be one the buyer did not choose.
    """
    b = vs.body
    now = now or dt.datetime.now(dt.UTC)
    if b.get("type") != "offer":
        raise OfferRefused(f"the seller sent a {b.get('type')!r} statement, not an offer")
    if not has_role(vs.signer, "seller"):
        raise OfferRefused("the offer is signed by a certificate that is not a seller's")
    standing = nonce is None
    if standing:
        if not is_standing(b) or b.get("workflow") not in STANDING_WORKFLOWS:
            raise OfferRefused("the seller sent an offer for one deal where a standing offer was asked for")
        try:
            got_deal = check_deal_id(deal_id)
        except CommerceError:
            raise OfferRefused("a deal on a standing offer needs a deal id of 32 hex digits") from None
    else:
        if b.get("nonce") != nonce:
            raise OfferRefused("the offer does not answer this request (another request's nonce): a replayed "
                               "offer; nothing was ordered")
        try:
            got_deal = check_deal_id(b.get("deal"))
        except CommerceError:
            raise OfferRefused("the offer names no valid deal") from None
        if deal_id is not None and got_deal != deal_id:
            raise OfferRefused("the offer is for another deal than the seller announced")
    if b.get("workflow") not in WORKFLOWS:
        raise OfferRefused(f"the offer's workflow {b.get('workflow')!r} is unknown")
    valid_until = parse_time(b.get("valid_until"), "validity")
    signed = vs.signing_time.astimezone(dt.UTC)
    if valid_until < now:
        raise OfferRefused(f"the offer expired at {rfc3339(valid_until)}; ask for a new one")
    if valid_until - signed > MAX_VALIDITY + CLOCK_SKEW or signed > now + CLOCK_SKEW:
        raise OfferRefused("the offer's signing time or validity is implausible; ask for a new one")
    raw = b.get("items")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_LINES:
        raise OfferRefused(f"the offer must list 1 to {MAX_LINES} items")
    lines = []
    for n, i in enumerate(raw, 1):
        if not isinstance(i, Mapping):
            raise OfferRefused(f"item {n} of the offer is not a JSON object")
        line = OfferLine(str(i.get("sku")), str(i.get("description", "")), str(i.get("kind")),
                         _int(i.get("quantity"), f"item {n} quantity", 1, 1_000_000),
                         _int(i.get("unit_price"), f"item {n} price", 0, 2**31 - 1),
                         i.get("sha256"), i.get("length"), i.get("name"), i.get("contract"))
        if line.kind == "information" and (not isinstance(line.sha256, str) or len(line.sha256) != 64
                                           or not isinstance(line.length, int)):
            raise OfferRefused(f"item {n} is information but the offer gives no digest and length for it")
        if line.kind == "contract" and (not isinstance(line.contract, str)
                                        or sha256_hex(line.contract.encode()) != i.get("contract_sha256")):
            raise OfferRefused(f"item {n} is a contract whose text does not match its digest")
        lines.append(line)
    currency = _int(b.get("currency"), "currency", 1, 999)
    total = _int(b.get("total"), "total", 0, 2**31 - 1)
    computed = sum(x.quantity * x.unit_price for x in lines)
    if computed != total:
        raise OfferRefused(f"the offer states a total of {total} but its items add up to {computed}: inconsistent; "
                           "do not buy")
    payment = b.get("payment")
    if not isinstance(payment, list) or not all(isinstance(p, str) for p in payment):
        raise OfferRefused("the offer's payment modules are not a list of names")
    try:
        attributes = DealAttributes.from_dict(b.get("attributes") or {})
        form = FormSpec.from_json(b.get("form") or {"name": "none", "fields": []})
    except (CommerceError, FormError) as e:
        raise OfferRefused(f"the offer's attributes or form are malformed: {e}") from None
    account = b.get("seller_account")
    if not isinstance(account, str) or not account:
        raise OfferRefused("the offer names no account to pay")
    psam = b.get("psam")
    if psam is not None and not isinstance(psam, str):
        raise OfferRefused("the offer's PSAM id is malformed")
    return ParsedOffer(vs.statement.der, sha256_hex(vs.statement.der), got_deal, str(b["workflow"]), tuple(lines),
                       currency, total, tuple(payment), account, psam, attributes, form, valid_until, vs.signer, signed,
                       standing=standing)


# ---- order -----------------------------------------------------------------------------------------
def order_body(offer: ParsedOffer, *, payment: str, payment_label: str, confirmation_sha256: str, scripted: bool,
               action: str, details: Sequence[tuple[str, str]], form: Mapping[str, str],
               attributes: DealAttributes) -> dict[str, Any]:
    """The order; its ``confirmation`` part is what a verifier needs to re-render the TINGUIN's text."""
    return {"type": "order", "deal": offer.deal_id, "offer_sha256": offer.digest,
            "items": [{"sku": x.sku, "quantity": x.quantity} for x in offer.lines], "total": offer.total,
            "currency": offer.currency, "payment": payment, "form": dict(form), "attributes": attributes.as_dict(),
            "confirmation": {"sha256": confirmation_sha256, "scripted": scripted, "payment_label": payment_label,
                             "action": action, "details": [list(d) for d in details]}}


def check_order(body: Mapping[str, Any], offer_body_: Mapping[str, Any], offer_digest: str) -> dict[str, str]:
    """The seller's checks of an order against the offer it signed; returns the validated form values. The
    order's deal is the offer's, or, on a standing offer (which names none), the caller's to check."""
    if body.get("type") != "order" or (not is_standing(offer_body_) and body.get("deal") != offer_body_.get("deal")):
        raise CommerceError("this is not an order for this deal")
    if body.get("offer_sha256") != offer_digest:
        raise CommerceError("the order is for another offer than the one this shop signed for the deal")
    want = [{"sku": i["sku"], "quantity": i["quantity"]} for i in offer_body_["items"]]
    if body.get("items") != want or body.get("total") != offer_body_["total"] \
            or body.get("currency") != offer_body_["currency"]:
        raise CommerceError("the order's items, total or currency differ from the offer")
    if body.get("payment") not in offer_body_["payment"] and offer_body_["total"] > 0:
        raise CommerceError(f"the order pays with {body.get('payment')!r}, which the offer does not accept")
    if body.get("attributes") != offer_body_["attributes"]:
        raise CommerceError("the order's deal attributes differ from the offer's")
    conf = body.get("confirmation")
    if not isinstance(conf, Mapping) or not isinstance(conf.get("sha256"), str) or len(conf["sha256"]) != 64:
        raise CommerceError("the order does not carry the digest of the confirmation the buyer saw")
    return FormSpec.from_json(offer_body_["form"]).validate(body.get("form") or {})


# ---- the seller's later documents -------------------------------------------------------------------
def confirmation_body(deal_id: str, order_sha256: str, payment: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "order-confirmation", "deal": deal_id, "order_sha256": order_sha256, "payment": dict(payment)}


def delivery_body(deal_id: str, order_sha256: str, items: Sequence[Mapping[str, Any]], ship_to: Mapping[str, str],
                  tracking: str, payment: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The delivery note; with ``payment``, it also confirms the payment as :func:`confirmation_body` does
    (signed instead of the confirmation when the payment step ships: one signature, one statement)."""
    body = {"type": "delivery", "deal": deal_id, "order_sha256": order_sha256, "items": [dict(i) for i in items],
            "ship_to": dict(ship_to), "tracking": tracking}
    if payment is not None:
        body["payment"] = dict(payment)
    return body


def registration_body(deal_id: str, order_sha256: str, service: str, member: Mapping[str, str], member_id: str,
                      valid_until: dt.datetime, payment: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The registration; ``payment`` as :func:`delivery_body`'s."""
    body = {"type": "registration", "deal": deal_id, "order_sha256": order_sha256, "service": service,
            "member": dict(member), "member_id": member_id, "valid_until": rfc3339(valid_until)}
    if payment is not None:
        body["payment"] = dict(payment)
    return body


#: the statements that confirm a payment: the confirmation, and the delivery note or registration signed in
#: its stead when the payment step ships (they then carry the ``payment`` the confirmation would)
CONFIRMING = ("order-confirmation", "delivery", "registration")


def confirmed_payment(body: Mapping[str, Any], deal_id: str, order_sha256: str) -> dict[str, Any] | None:
    """The payment a seller's statement confirms for this deal and order, or None when it confirms none:
    an ``order-confirmation``'s ``payment``, or that of a ``delivery`` note or ``registration`` which states
    one (one statement that proves both the payment confirmed and what was shipped; docs/evidence.md).
    Who signed it, and whether the payment is the right one, the caller checks."""
    if body.get("type") not in CONFIRMING or body.get("deal") != deal_id or body.get("order_sha256") != order_sha256:
        return None
    payment = body.get("payment")
    return dict(payment) if isinstance(payment, Mapping) else None


#: the states of a payment a seller's statement may confirm (what the shop takes as paid: ``Shop._paid``); a
#: statement stating another (failed, pending, refunded) confirms no payment
PAID_STATUSES = (Status.PAID.value, Status.CAPTURED.value, Status.AUTHORISED.value)


def payment_mismatch(payment: Mapping[str, Any], *, payment_id: str | None, amount: int, currency: int,
                     module: str | None = None) -> str | None:
    """Why the payment a seller's statement confirms is not the one expected, or None when it is: its id,
    amount, currency and (when the caller knows it) module. One rule for the buyer's client and the judge,
    so that a statement the client takes as its confirmation is one the judge counts (review of
    2026-12-07: the client checked no currency where the judge did). A statement without a currency
    names the deal's (confirmations before 2026-12-07 always carried one)."""
    if payment.get("payment_id") != payment_id:
        return f"it confirms payment {payment.get('payment_id')}, not {payment_id}"
    if payment.get("amount") != amount:
        return f"it confirms an amount of {payment.get('amount')}, not {amount}"
    if payment.get("currency", currency) != currency:
        return f"it confirms currency {payment.get('currency')}, not {currency}"
    if module is not None and payment.get("module", module) != module:
        return f"it confirms a payment by {payment.get('module')}, not {module}"
    if payment.get("status", PAID_STATUSES[0]) not in PAID_STATUSES:
        return f"it states the payment {payment.get('status')!r}, not paid"
    return None


def receipt_body(deal_id: str, order_sha256: str, line: OfferLine | Mapping[str, Any], amount: int, currency: int
                 ) -> dict[str, Any]:
    sku = line.sku if isinstance(line, OfferLine) else line["sku"]
    digest = line.sha256 if isinstance(line, OfferLine) else line["sha256"]
    return {"type": "receipt", "deal": deal_id, "order_sha256": order_sha256, "sku": sku, "sha256": digest,
            "amount": amount, "currency": currency}


def contract_body(deal_id: str, contract_sha256: str, role: str, confirmation_sha256: str | None = None
                  ) -> dict[str, Any]:
    body = {"type": "contract-signature", "deal": deal_id, "contract_sha256": contract_sha256, "role": role}
    if confirmation_sha256 is not None:
        body["confirmation_sha256"] = confirmation_sha256
    return body


def expected_delivery(offer: ParsedOffer) -> list[dict[str, Any]]:
    """What a correct delivery note lists for this offer (information lines with their digests)."""
    out = []
    for x in offer.lines:
        d: dict[str, Any] = {"sku": x.sku, "quantity": x.quantity}
        if x.sha256 is not None:
            d["sha256"] = x.sha256
        out.append(d)
    return out
