"""Payment mandate / cheque module (Mandate): a cheque signed on the payer's card or token.

    payer: cheque = {bank, drawer account, cheque number, payee account, amount, currency, order
           hash}, signed (PIV 9C with the PIN, or the token key)
    payee: checks the cheque against its terms and the signature, deposits it at the bank, and
           answers with the bank's signed result: paid, or bounced (the account held too little)

The cheque is evidence anyone can check with the signer's root; the bank pays each cheque number
of an account once. A bounced cheque can be deposited again later and is then paid once.
"""
from __future__ import annotations

import secrets
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .. import formats
from ..errors import PaymentRefused, ProtocolError
from ..model import Acceptance, ExchangeProperties, Instrument, Model, Record, Status, Terms
from ..module import BaseModule, Message, Step, receive
from ..wire import SignedJson, b64, digest, verify_digest


def release_body(bank: str, drawer: str, number: str, xid: str) -> dict[str, Any]:
    """A reserved cheque's release (the bank's ``bank_exchange.release_body`` reads the same)."""
    return {"type": "cheque-release", "bank": bank, "drawer": drawer, "number": number, "xid": xid}


class MandateModule(BaseModule):
    name = "cheque"
    model = Model.ACCOUNT_BASED
    # inside a fair exchange a cheque is *reserved* at the bank first (the amount held for it, the bank's
    # signed reservation the payee checks): then it is externally verifiable (drawer's and bank's
    # signatures) and generatable (the exchange's third party may release it in the drawer's place)
    properties = ExchangeProperties(externally_verifiable=True, revocable=False, generatable=True, online=True)

    def instruments(self) -> list[Instrument]:
        if self.ctx.signer is None or self.ctx.account is None or self.ctx.bank is None:
            return []
        return [Instrument(self.name, self.ctx.account, self.ctx.currency, f"cheques on {self.ctx.account}")]

    def acceptance(self) -> Acceptance | None:
        if self.ctx.bank is None or self.ctx.account is None or self.ctx.signer is None:
            return None
        return Acceptance(self.name, (self.ctx.currency,), 2)

    def payer_flow(self, terms: Terms, instrument: Instrument, params: dict[str, Any]) -> PayerFlow:
        return PayerFlow(self, terms, instrument.ref)

    def payee_flow(self, terms: Terms) -> PayeeFlow:
        return PayeeFlow(self, terms)

    def write_cheque(self, terms: Terms, account: str) -> SignedJson:
        bank = self.ctx.bank
        assert bank is not None
        body = formats.cheque(str(bank.info()["bank_id"]), account, secrets.token_hex(8), terms.payee, terms.amount,
                              terms.currency, terms.order_hash)
        sig, cert = self._sign_digest(digest(body), f"sign a cheque for {terms.amount}")
        return SignedJson(body, cert, sig)

    def deposit(self, cheque: SignedJson, key: str | None = None) -> SignedJson:
        """Present a cheque (again, e.g. after a bounce: a fresh key); the bank's signed answer. ``key``: the
        idempotency key of a presentation that must not happen twice (the payee's, per payment)."""
        assert self.ctx.bank is not None and self.ctx.account is not None
        return self.ctx.bank.call_signed("cheque/deposit", {"account": self.ctx.account, "cheque": cheque.to_json()},
                                         idempotency_key=key or f"cheque-{cheque.body['drawer']}-"
                                                                f"{cheque.body['number']}-{secrets.token_hex(4)}")

    # ---- cheques in fair exchanges (client/servers/bank_exchange.py) -------------------------------------
    def reserve(self, terms: Terms, account: str, clause: dict[str, Any]) -> tuple[SignedJson, SignedJson]:
        """Write a cheque naming the exchange (``clause``: xid, ttp, valid_until, returnable) and have the bank
        hold its amount; (the cheque, the bank's signed reservation)."""
        bank = self.ctx.bank
        assert bank is not None
        body = {**formats.cheque(str(bank.info()["bank_id"]), account, secrets.token_hex(8), terms.payee,
                                 terms.amount, terms.currency, terms.order_hash), "exchange": dict(clause)}
        sig, cert = self._sign_digest(digest(body), f"sign a cheque for {terms.amount} (held at the bank for a fair "
                                                    "exchange)")
        cheque = SignedJson(body, cert, sig)
        answer = bank.call_signed("cheque/reserve", {"cheque": cheque.to_json()},
                                  idempotency_key=f"reserve-{account}-{body['number']}")
        return cheque, answer

    def release(self, cheque: SignedJson) -> SignedJson:
        """The drawer's release of a reserved cheque: with it, the payee cashes it."""
        b = cheque.body
        body = release_body(str(b["bank"]), str(b["drawer"]), str(b["number"]), str(b["exchange"]["xid"]))
        sig, cert = self._sign_digest(digest(body), f"release the cheque for {b['amount']} in the fair exchange")
        return SignedJson(body, cert, sig)

    def cash(self, cheque: SignedJson, release: SignedJson | None = None, release_statement: bytes | None = None
             ) -> SignedJson:
        """Payee: cash a reserved cheque with its release (the drawer's, or the third party's statement)."""
        assert self.ctx.bank is not None and self.ctx.account is not None
        params: dict[str, Any] = {"account": self.ctx.account, "cheque": cheque.to_json()}
        if release is not None:
            params["release"] = release.to_json()
        if release_statement is not None:
            params["release_statement"] = b64(release_statement)
        return self.ctx.bank.call_signed("cheque/cash", params,
                                         idempotency_key=f"cash-{cheque.body['drawer']}-{cheque.body['number']}")

    def unreserve(self, cheque: SignedJson, decision: bytes) -> dict[str, Any]:
        """Drawer: a returnable reservation back, with the third party's 'expired' decision."""
        assert self.ctx.bank is not None
        return dict(self.ctx.bank.call("cheque/unreserve", {"drawer": cheque.body["drawer"],
                                                           "number": cheque.body["number"],
                                                           "decision": b64(decision)})["result"])

    def status(self, record: Record) -> Status:
        if "cheque" not in record.evidence or self.ctx.bank is None:
            return record.status
        body = record.evidence["cheque"]["body"]
        res = self.ctx.bank.call("cheque/status", {"drawer": body["drawer"], "number": body["number"]})["result"]
        return {"paid": Status.PAID, "bounced": Status.BOUNCED}.get(res["state"], record.status)


class ChequeMessage(Message, frozen=True):
    """Payer -> payee: the cheque the drawer signed (its body: ``formats.Cheque``, read by the bank)."""

    kind: Literal["cheque"]
    cheque: SignedJson


class Deposited(Message, frozen=True):
    """Payee -> payer: the bank's signed answer to the deposit (paid or bounced)."""

    kind: Literal["deposited"]
    answer: dict[str, Any]                      # a SignedJson, checked with the bank's key


class PayerFlow:
    def __init__(self, module: MandateModule, terms: Terms, account: str) -> None:
        self.m, self.terms, self.account = module, terms, account
        self.state = "start"

    def step(self, incoming: dict[str, Any] | None) -> Step:
        if self.state == "start":
            cheque = self.m.write_cheque(self.terms, self.account)
            self.state = "sent"
            return Step({"kind": "cheque", "cheque": cheque.to_json()}, evidence={"cheque": cheque.to_json()})
        if self.state == "sent":
            msg = receive(incoming, Deposited)
            bank = self.m.ctx.bank
            assert bank is not None
            result = bank.verify_bank(SignedJson.from_json(msg.answer, "the bank's answer"))["result"]
            self.state = "done"
            status = Status.PAID if result.get("state") == "paid" else Status.BOUNCED
            return Step(None, done=True, status=status, evidence={"bank_answer": msg.answer})
        raise ProtocolError("the cheque payment is finished")


class PayeeFlow:
    def __init__(self, module: MandateModule, terms: Terms) -> None:
        self.m, self.terms = module, terms
        self.done = False

    def step(self, incoming: dict[str, Any] | None) -> Step:
        if self.done:
            raise ProtocolError("the cheque payment is finished")
        cheque = receive(incoming, ChequeMessage).cheque
        b, t = cheque.body, self.terms
        if (b.get("payee"), b.get("amount"), b.get("currency"), b.get("order_hash")) != (t.payee, t.amount, t.currency,
                                                                                          t.order_hash):
            raise ProtocolError("the cheque is not made out for this order's payee, amount and currency")
        try:
            key = x509.load_der_x509_certificate(cheque.certificate).public_key()
        except ValueError:
            raise ProtocolError("the cheque's certificate is not X.509") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ProtocolError("the cheque's certificate holds no EC key")
        verify_digest(key, cheque.digest, cheque.signature, "drawer's signature on the cheque")
        # the payment's own key: a payee that died after the bank paid runs this again and gets that answer
        answer = self.m.deposit(cheque, key=f"cheque-pay-{t.payment_id}")
        result = answer.body["result"]
        self.done = True
        status = Status.PAID if result["state"] == "paid" else Status.BOUNCED
        step = Step({"kind": "deposited", "answer": answer.to_json()}, done=True, status=status,
                    evidence={"cheque": cheque.to_json(), "bank_answer": answer.to_json()})
        if status is Status.BOUNCED and self.m.ctx.extras.get("refuse_bounced", False):
            raise PaymentRefused("the cheque bounced: the drawer's account holds too little", "bounced")
        return step
