"""Payment items: the transfer layer's payment-module interface, implemented by the payment manager.

Why an adapter: the exchange layer treats a payment as one *item* — the payee completes the
description with a *request*, the payer answers with a *proof*, anyone checks the proof against
the request (``client/transfer/payment.py``). The payment manager's modules speak in *flows* of
two to four messages. This module maps one onto the other, so that every payment in an exchange
goes through the payer's and the payee's :class:`~client.payment.manager.PaymentManager` — the same
negotiation, records, PIN path and bank client as a payment outside an exchange:

* **handshake modules** (the card purse): the payer speaks first (``hello``: card number, next
  debit counter, certificate); that message is the payer's *hint*, the payee's answer (the PSAM's
  signed DRQ1) is the *request*, the payer's next message (the card's DPF1) is the *proof*, and
  the payee's last step (into the PSAM's batch) is the *deposit*;
* **one-shot modules** (cheque, SET-like account payment, e-cash): the request carries the payee's
  terms; the payer's first message *is* the payment (cheque, dual-signed instruction, coins). These
  modules need the bank on line to be final, so the payee's ``verify`` already deposits (a bounced
  cheque, a refused authorisation or a double-spent coin makes the item fail its check, before the
  payee gives anything in return).

Anyone else (the third party, a judge) checks proofs with :func:`item_verifiers`, from public data
only: the purse scheme root, the CA roots, the mint's public keys. A verifier's exchange-enabling
properties (anonymity included) are those its module class declares: one declaration, read here.

Request and proof formats (JSON, inside the exchange's description and item):

=============  ======================================================  ===============================
module         request                                                 proof
=============  ======================================================  ===============================
card-purse     ``terms`` + ``certificate``/``record``/``signature``     ``certificate``/``record``/
               (the PSAM's DRQ1, as ``modules.purse.PurseProofs`` reads) ``signature`` (the card's DPF1)
cheque         ``terms``                                               ``kind``: cheque, ``cheque``
setpay         ``terms``                                               ``kind``: instruction, OI, ...
ecash          ``terms``                                               ``kind``: coins, ``coins``
=============  ======================================================  ===============================
"""
from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..transfer.binding import Binding
from ..transfer.errors import ItemMismatch, MalformedItem, PaymentFailed, UnknownItemType
from ..transfer.items import Description
from ..transfer.payment import PaymentManager as TransferPayments
from ..transfer.properties import Properties
from . import blind, formats
from .errors import PaymentError, PaymentRefused
from .manager import PayerSession, PaymentManager
from .model import Acceptance, Choice, ExchangeProperties, Status, Terms
from .modules.ecash import EcashModule
from .modules.mandate import MandateModule
from .modules.purse import PurseModule, PurseProofs
from .modules.setpay import SetPayModule
from .negotiation import Requirements
from .registry import ModuleClass
from .wire import CertCache, SignedJson, unb64, verify_digest

JsonDict = dict[str, Any]
MintKeys = Mapping[str, tuple[int, int, rsa.RSAPublicKey]]      # key id -> (currency, denomination, key)
NO_REQUIREMENTS = Requirements()


def transfer_properties(p: ExchangeProperties) -> Properties:
    """The exchange-enabling properties of a module's payments, as the transfer layer names them."""
    return Properties(verifiable=p.externally_verifiable, generatable=p.generatable, revocable=p.revocable,
                      anonymous=p.anonymous)


def _terms(request: Mapping[str, Any]) -> Terms:
    raw = request.get("terms") if isinstance(request, Mapping) else None
    if not isinstance(raw, Mapping):
        raise MalformedItem("the payment request carries no terms")
    try:
        return Terms.from_dict(dict(raw))
    except PaymentError as e:
        raise MalformedItem(f"the payment request's terms are malformed: {e}") from None


def _same_terms(terms: Terms, amount: int, currency: int) -> None:
    if (terms.amount, terms.currency) != (amount, currency):
        raise ItemMismatch(f"the payment request is for {terms.amount} (currency {terms.currency}), the exchange "
                           f"agreed {amount} (currency {currency})")


# ---- external verification (the third party, a judge, anyone) ---------------------------------------
class ItemVerifier:
    """Checks one module's proofs from public data only; the payee's own check is :class:`ItemPayee`.
    Its name and properties are the module class's own."""

    def __init__(self, module: type[ModuleClass], check: Callable[[Mapping[str, Any], Terms], None]) -> None:
        self.name: str = module.name
        self._properties: ExchangeProperties = module.properties
        self._check = check

    def properties(self) -> Properties:
        return transfer_properties(self._properties)

    def verify(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int) -> None:
        terms = _terms(request)
        _same_terms(terms, amount, currency)
        if not isinstance(proof, Mapping):
            raise MalformedItem("the payment proof must be a JSON object")
        try:
            self._check(proof, terms)
        except PaymentError as e:                 # the modules' words for a bad proof
            raise ItemMismatch(f"the {self.name} payment does not verify: {e}") from None


class PurseItemVerifier(ItemVerifier):
    """Card purse: the card-signed DPF1 answers exactly the PSAM-signed DRQ1 in the request (scheme root)."""

    def __init__(self, root: x509.Certificate) -> None:
        super().__init__(PurseModule, lambda proof, terms: None)
        self.proofs = PurseProofs(root)

    def verify(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int) -> None:
        _same_terms(_terms(request), amount, currency)
        try:
            self.proofs.check_proof(proof, request, amount, currency)
        except PaymentError as e:
            raise ItemMismatch(f"the {self.name} payment does not verify: {e}") from None

    def check_request(self, request: Mapping[str, Any], amount: int, currency: int) -> None:
        """The PSAM's signed request, checked before the card is asked to pay it."""
        try:
            drq = self.proofs.check_request(request)
        except PaymentError as e:
            raise ItemMismatch(f"the {self.name} payment request does not verify: {e}") from None
        if (drq.amount, drq.currency) != (amount, currency):
            raise ItemMismatch(f"the PSAM asks the card for {drq.amount} (currency {drq.currency}), the exchange "
                               f"agreed {amount}")


def purse_verifier(root: x509.Certificate) -> PurseItemVerifier:
    return PurseItemVerifier(root)


def _signer_key(certs: CertCache, der: bytes) -> ec.EllipticCurvePublicKey:
    return certs.check(der)[1]


def cheque_verifier(roots: list[x509.Certificate]) -> ItemVerifier:
    """A cheque signed by a certified drawer, made out to the request's payee, amount and order."""
    certs = CertCache(roots)

    def check(proof: Mapping[str, Any], t: Terms) -> None:
        cheque = SignedJson.from_json(proof.get("cheque"), "the cheque")
        b = cheque.body
        if (b.get("payee"), b.get("amount"), b.get("currency"), b.get("order_hash")) != (t.payee, t.amount,
                                                                                          t.currency, t.order_hash):
            raise ItemMismatch("the cheque is not made out for the requested payee, amount, currency and order")
        verify_digest(_signer_key(certs, cheque.certificate), cheque.digest, cheque.signature, "drawer's signature")
    return ItemVerifier(MandateModule, check)


def ecash_verifier(mint_keys: MintKeys) -> ItemVerifier:
    """Coins signed by the mint, in the request's currency, adding up to its amount (spent-ness is the bank's)."""
    def check(proof: Mapping[str, Any], t: Terms) -> None:
        coins = proof.get("coins")
        if not isinstance(coins, list) or not coins or len(coins) > 64:
            raise MalformedItem("the e-cash payment needs 1 to 64 coins")
        total = 0
        for c in coins:
            try:
                cur, denom, pub = mint_keys[str(c["key_id"])]
                serial, sig = str(c["serial"]), unb64(c["signature"], "coin signature", 1024)
            except (KeyError, TypeError):
                raise ItemMismatch("a coin names no key of this mint") from None
            if cur != t.currency:
                raise ItemMismatch("a coin is in another currency")
            blind.verify(pub, formats.coin_message(str(c["key_id"]), serial), sig)
            total += denom
        if total != t.amount:
            raise ItemMismatch(f"the coins add up to {total}, the request is for {t.amount}")
    return ItemVerifier(EcashModule, check)


def item_verifiers(*, purse_root: x509.Certificate | None = None, roots: list[x509.Certificate] | None = None,
                   mint_keys: MintKeys | None = None, bank_certificate: bytes | None = None,
                   ecash_deposit: Callable[[Terms, list[Any]], None] | None = None) -> dict[str, ItemVerifier]:
    """Verifiers for the modules whose public data is given (what a third party or judge configures).

    ``bank_certificate`` (DER, the bank's ``GET /info``) lets reserved cheques be checked (their
    reservation is the bank's signature); ``ecash_deposit`` is the third party's deposit of e-cash for
    the payee (``exchange_items.bank_deposit``), which makes its check of coins final."""
    from .exchange_items import ChequeExchangeVerifier, EcashExchangeVerifier, SetPayExchangeVerifier
    out: dict[str, ItemVerifier] = {}
    if purse_root is not None:
        out["card-purse"] = purse_verifier(purse_root)
    if roots:
        out["cheque"] = ChequeExchangeVerifier(roots, bank_certificate)
        out["setpay"] = SetPayExchangeVerifier(roots)
    if mint_keys:
        out["ecash"] = EcashExchangeVerifier(mint_keys, ecash_deposit)
    return out


# ---- the payer --------------------------------------------------------------------------------------
class ItemPayer:
    """The payer's side of a payment item (``transfer.payment.PayerModule``) through its payment manager.

    ``expect_payee`` and ``order_hash``, when given, are checked in the payee's request: the payer
    pays only the payee and order it agreed to (e.g. from the seller's signed offer).
    """

    def __init__(self, manager: PaymentManager, module: str, verifier: ItemVerifier, *,
                 expect_payee: str | None = None, order_hash: str | None = None,
                 require: Requirements = NO_REQUIREMENTS, valid_for: float = 3600.0) -> None:
        self.manager = manager
        self.name = module
        self.module = manager.module(module)
        self.verifier = verifier
        self.expect_payee, self.order_hash, self.require = expect_payee, order_hash, require
        self.valid_for = valid_for                  # how long a committed cheque may be released by the third party
        self._lock = threading.Lock()
        self.records: dict[str, Any] = {}          # payment id -> the payer's Record

    def properties(self) -> Properties:
        return transfer_properties(self.module.properties)

    def verify(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int) -> None:
        self.verifier.verify(proof, request, amount, currency)

    def payer_hint(self) -> JsonDict:
        if not self.module.properties.handshake:
            return {}
        instrument = self._instrument(None)
        placeholder = Terms("hint", 1, instrument.currency, "-", "0" * 64)
        try:                      # the flow's first move only reads the card (number, counter, certificate)
            step = self.module.payer_flow(placeholder, instrument, {}).step(None)
        except PaymentError as e:
            raise PaymentFailed(f"the {self.name} instrument cannot pay now: {e}") from None
        return dict(step.message or {})

    def _instrument(self, terms: Terms | None) -> Any:
        mine = [i for i in self.manager.instruments() if i.module == self.name
                and (terms is None or i.currency == terms.currency)]
        if not mine:
            raise PaymentFailed(f"no {self.name} instrument here can pay this (card absent, other currency?)")
        return mine[0]

    def check_request(self, request: Mapping[str, Any], amount: int, currency: int) -> None:
        terms = _terms(request)
        _same_terms(terms, amount, currency)
        if self.expect_payee is not None and terms.payee != self.expect_payee:
            raise ItemMismatch(f"the payment request names payee {terms.payee!r}, not the agreed {self.expect_payee!r}")
        if self.order_hash is not None and terms.order_hash != self.order_hash:
            raise ItemMismatch("the payment request is for another order than the one agreed")
        if isinstance(self.verifier, PurseItemVerifier):       # the PSAM's signed request, checked before paying
            self.verifier.check_request(request, amount, currency)

    def pay(self, request: Mapping[str, Any], amount: int, currency: int, params: Mapping[str, Any] | None = None
            ) -> JsonDict:
        self.check_request(request, amount, currency)
        terms = _terms(request)
        with self._lock:
            try:
                choice = self.manager.choose(terms, [Acceptance(self.name, (currency,))], self.require)
                if params:
                    choice = Choice(choice.module, choice.instrument, {**choice.params, **params})
                session: PayerSession = self.manager.pay(terms, choice)
                hello = session.start()["body"]
                if self.module.properties.handshake:
                    body = session.step({"kind": "challenge", "request": request["record"],
                                         "signature": request["signature"], "psam_certificate": request["certificate"]})
                    if body is None:
                        raise PaymentFailed("the card produced no debit proof")
                    proof = {"certificate": hello["card_certificate"], "record": body["proof"],
                             "signature": body["signature"]}
                else:
                    proof = dict(hello)
            except PaymentError as e:
                raise PaymentFailed(f"the {self.name} payment failed: {e}") from None
            self.records[terms.payment_id] = session.record
        return proof

    # ---- inside a fair exchange (exchange_items.py says which module does what) -----------------------------
    def pay_bound(self, request: Mapping[str, Any], amount: int, currency: int, b: Binding | None) -> JsonDict:
        """The payment made for the exchange ``b``: naming it where the bank then follows its third party."""
        from .exchange_items import clause_of
        clause = clause_of(b)
        if clause is None:
            return self.pay(request, amount, currency)
        if self.module.properties.revocable:      # the bank holds it until the third party decides
            return self.pay(request, amount, currency, {"exchange": clause})
        if self.module.properties.generatable:    # reserved at the bank and released at once
            return self._reserved_cheque(request, amount, currency, {**clause, "valid_until": 0, "returnable": False},
                                         release=True)
        return self.pay(request, amount, currency)

    def _reserved_cheque(self, request: Mapping[str, Any], amount: int, currency: int, clause: dict[str, Any],
                         release: bool) -> JsonDict:
        self.check_request(request, amount, currency)
        terms = _terms(request)
        module = self.module
        if not isinstance(module, MandateModule) or self.manager.ctx.account is None:
            raise PaymentFailed("a reserved cheque needs the cheque module and this party's account")
        try:
            cheque, reservation = module.reserve(terms, self.manager.ctx.account, clause)
            proof: JsonDict = {"kind": "reserved-cheque", "cheque": cheque.to_json(),
                               "reservation": reservation.to_json()}
            if release:
                proof["release"] = module.release(cheque).to_json()
        except PaymentError as e:
            raise PaymentFailed(f"the cheque could not be reserved: {e}") from None
        return proof

    def commit(self, request: Mapping[str, Any], amount: int, currency: int, b: Binding) -> tuple[JsonDict, JsonDict]:
        """A generatable payment's commitment: a cheque reserved at the bank that the third party may release
        in this drawer's place until ``valid_for`` seconds from now (returnable after, on its 'expired')."""
        from .exchange_items import clause_of
        clause = clause_of(b)
        if not self.module.properties.generatable or clause is None:
            from ..transfer.errors import NotGeneratable
            raise NotGeneratable(f"a {self.name} payment is not generatable by the third party")
        commitment = self._reserved_cheque(request, amount, currency, {
            **clause, "valid_until": int(time.time() + self.valid_for), "returnable": True}, release=False)
        return commitment, {}

    def release(self, commitment: Mapping[str, Any]) -> JsonDict:
        """The drawer's own release of its committed cheque (the generatable transfer, done by itself)."""
        module = self.module
        assert isinstance(module, MandateModule)
        try:
            cheque = SignedJson.from_json(commitment.get("cheque"), "the committed cheque")
            return {**dict(commitment), "release": module.release(cheque).to_json()}
        except PaymentError as e:
            raise PaymentFailed(f"the cheque could not be released: {e}") from None

    def revoke(self, request: Mapping[str, Any], decision: bytes, commitment: Mapping[str, Any] | None = None
               ) -> None:
        """After the third party's decision: a revoked SET payment's hold back to this payer, or an expired
        cheque commitment's reservation back to its drawer."""
        module = self.module
        try:
            if isinstance(module, SetPayModule):
                terms = _terms(request)
                module.revoke(terms.payee, terms.payment_id, decision)
            elif isinstance(module, MandateModule) and commitment is not None:
                module.unreserve(SignedJson.from_json(commitment.get("cheque"), "the committed cheque"), decision)
        except PaymentError as e:
            raise PaymentFailed(f"the bank did not give the payment back: {e}") from None


# ---- the payee --------------------------------------------------------------------------------------
class ItemPayee:
    """The payee's side of a payment item (``transfer.payment.PayeeModule``) through its payment manager.

    ``order_hash`` ties the payment to an order (a commerce deal passes its order's digest);
    without it the terms name the hash of the payment id, which ties it to nothing more.
    """

    def __init__(self, manager: PaymentManager, module: str, verifier: ItemVerifier, *, account: str,
                 payee_name: str = "", order_hash: str | None = None, device_lock: Any = None) -> None:
        self.manager = manager
        self.name = module
        self.module = manager.module(module)
        self.verifier = verifier
        self.account, self.payee_name, self.order_hash = account, payee_name, order_hash
        self._lock = threading.Lock()
        self.device_lock = device_lock or threading.Lock()   # this payee's steps one at a time (or a caller's)
        self._done: dict[str, JsonDict] = {}       # payment id -> the payee's last answer (deposited)

    def properties(self) -> Properties:
        return transfer_properties(self.module.properties)

    def request(self, hint: Mapping[str, Any], amount: int, currency: int, order_hash: str | None = None) -> JsonDict:
        try:
            terms = Terms.new(amount, currency, self.account, order_hash or self.order_hash or secrets.token_bytes(16),
                              self.payee_name)
            self.manager.expect(terms)
        except PaymentError as e:
            raise MalformedItem(f"no {self.name} payment request for these terms: {e}") from None
        request: JsonDict = {"terms": terms.as_dict()}
        if self.module.properties.handshake:
            reply = self._handle(terms, dict(hint))
            if reply is None or reply.get("kind") != "challenge":
                raise PaymentFailed(f"the {self.name} payee did not answer the payer's hello with a request")
            request.update({"certificate": reply["psam_certificate"], "record": reply["request"],
                            "signature": reply["signature"]})
        return request

    def _handle(self, terms: Terms, body: JsonDict) -> JsonDict | None:
        try:
            with self.device_lock:
                out = self.manager.handle({"payment_id": terms.payment_id, "module": self.name, "body": body})
        except PaymentError as e:
            raise ItemMismatch(f"the {self.name} payment was refused: {e}") from None
        return None if out is None else dict(out["body"])

    def verify(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int) -> None:
        """External check, and for online modules the bank's acceptance (so the payment is final)."""
        self.verify_bound(proof, request, amount, currency, None)

    def verify_bound(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int,
                     b: Binding | None) -> None:
        """As :meth:`verify`, for a payment made in the exchange ``b`` (which it must name where it matters)."""
        bound = getattr(self.verifier, "verify_bound", None)
        if bound is not None:
            bound(proof, request, amount, currency, b)
        else:
            self.verifier.verify(proof, request, amount, currency)
        if not self.module.properties.handshake:
            self._deposit_once(proof, request)

    def deposit(self, proof: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
        return self._deposit_once(proof, request)

    # ---- generatable payments: the third party's powers, forwarded to the module's verifier -------------------
    def __getattr__(self, name: str) -> Any:
        if name in ("check_commitment", "check_release", "generate", "replacement_proof", "deadline"):
            return getattr(self.verifier, name)
        raise AttributeError(name)

    def settle(self, proof: Mapping[str, Any], request: Mapping[str, Any], decision: bytes) -> None:
        """A revocable payment made final with the third party's 'resolved' decision (SET: captured)."""
        module = self.module
        if not isinstance(module, SetPayModule):
            return
        terms = _terms(request)
        try:
            record = self.manager.record(terms.payment_id, "payee")
            if record.status is not Status.CAPTURED:
                self.manager.store.put(module.settle(record, decision))
        except PaymentError as e:
            raise PaymentFailed(f"the bank did not settle the payment: {e}") from None

    def _deposit_once(self, proof: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
        terms = _terms(request)
        with self._lock:
            if terms.payment_id in self._done:
                return False
            self.manager.expect(terms)                 # a restarted payee: the terms come back from the request
            if self.module.properties.handshake:
                answer = self._purse_deposit(terms, proof, request)
            elif proof.get("kind") == "reserved-cheque":
                answer = self._cash(proof)
            else:
                answer = self._handle(terms, dict(proof))
            self._done[terms.payment_id] = answer or {}
        return True

    def _cash(self, proof: Mapping[str, Any]) -> JsonDict:
        """A reserved cheque into the payee's account, with its release (the drawer's or the third party's)."""
        module = self.module
        if not isinstance(module, MandateModule):
            raise PaymentFailed("a reserved cheque is cashed by the cheque module")
        try:
            cheque = SignedJson.from_json(proof.get("cheque"), "the cheque")
            release = SignedJson.from_json(proof["release"], "the release") if proof.get("release") else None
            statement = unb64(proof["release_statement"], "release statement", 65536) \
                if proof.get("release_statement") else None
            return dict(module.cash(cheque, release, statement).body["result"])
        except PaymentRefused as e:
            if e.code == "cheque_paid":         # cashed before (a retry, a restarted payee): it is in the account
                return {"state": "paid", "before": True}
            raise ItemMismatch(f"the bank did not pay the reserved cheque: {e}") from None
        except PaymentError as e:
            raise PaymentFailed(str(e)) from None

    def _purse_deposit(self, terms: Terms, proof: Mapping[str, Any], request: Mapping[str, Any]) -> JsonDict | None:
        body = {"kind": "proof", "proof": proof.get("record"), "signature": proof.get("signature")}
        try:
            return self._handle(terms, body)
        except ItemMismatch:
            # no flow waiting for this proof (the payee restarted, or T handed the proof over): the module
            # takes it at the PSAM directly, or clears it alone when the PSAM evicted its request (issue 12,
            # item 10: the card has paid either way; the acquirer pays each card counter once)
            module = self.module
            if not isinstance(module, PurseModule) or self.manager.ctx.psam is None:
                raise
        from cryptography.hazmat.primitives.serialization import Encoding

        from semper.hardware.purse_records import Signed
        try:
            card_cert = x509.load_der_x509_certificate(unb64(proof.get("certificate"), "card certificate", 4096))
            signed = Signed(unb64(proof.get("record"), "proof", 128), unb64(proof.get("signature"), "signature", 80))
            drq = Signed(unb64(request.get("record"), "request", 128), unb64(request.get("signature"), "signature", 80))
            psam_cert = unb64(request.get("certificate"), "PSAM certificate", 4096)
            with self.device_lock:
                return module.take_proof(psam_cert, drq, card_cert.public_bytes(Encoding.DER), signed)
        except PaymentRefused as e:
            if e.code != "bad_proof":
                raise PaymentFailed(str(e)) from None
            raise ItemMismatch(str(e)) from None
        except PaymentError as e:
            raise PaymentFailed(str(e)) from None
        except ValueError:
            raise ItemMismatch("the card's certificate in the proof is not X.509") from None


class ItemPayments(TransferPayments):
    """The transfer layer's payment manager whose payees bind each request to the description's order.

    A description may carry ``order_hash`` (hex SHA-256 of the order the payment is for); it is part
    of the exchange id, and the payee's terms name it, so the payment cannot be claimed for another order.
    """

    def complete(self, d: Description, hint: Mapping[str, Any]) -> Description:
        name = str(d.terms["module"])
        payee = self.payees.get(name)
        if not isinstance(payee, ItemPayee):
            if payee is None:
                raise UnknownItemType(f"this party cannot receive {name!r} payments (no payee module)")
            return super().complete(d, hint)
        order = d.terms.get("order_hash")
        if order is not None and (not isinstance(order, str) or len(order) != 64):
            raise MalformedItem("a payment description's order_hash is 64 hex digits")
        return d.with_terms(request=payee.request(hint, int(d.terms["amount"]), int(d.terms["currency"]), order))


__all__ = ["ItemPayee", "ItemPayer", "ItemPayments", "ItemVerifier", "PurseItemVerifier",
           "cheque_verifier", "ecash_verifier", "item_verifiers", "purse_verifier",
           "transfer_properties"]
