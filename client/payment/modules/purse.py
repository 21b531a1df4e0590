"""Card purse module (Chipper / GeldKarte): cash-like, offline at the seller, checked by the acquirer.

Purchase (four messages, no bank, no PIN; the amount is confirmed in the TINGUIN above this layer):

    payer: hello (card number, next debit counter, card certificate)
    payee: challenge = the PSAM's signed DRQ1 for exactly these terms
    payer: proof = the card's signed DPF1 (the card checked the PSAM's certificate and signature)
    payee: receipt (PSAM batch and index: the PSAM checked the card's certificate and signature)

Load (``load``): online with the issuer and the card PIN; clearing (``clear``): the seller sends
the PSAM's closed batch to the acquirer, which settles it proof by proof (the good ones paid, the
others held as evidence with their reason). Both are safe to repeat after any fault: a load whose
answer was lost is settled by the card's counters and request sequence numbers (see
``client/servers/bank_purse.py``), a debit whose answer was lost is read back from the card's log,
a batch settled before is refused by the acquirer and taken as done. ``clear_proof`` clears one
proof on its own with the PSAM-signed request it answers, for a proof the PSAM no longer takes
(its request was evicted), e.g. the one the third party kept for the seller.

This is the card purse's one implementation on the client side. The exchange layer's payment items
(``payment/item.py``) drive these flows through the payment manager and check proofs with
:class:`PurseProofs` (what the third party and the judges run too); ``semper card load/pay``
(``payment/card_purse.py``) drives the same flows with the scheme's local issuer key in place of
the bank. The bank's side is ``servers/bank_purse.py``.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from msgspec import Meta

from semper.hardware import errors as hw
from semper.hardware.purse_records import DEBIT_PROOF, DEBIT_REQUEST, DebitRecord, LoadConfirmation, Signed

from ...support.money import format_amount
from ...support.scheme import ROLE_PSAM, ROLE_PURSE_CARD
from ..errors import InstrumentError, InsufficientFunds, PaymentError, PaymentRefused, ProtocolError
from ..model import MAX_AMOUNT, Acceptance, ExchangeProperties, Instrument, Model, Status, Terms
from ..module import BaseModule, Message, PartyContext, Step, receive
from ..psam_desk import Desk, PsamPool, TerminalBusy, as_pool
from ..wire import b64, unb64

if TYPE_CHECKING:
    from ..bank_client import BankClient

CARD_CHECKS_KEPT = 4096         # purse card certificates a seller remembers as checked (``_card_serial``)


def _card_error(e: hw.HardwareError, what: str) -> PaymentError:
    """Card failures as payment errors, in words (never a status word)."""
    if isinstance(e, hw.InsufficientFundsError):
        return InsufficientFunds(f"the purse balance is too low to {what}")
    if isinstance(e, hw.MaxBalanceError):
        return InstrumentError(f"the purse would exceed its maximum balance; {what} a smaller amount")
    if isinstance(e, (hw.WrongPinError, hw.PinBlockedError)):
        return InstrumentError(str(e))
    if isinstance(e, hw.PinRequiredError):
        return InstrumentError(f"the card wants its PIN verified before it will {what}")
    if isinstance(e, (hw.ReaderError, hw.TransportError)):
        return InstrumentError(f"the card went away while trying to {what}; insert it and try again")
    if isinstance(e, hw.NotAuthenticError):
        return NotAuthenticated(f"the card refused to {what}: it did not accept the other side's signature ({e})")
    return InstrumentError(f"the card refused to {what}: {e}")


class NoSchemeRoot(PaymentError):
    """The payee has no purse scheme root (``PartyContext.purse_root``), so it cannot check a card's hello
    and refuses it before its PSAM is asked. The seller's misconfiguration, not the card's fault: the
    shop's folder holds the root (``purse-root.pem``, written by ``semper shop init --purse-root``)."""

    code = "purse_not_configured"


class NotAuthenticated(InstrumentError):
    """The card did not accept a signature on what it was sent: a load command from an issuer that is not
    its own, a debit request from a PSAM of another scheme."""


class Issuer(Protocol):
    """Who approves a load: the bank's issuer on line (:class:`BankIssuer`), or the scheme's local issuer
    key for ``semper card load`` (``payment/card_purse.py``)."""

    def approve(self, request: Signed, card_certificate: bytes) -> Signed:
        """The issuer-signed load command (LCM1) for exactly the card's signed request (LRQ2)."""
        ...

    def confirmed(self, confirmation: Signed, card_certificate: bytes) -> None:
        """The card's signed confirmation (LCF1), for the issuer's records; failures are not the payer's."""
        ...


class BankIssuer:
    """The bank's issuer: debits the holder's account into the float and signs the command."""

    def __init__(self, bank: BankClient, account: str) -> None:
        self.bank, self.account = bank, account

    def approve(self, request: Signed, card_certificate: bytes) -> Signed:
        answer = self.bank.call("issuer/load", {"account": self.account, "request": b64(request.record),
                                                "signature": b64(request.signature),
                                                "card_certificate": b64(card_certificate)})
        result = answer["result"]
        return Signed(unb64(result["command"], "load command", 256), unb64(result["signature"], "signature", 80))

    def confirmed(self, confirmation: Signed, card_certificate: bytes) -> None:
        try:
            self.bank.call("issuer/confirm", {"confirmation": b64(confirmation.record),
                                              "signature": b64(confirmation.signature),
                                              "card_certificate": b64(card_certificate)})
        except (PaymentError, hw.HardwareError):
            pass          # not needed for correctness: the next load request proves the counter moved
            #               (the holder may also decline to sign it: no PIN entered, no harm)


class PurseModule(BaseModule):
    name = "card-purse"
    model = Model.CASH_LIKE
    properties = ExchangeProperties(externally_verifiable=True, revocable=False, online=False, handshake=True,
                                      starts_early=True)
    _psam_currency: int | None = None

    def __init__(self, context: PartyContext) -> None:
        super().__init__(context)
        self._pool: PsamPool | None = None

    @property
    def psams(self) -> PsamPool | None:
        """The seller's PSAMs, each behind its one owner (``payment/psam_desk.py``): the context's PSAM
        session under a desk of this process, or the desks (or clients of desks in PSAM processes) it gives."""
        if self._pool is None and self.ctx.psam is not None:
            self._pool = as_pool(self.ctx.psam)
        return self._pool

    def desk(self, psam: str | None = None) -> Desk:
        pool = self.psams
        if pool is None:
            raise InstrumentError("no PSAM is present to accept purse payments")
        return pool.desk(psam)

    def admit(self, payment_id: str, body: dict[str, Any], psam: str | None = None) -> None:
        if body.get("kind") == "hello" and self.ctx.psam is not None:
            self.desk(psam).admit(payment_id)

    def unadmit(self, payment_id: str, body: dict[str, Any]) -> None:
        """The room :meth:`admit` took for a hello refused before this module's step ran, given back (at
        whichever PSAM holds it; a payment with a debit begun keeps its room)."""
        if body.get("kind") == "hello" and self.psams is not None:
            for desk in self.psams.desks.values():
                desk.unadmit(payment_id)

    # ---- instruments -------------------------------------------------------------------------
    def instruments(self) -> list[Instrument]:
        purse = self.ctx.purse
        if purse is None:
            return []
        try:
            purse.select()
            info = purse.info()
        except hw.HardwareError:
            return []
        return [Instrument(self.name, info.card_id, info.currency, f"purse card {info.card_id}", info.balance)]

    def acceptance(self) -> Acceptance | None:
        if self.ctx.psam is None:
            return None
        if self._psam_currency is None:            # written at personalisation: asked once, not per payment
            try:
                self._psam_currency = self.desk().info().currency
            except (hw.HardwareError, PaymentError, OSError):
                return None
        return Acceptance(self.name, (self._psam_currency,))

    def payer_flow(self, terms: Terms, instrument: Instrument, params: dict[str, Any]) -> PayerFlow:
        if self.ctx.purse is None:
            raise InstrumentError("no purse card is present")
        return PayerFlow(self, terms)

    def payee_flow(self, terms: Terms, psam: str | None = None) -> PayeeFlow:
        """``psam``: which of the seller's PSAMs takes this payment (the one its offer named; default the first)."""
        if self.ctx.psam is None:
            raise InstrumentError("no PSAM is present to accept purse payments")
        return PayeeFlow(self, terms, psam)

    def resume_payee_flow(self, terms: Terms, state: Mapping[str, Any]) -> PayeeFlow:
        """The payee's flow where :meth:`PayeeFlow.snapshot` left it (in this or another process)."""
        flow = self.payee_flow(terms, state.get("psam"))
        flow.restore(state)
        return flow

    # ---- load (payer, online, PIN) -----------------------------------------------------------
    def load(self, amount: int) -> dict[str, Any]:
        """Load ``amount`` from the holder's account; returns the card's confirmation fields."""
        if self.ctx.bank is None or self.ctx.account is None:
            raise InstrumentError("loading needs the card, the bank and the holder's account")
        conf, _signed = self.load_from(BankIssuer(self.ctx.bank, self.ctx.account), amount)
        return {"amount": conf.amount, "balance": conf.balance, "counter": conf.load_counter}

    def load_from(self, issuer: Issuer, amount: int) -> tuple[LoadConfirmation, Signed]:
        """The card's side of a load, whoever the issuer is: the PIN through the party's PIN entry, the
        card's signed request (LRQ2), the issuer's signed command for exactly that request (LCM1), the
        card's signed confirmation (LCF1), which the issuer is told of."""
        purse = self.ctx.purse
        if purse is None:
            raise InstrumentError("loading needs the card")
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_AMOUNT:
            raise PaymentError(f"the amount to load must be 1 to {MAX_AMOUNT} minor units")
        try:
            purse.select()
            self._enter_pin("load the purse", purse)
            info = purse.info()
            request, signed = purse.initialize_load(amount, info.currency)
            cert = purse.certificate()
        except hw.HardwareError as e:
            raise _card_error(e, "load") from None
        command = issuer.approve(signed, cert)
        if command.record != request.command():
            raise ProtocolError("the issuer approved another load than the card asked for")
        try:
            purse.select()
            conf, signed_conf = purse.load(command)
        except hw.HardwareError as e:
            if isinstance(e, (hw.ReaderError, hw.TransportError)):
                raise InstrumentError("the card went away during the load; run the load again: the issuer sees "
                                      "from the card's counters whether it applied") from None
            raise _card_error(e, "load") from None
        issuer.confirmed(signed_conf, cert)
        return conf, signed_conf

    # ---- clearing (payee, online) ------------------------------------------------------------
    def clear(self) -> dict[str, Any] | None:
        """Send each PSAM's last closed batch (again, if unsure) and its open one to the acquirer. With one
        PSAM, the acquirer's answer for its open batch (None: nothing to clear); with several, ``{"psams":
        {id: answer}}``."""
        pool = self.psams
        if pool is None or self.ctx.bank is None:
            raise InstrumentError("clearing needs the PSAM and the bank")
        answers = {psam_id: self._clear_one(pool.desk(psam_id)) for psam_id in pool.ids}
        return next(iter(answers.values())) if len(answers) == 1 else {"psams": answers}

    def _clear_one(self, desk: Desk) -> dict[str, Any] | None:
        try:
            info = desk.info()
        except hw.HardwareError as e:
            raise _card_error(e, "read the PSAM") from None
        if info.batch_number > 1:
            self._send_batch(desk, info.batch_number - 1, resend=True)
        if info.batch_count == 0:
            return None
        try:
            header, _ = desk.close_batch()
        except hw.HardwareError as e:
            raise _card_error(e, "close the batch") from None
        return self._send_batch(desk, header.batch_number, resend=False)

    def _send_batch(self, desk: Desk, number: int, resend: bool) -> dict[str, Any] | None:
        bank = self.ctx.bank
        assert bank is not None
        try:
            header, signed = desk.batch_header(number)
            entries = desk.batch_entries(number)
            certificate = desk.certificate()
        except hw.NotFoundError:
            return None
        except hw.HardwareError as e:
            raise _card_error(e, "read the batch") from None
        params = clearing_request(certificate, signed, entries)
        try:
            key = f"batch-{header.psam_id.hex()}-{number}"
            return dict(bank.call("acquirer/clear", params, idempotency_key=key)["result"])
        except PaymentRefused as e:
            if resend and e.code == "batch_seen":
                return None
            if resend:          # refused as a whole (the batch is not what the PSAM signed, or the PSAM is
                #                 not this seller's): closing another batch would delete it from the PSAM
                raise PaymentRefused(f"the acquirer refused PSAM batch {number} as a whole ({e}); it stays on the "
                                     "PSAM and the open batch stays open until it is cleared", e.code,
                                     e.status) from None
            raise

    def clear_proof(self, psam_certificate: bytes, request: Signed, card_certificate: bytes, proof: Signed
                    ) -> dict[str, Any] | None:
        """Clear one card-signed DPF1 on its own, with the PSAM-signed DRQ1 it answers; None when the
        acquirer has cleared that debit before (in a batch or alone: it pays each card counter once)."""
        bank = self.ctx.bank
        if bank is None:
            raise InstrumentError("clearing a proof needs the bank")
        params = {"psam_certificate": b64(psam_certificate), "request": b64(request.record),
                  "request_signature": b64(request.signature), "card_certificate": b64(card_certificate),
                  "proof": b64(proof.record), "proof_signature": b64(proof.signature)}
        d = DebitRecord.decode(proof.record, DEBIT_PROOF)
        try:
            return dict(bank.call("acquirer/clear_proof", params,
                                  idempotency_key=f"proof-{d.card_number.hex()}-{d.debit_counter}")["result"])
        except PaymentRefused as e:
            if e.code == "proof_seen":
                return None
            raise

    def _desk_for(self, request: Signed) -> Desk | None:
        """The desk of the PSAM that signed ``request`` (None: not one of this seller's)."""
        pool = self.psams
        if pool is None:
            return None
        try:
            psam_id = DebitRecord.decode(request.record, DEBIT_REQUEST).psam_id.hex().upper()
        except hw.TransportError:
            return None
        return pool.desks.get(psam_id)

    def settle_stale_proof(self, psam_certificate: bytes, request: Signed, card_certificate: bytes, proof: Signed
                           ) -> dict[str, Any] | None:
        """For a proof the PSAM refused as stale: None when it sits in the PSAM's batch already (taken
        before); otherwise its request was evicted, and the proof is cleared alone at the acquirer."""
        desk = self._desk_for(request)
        if desk is not None:
            try:
                found = desk.find_proof(proof.record)
            except hw.HardwareError as e:
                raise _card_error(e, "read the PSAM's batch") from None
            if found is not None:
                return None
        return self.clear_proof(psam_certificate, request, card_certificate, proof)

    def take_proof(self, psam_certificate: bytes, request: Signed, card_certificate: bytes, proof: Signed
                   ) -> dict[str, Any] | None:
        """A card's proof that no payee flow waits for (the payee restarted, or the third party handed it
        over): into the PSAM's batch while the PSAM holds the request it answers; otherwise settled as a
        stale proof (:meth:`settle_stale_proof`). Returns the receipt, the acquirer's answer for a proof
        cleared alone, or None when the PSAM's batch holds it already. A proof the PSAM refuses is a
        PaymentRefused with code ``bad_proof``; any other failure leaves the proof to be taken again."""
        desk = self._desk_for(request)
        if desk is None:
            raise InstrumentError("no PSAM of this seller signed the request this proof answers")
        try:
            batch, index, _ = desk.complete_debit(None, card_certificate, proof)
        except hw.ReplayError:
            try:
                cleared = self.settle_stale_proof(psam_certificate, request, card_certificate, proof)
            except PaymentError as e:
                raise PaymentError(f"the PSAM no longer holds this payment's request and the acquirer did not "
                                   f"clear the proof alone ({e}); try again (the proof is kept)") from None
            return None if cleared is None else {"kind": "cleared", **cleared}
        except hw.HardwareError as e:
            raise PaymentRefused(f"the PSAM did not take the debit proof ({_card_error(e, 'complete')})",
                                 "bad_proof") from None
        return {"kind": "receipt", "batch": batch, "index": index}


# ---- the four messages of a purse payment (payer: hello, proof; payee: challenge, receipt) --------------
class Hello(Message, frozen=True):
    """Payer -> payee: which card pays, its next debit counter, its currency and certificate."""

    kind: Literal["hello"]
    card: Annotated[str, Meta(pattern="^[0-9A-Fa-f]{16}$")]         # the 8-byte card number, hex
    counter: Annotated[int, Meta(gt=0, lt=2**32)]
    currency: int
    card_certificate: Annotated[bytes, Meta(max_length=4096)]


class Challenge(Message, frozen=True):
    """Payee -> payer: the PSAM's signed debit request (DRQ1) for the card, and the PSAM's certificate."""

    kind: Literal["challenge"]
    request: Annotated[bytes, Meta(max_length=128)]
    signature: Annotated[bytes, Meta(max_length=80)]
    psam_certificate: Annotated[bytes, Meta(max_length=4096)]


class Proof(Message, frozen=True):
    """Payer -> payee: the card's signed debit proof (DPF1)."""

    kind: Literal["proof"]
    proof: Annotated[bytes, Meta(max_length=128)]
    signature: Annotated[bytes, Meta(max_length=80)]


class Receipt(Message, frozen=True):
    """Payee -> payer: where the PSAM filed the proof (batch, index; batch 0: cleared alone)."""

    kind: Literal["receipt"]
    batch: int
    index: int


class PayerFlow:
    def __init__(self, module: PurseModule, terms: Terms) -> None:
        self.m = module
        self.terms = terms
        self.state = "start"
        self.request: DebitRecord | None = None
        self.card_cert = b""

    def step(self, incoming: dict[str, Any] | None) -> Step:
        purse = self.m.ctx.purse
        assert purse is not None
        if self.state == "start":
            try:
                purse.select()
                info = purse.info()
                cert = purse.certificate()
            except hw.HardwareError as e:
                raise _card_error(e, "pay") from None
            if info.currency != self.terms.currency:
                raise InstrumentError(f"the purse holds currency {info.currency}, the payment is in "
                                      f"{self.terms.currency}")
            if info.balance < self.terms.amount:
                held = format_amount(info.balance, info.currency)
                needed = format_amount(self.terms.amount, info.currency)
                raise InsufficientFunds(f"the purse balance is too low: it holds {held}, the payment needs {needed}")
            self.state = "hello"
            self.card_cert = cert
            return Step({"kind": "hello", "card": info.card_id, "counter": info.debit_counter + 1,
                         "currency": info.currency, "card_certificate": b64(cert)})
        if self.state == "hello":
            msg = receive(incoming, Challenge)
            req = Signed(msg.request, msg.signature)
            try:
                r = DebitRecord.decode(req.record, DEBIT_REQUEST)
            except hw.TransportError:
                raise ProtocolError("the seller's debit request is not a DRQ1 record") from None
            if (r.amount, r.currency) != (self.terms.amount, self.terms.currency):
                raise ProtocolError(f"the seller asks the card for {r.amount} (currency {r.currency}), the terms say "
                                    f"{self.terms.amount}; refused")
            self.request = r
            try:
                purse.select()
                _, proof = purse.debit(msg.psam_certificate, req)
            except (hw.ReaderError, hw.TransportError):
                found = recover_debit(purse, r)
                if found is None:
                    raise InstrumentError("the card went away before it paid; nothing was paid") from None
                proof = found
            except hw.HardwareError as e:
                raise _card_error(e, "pay") from None
            self.state = "proof"
            # the card's certificate too: a judge checks the proof with it, and the card may be gone by then
            ev = {"proof": b64(proof.record), "proof_signature": b64(proof.signature),
                  "card_certificate": b64(self.card_cert)}
            return Step({"kind": "proof", "proof": ev["proof"], "signature": ev["proof_signature"]},
                        status=Status.PAID, evidence=ev)
        if self.state == "proof":
            receipt = receive(incoming, Receipt)
            self.state = "done"
            return Step(None, done=True, status=Status.PAID, evidence={"batch": receipt.batch, "index": receipt.index})
        raise ProtocolError("the purse payment is finished")


def clearing_request(psam_certificate: bytes, signed_header: Signed, entries: Any) -> dict[str, Any]:
    """The acquirer's ``clear`` parameters for a closed batch: each card certificate sent once."""
    certs: list[bytes] = []
    index: dict[bytes, int] = {}
    rows = []
    for e in entries:
        if e.card_certificate not in index:
            index[e.card_certificate] = len(certs)
            certs.append(e.card_certificate)
        rows.append([index[e.card_certificate], b64(e.proof.record), b64(e.proof.signature)])
    return {"psam_certificate": b64(psam_certificate), "header": b64(signed_header.record),
            "header_signature": b64(signed_header.signature), "certificates": [b64(c) for c in certs],
            "entries": rows}


def recover_debit(purse: Any, request: DebitRecord) -> Signed | None:
    """The card's proof for ``request`` from its log (the debit happened, its answer was lost)."""
    try:
        purse.select()
        found = purse.find_debit_proof(request)
    except hw.HardwareError:
        return None
    return found[1] if found is not None else None


#: past the payment manager's MAX_ROUNDS, a card's proof of a payment is taken to the PSAM at most once in this
#: many seconds (PayeeFlow.proves_payment). Why: the proof must still be taken after any number of refusals
#: (the card has paid), but each try of a proof whose request the PSAM evicted reads the PSAM's batches and
#: may call the acquirer: one debit's proof sent in a loop kept the PSAM busy without end (review of
#: 2026-12-07, finding 2). An honest client that retries after this long is answered.
LATE_PROOF_EVERY_S = 10.0
#: how far behind the last try's time a worker's clock may be and still count as "within LATE_PROOF_EVERY_S":
#: workers whose clocks differ by more than the gate let every copy through otherwise, alternately (review of
#: 2026-12-07); a clock further back than this is taken as reset, and the proof tried
MAX_CLOCK_SKEW_S = 300.0
wall_clock = time.time          # seconds; the tries' times go into the flow's snapshot, read by any worker


class PayeeFlow:
    """The seller's side: hello -> the PSAM's challenge, proof -> the PSAM's receipt.

    Its state is small and plain (:meth:`snapshot`), so the payment manager can keep it in the
    seller's database between the messages and any process of the seller can take the next one
    (:meth:`PurseModule.resume_payee_flow`). Every PSAM step goes through the PSAM's owner
    (``payment/psam_desk.py``), which keeps the payment's room and answers a repeated begin with
    the same request, so a step run again after a crash gives the same answer."""

    def __init__(self, module: PurseModule, terms: Terms, psam: str | None = None) -> None:
        self.m = module
        self.terms = terms
        self.psam = psam
        self.state = "start"
        self.card_cert = b""
        self.request: Signed | None = None
        self.late_try = 0.0                    # when a proof was last let past MAX_ROUNDS (wall_clock)

    def snapshot(self) -> dict[str, Any]:
        if self.state == "done":
            # a finished flow is never resumed (PaymentManager refuses its messages before it would be), and the
            # record keeps the card's certificate and proof: the session's row, written with the payment's last
            # step, need not carry them again (0.9 KB of a purchase's writes)
            return {"state": self.state, "psam": self.psam}
        req = self.request
        out: dict[str, Any] = {"state": self.state, "psam": self.psam, "card_certificate": b64(self.card_cert),
                               "request": None if req is None else [b64(req.record), b64(req.signature)]}
        if self.late_try:
            out["late_try"] = self.late_try
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        self.state = str(state.get("state", "start"))
        self.card_cert = unb64(state.get("card_certificate") or "", "card certificate", 4096)
        req = state.get("request")
        self.request = None if not req else Signed(unb64(req[0], "request", 256), unb64(req[1], "signature", 128))
        late = state.get("late_try", 0.0)
        self.late_try = float(late) if isinstance(late, (int, float)) else 0.0

    def _begin(self, desk: Desk, incoming: dict[str, Any] | None) -> Signed:
        """The PSAM's request for the card's hello, once the hello is checked. The card's certificate is
        checked against the scheme root *before* the PSAM is asked, because a begun debit holds one of the
        PSAM's slots for STALE_AFTER: a made-up card's hello would hold it for nothing. A payee without the
        root cannot check, so it refuses every hello (fails closed) rather than take it unchecked."""
        root = self.m.ctx.purse_root
        if root is None:
            raise NoSchemeRoot("this seller cannot take card purse payments now: it has no purse scheme's root "
                               "certificate to check the card's against (the shop is misconfigured: give it the "
                               "purse scheme's root, semper shop init --purse-root); nothing was paid")
        msg = receive(incoming, Hello)
        if msg.currency != self.terms.currency:
            raise ProtocolError("the card's currency is not the payment's")
        card, counter = bytes.fromhex(msg.card), msg.counter
        PurseProofs(root).check_card(msg.card_certificate, msg.card)
        self.card_cert = msg.card_certificate
        try:
            req = desk.begin_debit(self.terms.payment_id, card, counter, self.terms.amount, self.terms.currency)
        except hw.HardwareError as e:
            raise _card_error(e, "start the debit at the PSAM") from None
        self.request = req
        return req

    def step(self, incoming: dict[str, Any] | None) -> Step:
        desk = self.m.desk(self.psam)
        if self.state == "start":
            try:
                req = self._begin(desk, incoming)
            except TerminalBusy:
                raise
            except BaseException:
                desk.release(self.terms.payment_id)       # nothing was opened at the PSAM
                raise
            # from here the PSAM holds the request open: the room is given back when the proof is
            # taken, or after STALE_AFTER (a refused proof leaves the request open at the PSAM too)
            try:
                psam_cert = desk.certificate()
            except hw.HardwareError as e:
                raise _card_error(e, "start the debit at the PSAM") from None
            self.state = "challenge"
            return Step({"kind": "challenge", "request": b64(req.record), "signature": b64(req.signature),
                         "psam_certificate": b64(psam_cert)})
        if self.state == "challenge":
            msg = receive(incoming, Proof)
            proof = Signed(msg.proof, msg.signature)
            try:
                batch, index, _ = desk.complete_debit(self.terms.payment_id, self.card_cert, proof)
            except hw.ReplayError as e:
                try:
                    batch, index = self._evicted(desk, proof, e)
                except hw.HardwareError as e2:
                    # the PSAM failed while its batches were read: a refusal like the one below, so the payment
                    # manager counts the round and saves the flow (its late_try with it; review of 2026-12-07)
                    raise PaymentRefused(f"the PSAM could not look the card's proof up "
                                         f"({_card_error(e2, 'complete')})", "bad_proof") from None
            except hw.HardwareError as e:
                raise PaymentRefused(f"the PSAM did not accept the card's proof ({_card_error(e, 'complete')})",
                                     "bad_proof") from None
            self.state = "done"
            desk.release(self.terms.payment_id)
            return Step({"kind": "receipt", "batch": batch, "index": index}, done=True, status=Status.PAID,
                        evidence={"proof": b64(msg.proof), "proof_signature": b64(msg.signature), "batch": batch,
                                  "index": index, "card_certificate": b64(self.card_cert)})
        raise ProtocolError("the purse payment is finished")

    def proves_payment(self, incoming: Any) -> bool:
        """Whether ``incoming`` is a debit proof the hello's card signed for this payment's request: the
        card has paid, so the payment manager takes it however many steps of the payment were refused
        before (``PaymentManager._proves_payment``). Checked in software (the request's bytes, the card's
        ECDSA signature against the certificate checked at the hello), so a flood of other messages past
        MAX_ROUNDS asks the PSAM nothing; and at most once in :data:`LATE_PROOF_EVERY_S`, so the card's own
        proof sent in a loop does not keep the PSAM reading its batches (the time is kept in the snapshot)."""
        if self.state != "challenge":
            return False
        try:
            msg = receive(incoming, Proof)
        except PaymentError:
            return False
        proof = Signed(msg.proof, msg.signature)
        if not (self._answers(proof) and self._card_signed(proof)):
            return False
        now = wall_clock()
        if -MAX_CLOCK_SKEW_S <= now - self.late_try < LATE_PROOF_EVERY_S:
            return False
        self.late_try = now
        return True

    def _answers(self, proof: Signed) -> bool:
        """Whether ``proof`` is a DPF1 answering this payment's DRQ1 (the same fields after the tag)."""
        req = self.request
        try:
            return req is not None and DebitRecord.decode(proof.record, DEBIT_PROOF).encode()[4:] == req.record[4:]
        except hw.TransportError:
            return False

    def _card_signed(self, proof: Signed) -> bool:
        """Whether the hello's card (its certificate, from the scheme root) signed ``proof``."""
        root = self.m.ctx.purse_root
        if root is None:
            return False
        try:
            cert = x509.load_der_x509_certificate(self.card_cert)
            PurseProofs(root).check_signed(cert, proof, ROLE_PURSE_CARD, "purse card")
        except (ValueError, ProtocolError):
            return False
        return True

    def _evicted(self, desk: Desk, proof: Signed, e: hw.HardwareError) -> tuple[int, int]:
        """The PSAM holds no open request for this proof. If it answers this payment's request, the card
        has paid: the PSAM took this very proof before (its answer was lost: the seller's process died
        before it committed), or the request was evicted while the proof came late (a buyer slower than
        STALE_AFTER) and the proof is cleared alone at the acquirer with the request (batch 0: cleared
        alone) instead of being refused. Anything else is refused as before."""
        req = self.request
        if not self._answers(proof) or not self._card_signed(proof):
            # a proof that does not answer this payment's request, or that the hello's card (its certificate
            # checked against the scheme root at the hello) did not sign, is refused here: the PSAM's batches
            # are not read and the acquirer is not asked for a forgery
            raise PaymentRefused(f"the PSAM did not accept the card's proof ({_card_error(e, 'complete')})",
                                 "bad_proof") from None
        assert req is not None
        found = desk.find_proof(proof.record)
        if found is not None:
            return found
        if self.m.ctx.bank is None:
            raise PaymentRefused(f"the PSAM did not accept the card's proof ({_card_error(e, 'complete')})",
                                 "bad_proof") from None
        try:
            self.m.clear_proof(desk.certificate(), req, self.card_cert, proof)
        except PaymentError as err:
            raise PaymentRefused(f"the PSAM no longer holds this payment's request and the acquirer did not clear "
                                 f"the card's proof alone ({err})", "bad_proof") from None
        return 0, 0


# ---- checking from public data (the third party, a judge, the payer before its card pays) ---------------
class PurseProofs:
    """The purse's signed records checked against the scheme root certificate, and nothing else.

    A PSAM-signed debit request (DRQ1) and the card-signed debit proof (DPF1) that answers it, each as
    ``{"certificate", "record", "signature"}`` (base64): the certificate is issued by the root for the
    role (PSAM, purse card) and names the PSAM or card the record names, the signature is that key's,
    and the proof's fields equal the request's. Because the request sits in an exchange's description,
    and the description in its id, a proof made for one exchange does not pass in another. Errors are
    ProtocolErrors saying what does not hold.
    """

    def __init__(self, root: x509.Certificate) -> None:
        self.root = root

    def check_request(self, request: Mapping[str, Any]) -> DebitRecord:
        """The DRQ1 in ``request``, signed by the certified PSAM it names."""
        cert, record, signature = _signed(request, "payment request")
        psam_serial = self._check_signed(cert, record, signature, ROLE_PSAM, "PSAM")
        try:
            drq = DebitRecord.decode(record, DEBIT_REQUEST)
        except hw.TransportError:
            raise ProtocolError("the payment request is not a DRQ1 debit request") from None
        if psam_serial != drq.psam_id.hex().upper():
            raise ProtocolError("the debit request is signed by another PSAM than the one it names")
        return drq

    def check_proof(self, proof: Mapping[str, Any], request: Mapping[str, Any], amount: int, currency: int
                    ) -> DebitRecord:
        """The DPF1 in ``proof``, signed by the certified card it names, answering exactly ``request`` for
        ``amount`` in ``currency``."""
        drq = self.check_request(request)
        cert, record, signature = _signed(proof, "debit proof")
        card_serial = self._check_signed(cert, record, signature, ROLE_PURSE_CARD, "purse card")
        try:
            dpf = DebitRecord.decode(record, DEBIT_PROOF)
        except hw.TransportError:
            raise ProtocolError("the payment proof is not a DPF1 debit proof") from None
        if card_serial != dpf.card_number.hex().upper():
            raise ProtocolError("the debit proof is signed by another card than the one it names")
        if dpf.encode()[4:] != drq.encode()[4:]:
            raise ProtocolError("the debit proof answers another request than the one agreed in this exchange")
        if (dpf.amount, dpf.currency) != (amount, currency):
            raise ProtocolError(f"the debit proof is for {dpf.amount} (currency {dpf.currency}), "
                                f"the exchange is for {amount} (currency {currency})")
        return dpf

    def check_certificate(self, cert: x509.Certificate, role: x509.ObjectIdentifier, what: str
                          ) -> tuple[ec.EllipticCurvePublicKey, str]:
        """The certificate's EC key and the serial number (card or PSAM number, hex) it names, when the
        scheme root issued it for ``role``; offline and cheap (one signature check), so the payee runs it
        on a card's hello before its PSAM is asked for anything."""
        try:
            cert.verify_directly_issued_by(self.root)
        except (ValueError, TypeError, InvalidSignature):
            raise ProtocolError(f"the {what} certificate is not issued by the purse scheme root") from None
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or role not in eku:
            raise ProtocolError(f"the {what} certificate is not issued for that role")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ProtocolError(f"the {what} certificate holds no EC key")
        serial = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        return key, str(serial[0].value) if serial else ""

    def check_card(self, der: bytes, card_number: str) -> None:
        """A card's hello: its certificate (DER) is a purse card's from the scheme root and names
        ``card_number`` (hex); ProtocolError otherwise. A certificate that passed is remembered
        (:func:`_card_serial`): the check depends on nothing but the root and the bytes."""
        serial = _card_serial(self.root, bytes(der))
        if serial.upper() != card_number.upper():
            raise ProtocolError("the card's certificate in its hello names another card than the hello does")

    def check_signed(self, cert: x509.Certificate, signed: Signed, role: x509.ObjectIdentifier, what: str) -> str:
        """The serial number ``cert`` names, when the root issued it for ``role`` and its key signed ``signed``;
        ProtocolError otherwise."""
        return self._check_signed(cert, signed.record, signed.signature, role, what)

    def _check_signed(self, cert: x509.Certificate, record: bytes, signature: bytes, role: x509.ObjectIdentifier,
                      what: str) -> str:
        key, serial = self.check_certificate(cert, role, what)
        try:
            key.verify(signature, record, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ProtocolError(f"the {what} signature does not verify: forged or altered") from None
        return serial


@functools.lru_cache(maxsize=CARD_CHECKS_KEPT)
def _card_serial(root: x509.Certificate, der: bytes) -> str:
    """The card number a purse card's certificate names, once it is checked against ``root``.

    Why remembered: the seller checks the certificate of every hello before its PSAM is asked, an ECDSA
    verification per purchase, and a card pays again and again with the same certificate. The check has
    no time in it (the scheme's card certificates are checked for issuer, role and key only), so a pass
    stays a pass; a refusal raises and is not kept, so made-up certificates cannot fill the cache."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise ProtocolError("the card's certificate in its hello is not X.509") from None
    _, serial = PurseProofs(root).check_certificate(cert, ROLE_PURSE_CARD, "purse card")
    return serial


def _signed(obj: Any, what: str) -> tuple[x509.Certificate, bytes, bytes]:
    if not isinstance(obj, Mapping):
        raise ProtocolError(f"the {what} must be a JSON object")
    try:
        cert = x509.load_der_x509_certificate(unb64(obj.get("certificate"), f"{what}.certificate", 4096))
    except ValueError:
        raise ProtocolError(f"the {what}'s certificate is not X.509") from None
    return cert, unb64(obj.get("record"), f"{what}.record", 256), unb64(obj.get("signature"), f"{what}.signature", 128)
