"""Account payment module (SET; iKP is its own module, ``ikp.py``): a dual-signed payment instruction,
authorise, capture, refund.

    payer: instruction = order information OI (terms + order hash, in clear for the seller),
           payment instruction PI sealed to the bank's key, H(PI), and the dual signature over
           SHA-256(H(PI) || H(OI)) made on the card (PIV 9C, PIN) or token
    payee: checks OI against its terms and the dual signature with the payer's certificate, asks
           the bank to authorise (and, by default, to capture); answers with the bank's signed
           result

The seller never sees the payer's account; the bank never sees the order, only H(OI). Payments
are revocable: the payee refunds through the bank (``refund``), which credits the payer's account.
"""
from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from msgspec import Meta

from .. import formats
from ..errors import InstrumentError, ProtocolError
from ..model import Acceptance, ExchangeProperties, Instrument, Model, Record, Status, Terms
from ..module import BaseModule, Flow, Message, Step, receive
from ..sealed import seal
from ..wire import SignedJson, b64, unb64, verify_digest


class SetPayModule(BaseModule):
    name = "setpay"
    model = Model.ACCOUNT_BASED
    # revocable: inside a fair exchange the bank holds the authorisation until the third party decides
    # (set/settle, set/revoke). Not externally verifiable: a third party can check the dual signature,
    # but not that the bank will honour it (the payer's account may be emptied before the payee asks).
    properties = ExchangeProperties(externally_verifiable=False, revocable=True, online=True)

    def instruments(self) -> list[Instrument]:
        if self.ctx.signer is None or self.ctx.account is None or self.ctx.bank is None:
            return []
        return [Instrument(self.name, self.ctx.account, self.ctx.currency, f"account {self.ctx.account}")]

    def acceptance(self) -> Acceptance | None:
        if self.ctx.bank is None or self.ctx.account is None or self.ctx.signer is None:
            return None
        return Acceptance(self.name, (self.ctx.currency,), 1)

    def payer_flow(self, terms: Terms, instrument: Instrument, params: dict[str, Any]) -> Flow:
        return PayerFlow(self, terms, instrument.ref, params.get("exchange"))

    def payee_flow(self, terms: Terms) -> Flow:
        return PayeeFlow(self, terms)

    # ---- payee's later actions ---------------------------------------------------------------
    def _bank_call(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        if self.ctx.bank is None:
            raise InstrumentError("this needs the bank")
        return dict(self.ctx.bank.call(op, params)["result"])

    def capture(self, record: Record, amount: int | None = None) -> Record:
        res = self._bank_call("set/capture", {"authorisation": record.evidence["authorisation"],
                                              "amount": amount or record.terms.amount})
        record.status = Status.CAPTURED
        record.evidence["bank_state"] = res
        return record

    def release(self, record: Record) -> Record:
        res = self._bank_call("set/release", {"authorisation": record.evidence["authorisation"]})
        record.status = Status.RELEASED
        record.evidence["bank_state"] = res
        return record

    def refund(self, record: Record, amount: int) -> Record:
        res = self._bank_call("set/refund", {"authorisation": record.evidence["authorisation"], "amount": amount})
        record.refunded = int(res["refunded"])
        record.status = Status.REFUNDED if record.refunded == res["captured"] else Status.PARTLY_REFUNDED
        record.evidence["bank_state"] = res
        return record

    # ---- inside a fair exchange: the third party's decision settles it ----------------------------
    def settle(self, record: Record, decision: bytes) -> Record:
        """Payee: capture an exchange authorisation with the third party's 'resolved' decision."""
        res = self._bank_call("set/settle", {"authorisation": record.evidence["authorisation"],
                                             "decision": b64(decision)})
        record.status = Status.CAPTURED
        record.evidence["bank_state"] = res
        return record

    def revoke(self, payee: str, payment_id: str, decision: bytes) -> dict[str, Any]:
        """Payer (or payee): the hold back to the payer with the third party's 'revoked' decision; when the
        payee never had it authorised, the bank remembers the revocation, so it never will."""
        return self._bank_call("set/revoke", {"payee": payee, "payment_id": payment_id, "decision": b64(decision)})

    def status(self, record: Record) -> Status:
        if record.role != "payee" or "authorisation" not in record.evidence:
            return record.status
        res = self._bank_call("set/status", {"authorisation": record.evidence["authorisation"]})
        return {"authorised": Status.AUTHORISED, "captured": Status.CAPTURED, "released": Status.RELEASED,
                "refunded": Status.REFUNDED}.get(res["state"], record.status) if not (
            res["refunded"] and res["refunded"] < res["captured"]) else Status.PARTLY_REFUNDED


class Instruction(Message, frozen=True):
    """Payer -> payee: the order information, the sealed payment instruction (for the bank only) and
    its hash, the dual signature over both and the payer's certificate."""

    kind: Literal["instruction"]
    oi: dict[str, Any]
    pi_hash: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
    sealed_pi: dict[str, Any]                   # passed on to the bank, which opens it
    dual_signature: Annotated[str, Meta(max_length=128)]          # base64, passed on to the bank as is
    payer_certificate: Annotated[str, Meta(max_length=8192)]      # base64 DER, passed on as is


class Authorised(Message, frozen=True):
    """Payee -> payer: the bank's signed authorisation (or capture)."""

    kind: Literal["authorised"]
    answer: dict[str, Any]                      # a SignedJson, checked with the bank's key


class PayerFlow:
    def __init__(self, module: SetPayModule, terms: Terms, account: str, exchange: dict[str, Any] | None = None
                 ) -> None:
        self.m, self.terms, self.account, self.exchange = module, terms, account, exchange
        self.state = "start"

    def step(self, incoming: dict[str, Any] | None) -> Step:
        t = self.terms
        if self.state == "start":
            bank = self.m.ctx.bank
            assert bank is not None
            pi_key = load_pem_public_key(str(bank.info()["pi_key"]).encode())
            if not isinstance(pi_key, rsa.RSAPublicKey):
                raise ProtocolError("the bank's payment-instruction key is not RSA")
            pi = formats.payment_instruction(self.account, t.payee, t.amount, t.currency, t.payment_id,
                                             secrets.token_hex(16), self.exchange)
            oi = formats.order_information(t.order_hash, t.amount, t.currency, t.payment_id, t.payee, self.exchange)
            pi_hash, oi_hash = formats.h(pi), formats.h(oi)
            ds, cert = self.m._sign_digest(formats.dual_digest(pi_hash, oi_hash), "sign the payment instruction")
            sealed = seal(pi_key, json.dumps(pi, sort_keys=True).encode(), oi_hash.hex().encode())
            self.state = "sent"
            return Step({"kind": "instruction", "oi": oi, "pi_hash": pi_hash.hex(), "sealed_pi": sealed,
                         "dual_signature": b64(ds), "payer_certificate": b64(cert)},
                        evidence={"oi": oi, "dual_signature": b64(ds)})
        if self.state == "sent":
            msg = receive(incoming, Authorised)
            bank = self.m.ctx.bank
            assert bank is not None
            result = bank.verify_bank(SignedJson.from_json(msg.answer, "the bank's authorisation"))["result"]
            if (result.get("payment_id"), result.get("amount")) != (t.payment_id, t.amount):
                raise ProtocolError("the bank's authorisation is for another payment")
            self.state = "done"
            status = Status.CAPTURED if result.get("state") == "captured" else Status.AUTHORISED
            return Step(None, done=True, status=status, evidence={"bank_answer": msg.answer})
        raise ProtocolError("the account payment is finished")


class PayeeFlow:
    def __init__(self, module: SetPayModule, terms: Terms) -> None:
        self.m, self.terms = module, terms
        self.done = False

    def step(self, incoming: dict[str, Any] | None) -> Step:
        if self.done:
            raise ProtocolError("the account payment is finished")
        t = self.terms
        msg = receive(incoming, Instruction)
        oi = msg.oi
        clause = oi.get("exchange")
        if clause is not None and not isinstance(clause, dict):
            raise ProtocolError("the order information's exchange clause must be an object")
        if oi != formats.order_information(t.order_hash, t.amount, t.currency, t.payment_id, t.payee, clause):
            raise ProtocolError("the order information does not match this order's terms")
        pi_hash = bytes.fromhex(msg.pi_hash)
        try:
            cert = x509.load_der_x509_certificate(unb64(msg.payer_certificate, "payer certificate", 4096))
        except ValueError:
            raise ProtocolError("the payer's certificate is not X.509") from None
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ProtocolError("the payer's certificate holds no EC key")
        ds = unb64(msg.dual_signature, "dual signature", 80)
        oi_hash = formats.h(oi)
        verify_digest(key, formats.dual_digest(pi_hash, oi_hash), ds, "payer's dual signature")
        bank = self.m.ctx.bank
        assert bank is not None
        # idempotency keys of the payment's own: a payee that died after the bank acted and before it kept
        # the answer runs this step again (payment/sessions.py) and gets the bank's first answer back
        answer = bank.call_signed("set/authorise", {
            "account": t.payee, "payment_id": t.payment_id, "amount": t.amount, "currency": t.currency,
            "oi_hash": oi_hash.hex(), "sealed_pi": msg.sealed_pi, "dual_signature": msg.dual_signature,
            "payer_certificate": msg.payer_certificate}, idempotency_key=f"set-authorise-{t.payment_id}")
        result = answer.body["result"]
        evidence = {"authorisation": result["authorisation"], "oi": oi, "dual_signature": msg.dual_signature,
                    "pi_hash": msg.pi_hash, "payer_certificate": msg.payer_certificate}
        status = Status.AUTHORISED
        if clause is not None:             # a fair exchange's: held until its third party decides (settle)
            evidence["exchange"] = clause
        elif self.m.ctx.extras.get("capture", True):
            answer = bank.call_signed("set/capture", {"authorisation": result["authorisation"], "amount": t.amount},
                                      idempotency_key=f"set-capture-{t.payment_id}")
            status = Status.CAPTURED
        self.done = True
        evidence["bank_answer"] = answer.to_json()
        return Step({"kind": "authorised", "answer": answer.to_json()}, done=True, status=status, evidence=evidence)
