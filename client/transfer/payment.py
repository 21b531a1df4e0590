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

Inside a fair exchange a payment names it (the binding), so that the third party's decisions count
at the bank; modules that need that offer the *bound* variants, found by name (a module without them
works as before):

* ``verify_bound(proof, request, amount, currency, binding)`` and the payer's ``pay_bound(...)``;
* generatable payments: ``commit``/``release`` (payer), ``check_commitment``, ``check_release``,
  ``generate``, ``replacement_proof``, ``deadline`` (verifiers);
* revocable payments: the payee's ``settle(proof, request, decision)`` after the third party resolved,
  the payer's ``revoke(request, decision)`` after it revoked.

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
        for name, payee in self.payees.items():       # the payee checks its own payments: online ones deposit
            self.verifiers[name] = payee                # in its check, before anything is given in return

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
        verifier = self._verifier(str(d.terms["module"]))
        bound = getattr(verifier, "verify_bound", None)
        if bound is not None:
            bound(proof, request, *_amount(d), b)
        else:
            verifier.verify(proof, request, *_amount(d))
        return Item("payment", {"module": d.terms["module"], "proof": dict(proof)})

    def accept(self, item: Item, d: Description) -> None:
        """The payee cashes in a checked payment (a second time changes nothing)."""
        payee = self.payees.get(str(d.terms["module"]))
        if payee is not None:
            payee.deposit(item.data["proof"], d.terms["request"])

    # ---- generatable payments (the originator pays; the third party may release in its place) ---------------
    def _power(self, d: Description, name: str) -> Any:
        fn = getattr(self._verifier(str(d.terms["module"])), name, None)
        if fn is None:
            from .errors import NotGeneratable
            raise NotGeneratable(f"{d.terms['module']} payments are not generatable by the third party")
        return fn

    def _request(self, d: Description) -> Mapping[str, Any]:
        request = d.terms.get("request")
        if not isinstance(request, Mapping):
            raise ItemMismatch("the payment description carries no request of the payee")
        return request

    def check_commitment(self, commitment: Mapping[str, Any], attachments: Mapping[str, Any], d: Description,
                         b: Binding) -> None:
        self._power(d, "check_commitment")(commitment, self._request(d), *_amount(d), b)

    def check_release(self, item: Item, commitment: Mapping[str, Any], attachments: Mapping[str, Any],
                      d: Description, b: Binding) -> Item:
        proof = item.data.get("proof")
        if item.data.get("module") != d.terms["module"] or not isinstance(proof, Mapping):
            raise ItemMismatch("the released payment is not the committed one")
        self._power(d, "check_release")(proof, commitment, self._request(d), *_amount(d), b)
        payee = self.payees.get(str(d.terms["module"]))
        if payee is not None:                                     # cashed at once: it is final only at the bank
            payee.deposit(proof, self._request(d))
        return Item("payment", {"module": d.terms["module"], "proof": dict(proof)})

    def generate(self, commitment: Mapping[str, Any], attachments: Mapping[str, Any], d: Description,
                 b: Binding, powers: Any) -> JsonDict:
        return dict(self._power(d, "generate")(commitment, self._request(d), *_amount(d), b, powers.sign))

    def check_replacement(self, replacement: Mapping[str, Any], commitment: Mapping[str, Any],
                          attachments: Mapping[str, Any], d: Description, b: Binding) -> Item:
        proof = self._power(d, "replacement_proof")(replacement, commitment, self._request(d), *_amount(d), b)
        item = Item("payment", {"module": d.terms["module"], "proof": dict(proof)})
        payee = self.payees.get(str(d.terms["module"]))
        if payee is not None:
            payee.deposit(proof, self._request(d))
        return item

    def deadline(self, commitment: Mapping[str, Any], d: Description) -> int | None:
        fn = getattr(self._verifier(str(d.terms["module"])), "deadline", None)
        return None if fn is None else fn(commitment)

    # ---- revocable payments: final, or void, by the third party's decision -----------------------------------
    def settles(self, d: Description) -> bool:
        """Whether a received payment of this kind is final only with the third party's resolution."""
        payee = self.payees.get(str(d.terms["module"]))
        return payee is not None and hasattr(payee, "settle") and self.properties(d).revocable

    def settle(self, item: Item, d: Description, decision: bytes) -> None:
        payee = self.payees.get(str(d.terms["module"]))
        settle = getattr(payee, "settle", None)
        if settle is not None:
            settle(item.data["proof"], self._request(d), decision)


class PaymentOffer(OfferBase):
    """A payment the payer will make once the payee's request is in the agreed description."""

    def __init__(self, payer: PayerModule, amount: int, currency: int) -> None:
        self.payer = payer
        self.amount, self.currency = amount, currency
        self.description = Description("payment", {"module": payer.name, "amount": amount, "currency": currency})
        self._lock = threading.Lock()
        self._made: dict[str, Item] = {}
        self._commitments: dict[str, tuple[JsonDict, JsonDict]] = {}

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
        bound = getattr(self.payer, "pay_bound", None)
        with self._lock:
            if key not in self._made:
                try:
                    proof = bound(d.terms["request"], self.amount, self.currency, b) if bound is not None else \
                        self.payer.pay(d.terms["request"], self.amount, self.currency)
                except PaymentFailed:
                    raise
                except Exception as e:                       # the module's own errors, named
                    raise PaymentFailed(f"the {self.payer.name} payment failed: {e}") from e
                self._made[key] = Item("payment", {"module": self.payer.name, "proof": proof})
            return self._made[key]

    def commit(self, d: Description, b: Binding, escrow: Any) -> tuple[JsonDict, JsonDict]:
        """A generatable payment's commitment (a cheque reserved for the exchange), once per exchange."""
        commit = getattr(self.payer, "commit", None)
        if commit is None:
            return super().commit(d, b, escrow)
        with self._lock:
            if b.xid not in self._commitments:
                try:
                    self._commitments[b.xid] = commit(d.terms["request"], self.amount, self.currency, b)
                except PaymentFailed:
                    raise
                except Exception as e:
                    raise PaymentFailed(f"the {self.payer.name} payment could not be committed: {e}") from e
            return self._commitments[b.xid]

    def release(self, d: Description, b: Binding) -> Item:
        release = getattr(self.payer, "release", None)
        with self._lock:
            committed = self._commitments.get(b.xid)
        if release is None or committed is None:
            return super().release(d, b)
        return Item("payment", {"module": self.payer.name, "proof": release(committed[0])})

    def revoked(self, d: Description, b: Binding, decision: bytes) -> None:
        """The third party revoked the exchange (a revocable payment's hold goes back to this payer), or found
        that a commitment expired (a reserved cheque goes back to its drawer)."""
        revoke = getattr(self.payer, "revoke", None)
        with self._lock:
            committed = self._commitments.get(b.xid)
        if revoke is not None and isinstance(d.terms.get("request"), Mapping):
            revoke(d.terms["request"], decision, committed[0] if committed else None)
