"""Payment items, through the interface the payment manager implements (``client/payment/item.py``).

The transfer layer does not know how any payment system works; it knows a *payment module* by its
name, its properties (exchange-enabling ones, and anonymity: the module's own declaration) and four
operations split over the two sides:

* payee: ``request(hint, amount, currency)`` — a payment request bound to this payment (e.g. a
  PSAM-signed debit request), which goes into the exchange's description and so into its id;
  ``deposit(proof, request)`` — cash in a proof received (e.g. into the PSAM's batch);
* payer: ``payer_hint()`` — what the payee needs for a request (card number, next counter);
  ``check_request(request, amount, currency)``; ``pay(request, amount, currency)`` — the proof;
* anyone (the third party, a judge): ``verify(proof, request, amount, currency)`` — external
  verifiability; ``revoke(proof, request, decision)`` only for modules that declare revocability.

Description terms: ``module``, ``amount`` (minor units), ``currency`` (ISO 4217 numeric), and after
the payee completed it, ``request``. Item: ``{"module", "proof"}``.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

from cryptography import x509

from .binding import Binding
from .errors import ItemMismatch, MalformedItem, PaymentFailed, UnknownItemType
from .items import Description, Item
from .managers import ManagerBase, OfferBase
from .properties import Properties

JsonDict = dict[str, Any]


class PaymentVerifier(Protocol):
    name: str

    def properties(self) -> Properties: ...

    def verify(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int) -> None:
        """ItemMismatch unless ``proof`` shows this exact payment was made against ``request``."""
        ...


class PayeeModule(PaymentVerifier, Protocol):
    def request(self, hint: Mapping[str, Any], amount: int, currency: int) -> JsonDict: ...

    def deposit(self, proof: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
        """Cash in a verified proof; False when it was deposited before (idempotent)."""
        ...


class PayerModule(PaymentVerifier, Protocol):
    def payer_hint(self) -> JsonDict: ...

    def check_request(self, request: Mapping[str, Any], amount: int, currency: int) -> None: ...

    def pay(self, request: Mapping[str, Any], amount: int, currency: int) -> JsonDict: ...


def _amount(d: Description) -> tuple[int, int]:
    return int(d.terms["amount"]), int(d.terms["currency"])


class PaymentManager(ManagerBase):
    """Checks payments with the verifiers it knows; completes requests and deposits with payee modules."""

    item_type = "payment"

    def __init__(self, verifiers: Mapping[str, PaymentVerifier] | None = None,
                 payees: Mapping[str, PayeeModule] | None = None) -> None:
        self.verifiers: dict[str, PaymentVerifier] = dict(verifiers or {})
        self.payees: dict[str, PayeeModule] = dict(payees or {})
        for name, payee in self.payees.items():
            self.verifiers.setdefault(name, payee)

    def _verifier(self, name: str) -> PaymentVerifier:
        try:
            return self.verifiers[name]
        except KeyError:
            raise UnknownItemType(f"no payment module {name!r} here (known: "
                                  f"{', '.join(sorted(self.verifiers)) or 'none'})"
                                  ) from None

    def check_description(self, d: Description) -> None:
        for key in ("amount", "currency"):
            v = d.terms.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 2**31:
                raise MalformedItem(f"a payment description needs a positive integer {key!r}")
        if not isinstance(d.terms.get("module"), str):
            raise MalformedItem("a payment description needs the payment 'module'")
        if "request" in d.terms and not isinstance(d.terms["request"], Mapping):
            raise MalformedItem("a payment request must be a JSON object")

    def properties(self, d: Description) -> Properties:
        return self._verifier(str(d.terms["module"])).properties()

    def complete(self, d: Description, hint: Mapping[str, Any]) -> Description:
        name = str(d.terms["module"])
        payee = self.payees.get(name)
        if payee is None:
            raise UnknownItemType(f"this party cannot receive {name!r} payments (no payee module)")
        return d.with_terms(request=payee.request(hint, *_amount(d)))

    def check(self, item: Item, d: Description, b: Binding | None, sender: x509.Certificate | None) -> Item:
        if item.data.get("module") != d.terms["module"]:
            raise ItemMismatch(f"expected a {d.terms['module']} payment, got {item.data.get('module')!r}")
        proof, request = item.data.get("proof"), d.terms.get("request")
        if not isinstance(proof, Mapping) or not isinstance(request, Mapping):
            raise ItemMismatch("the payment lacks its proof (or the description its request)")
        self._verifier(str(d.terms["module"])).verify(proof, request, *_amount(d))
        return Item("payment", {"module": d.terms["module"], "proof": dict(proof)})

    def accept(self, item: Item, d: Description) -> None:
        """The payee cashes in a checked payment (a second time changes nothing)."""
        payee = self.payees.get(str(d.terms["module"]))
        if payee is not None:
            payee.deposit(item.data["proof"], d.terms["request"])


class PaymentOffer(OfferBase):
    """A payment the payer will make once the payee's request is in the agreed description."""

    def __init__(self, payer: PayerModule, amount: int, currency: int) -> None:
        self.payer = payer
        self.amount, self.currency = amount, currency
        self.description = Description("payment", {"module": payer.name, "amount": amount, "currency": currency})
        self._lock = threading.Lock()
        self._made: dict[str, Item] = {}

    def hint(self) -> JsonDict:
        return self.payer.payer_hint()

    def accept_description(self, d: Description) -> None:
        from .managers import check_satisfies
        check_satisfies(self.description, Description(d.type, {k: v for k, v in d.terms.items() if k != "request"}))
        request = d.terms.get("request")
        if not isinstance(request, Mapping):
            raise ItemMismatch("the payee sent no payment request")
        self.payer.check_request(request, self.amount, self.currency)

    def make(self, d: Description, b: Binding | None) -> Item:
        """Pay once per exchange: asking again (a retry, a resend) gives the same proof."""
        key = b.xid if b is not None else repr(sorted(d.terms.items()))
        with self._lock:
            if key not in self._made:
                try:
                    proof = self.payer.pay(d.terms["request"], self.amount, self.currency)
                except PaymentFailed:
                    raise
                except Exception as e:                       # the module's own errors, named
                    raise PaymentFailed(f"the {self.payer.name} payment failed: {e}") from e
                self._made[key] = Item("payment", {"module": self.payer.name, "proof": proof})
            return self._made[key]
