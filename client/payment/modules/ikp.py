"""iKP payment module (1KP, 2KP, 3KP): the account payment the paper names beside SET, as its own module.

    payer -> payee   initiate: level, SALT_C, ID_C = H(R_C, BAN)             (no account, no order in clear)
    payee -> payer   invoice:  Clear (ID_M, TID_M, DATE, NONCE_M, price) and H(Common), Sig_M from 2KP
    payer -> payee   payment:  EncSlip = SLIP sealed to the acquirer (account, R_C, and the enrolled
                               account code in 1KP/2KP), Sig_C on H(EncSlip), H(Common) in 3KP (card key)
    payee -> bank    ikp/authorise: Common, EncSlip, Sig_M, Sig_C (the request itself signed by the payee)
    bank  -> payee   the acquirer's signed answer (Sig_A) naming H(Common); passed on to the payer

Which level: the highest both sides can do. The payee offers 1KP always and 2KP/3KP when it has a
signing key; the payer can do 1KP/2KP when its account is enrolled for iKP (``enrol``; the code is in
``PartyContext.extras["ikp_code"]``) and 3KP when it has a card or token key. ``extras["ikp_min_level"]``
and ``extras["ikp_levels"]`` on either side refuse other levels (a payee that wants the buyer's
signature sets the minimum to 3).

What each level proves (docs/payments.md): 1KP, the acquirer's word only (the buyer's account code is
like a card number with its code: whoever knows both can pay); 2KP adds the merchant's signed invoice,
which the buyer keeps; 3KP adds the buyer's own signature, so the payment cannot be repudiated and the
account code is not needed. The merchant never sees the account, the acquirer never sees the order
(only ``H(SALT_C, DESC)``). An authorised iKP payment is an authorisation at the bank like SET's:
captured by default, refundable (``refund``), released, and asked about with the same operations.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from msgspec import Meta

from .. import ikp_formats as f
from ..errors import InstrumentError, NegotiationError, ProtocolError
from ..model import Acceptance, ExchangeProperties, Instrument, Model, Status, Terms
from ..module import Message, Step, receive
from ..sealed import seal
from ..wire import SignedJson, b64, canonical, unb64, verify_digest
from .setpay import SetPayModule

MAX_SKEW_S = 300
Hex64 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
Hex32 = Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
Level = Annotated[int, Meta(ge=1, le=3)]


class IkpModule(SetPayModule):
    """iKP; capture, release, refund and status are the acquirer's authorisation operations (as SET's)."""

    name = "ikp"
    model = Model.ACCOUNT_BASED
    # the payer's payment is sealed to the acquirer: nobody else can check it before the acquirer answered;
    # a captured payment can be given back (refund), so it is revocable at the bank
    properties = ExchangeProperties(externally_verifiable=False, revocable=True, online=True)

    # ---- what this party can do ---------------------------------------------------------------------
    def payer_levels(self) -> tuple[int, ...]:
        if self.ctx.bank is None or self.ctx.account is None:
            return ()
        levels = []
        if self.ctx.extras.get("ikp_code"):
            levels += [1, 2]
        if self.ctx.signer is not None:
            levels.append(3)
        return self._allowed(levels)

    def payee_levels(self) -> tuple[int, ...]:
        if self.ctx.bank is None or self.ctx.account is None or self.ctx.signer is None:
            return ()                # the payee always signs its request to the acquirer
        return self._allowed(f.LEVELS)

    def _allowed(self, levels: Any) -> tuple[int, ...]:
        """``extras["ikp_levels"]`` (default all three) and ``extras["ikp_min_level"]`` narrow what this
        party takes part in: a payee that wants the buyer's own signature allows only 3KP."""
        allowed = set(self.ctx.extras.get("ikp_levels", f.LEVELS))
        low = int(self.ctx.extras.get("ikp_min_level", 1))
        return tuple(v for v in levels if v in allowed and v >= low)

    def instruments(self) -> list[Instrument]:
        levels = self.payer_levels()
        if not levels:
            return []
        assert self.ctx.account is not None
        return [Instrument(self.name, self.ctx.account, self.ctx.currency,
                           f"account {self.ctx.account} (iKP, up to {max(levels)}KP)")]

    def acceptance(self) -> Acceptance | None:
        levels = self.payee_levels()
        if not levels:
            return None
        return Acceptance(self.name, (self.ctx.currency,), 3, {"levels": list(levels)})

    def payer_flow(self, terms: Terms, instrument: Instrument, params: dict[str, Any]) -> PayerFlow:
        offered = params.get("levels", list(f.LEVELS))
        if not isinstance(offered, list) or not all(isinstance(v, int) for v in offered):
            raise ProtocolError("the payee's iKP levels must be a list of numbers")
        common = sorted(set(self.payer_levels()) & set(offered))
        if not common:
            raise NegotiationError(f"no iKP level both sides can do (this payer: {list(self.payer_levels())}, "
                                   f"the payee: {offered}); enrol the account for 1KP/2KP or use a card key for 3KP")
        return PayerFlow(self, terms, common[-1])

    def payee_flow(self, terms: Terms) -> PayeeFlow:
        return PayeeFlow(self, terms)

    def resume_payee_flow(self, terms: Terms, state: Mapping[str, Any]) -> PayeeFlow:
        """The payee's flow where :meth:`PayeeFlow.snapshot` left it: the payee's session is kept in its
        database between the buyer's messages (``payment/sessions.py``), so the invoice's common fields
        must be there too for the payment that follows it (another worker, or the payee restarted)."""
        flow = PayeeFlow(self, terms)
        flow.state, flow.level = str(state["state"]), int(state["level"])
        flow.common, flow.merchant = dict(state["common"]), dict(state["merchant"])
        return flow

    # ---- enrolment (1KP, 2KP) -----------------------------------------------------------------------
    def enrol(self, code: str) -> dict[str, Any]:
        """Register the account code 1KP and 2KP payments carry (sealed to the acquirer; it keeps only a
        salted scrypt of it). The request is signed by the account's owner."""
        bank = self.ctx.bank
        if bank is None or self.ctx.account is None:
            raise InstrumentError("enrolling for iKP needs the bank and this party's account")
        if not isinstance(code, str) or not 8 <= len(code) <= 64:
            raise InstrumentError("an iKP account code has 8 to 64 characters")
        sealed = seal(self._pi_key(), code.encode(), f.code_aad(self.ctx.account))
        result = dict(bank.call("ikp/enrol", {"account": self.ctx.account, "sealed_code": sealed})["result"])
        self.ctx.extras["ikp_code"] = code
        return result

    def _pi_key(self) -> rsa.RSAPublicKey:
        bank = self.ctx.bank
        assert bank is not None
        key = load_pem_public_key(str(bank.info()["pi_key"]).encode())
        if not isinstance(key, rsa.RSAPublicKey):
            raise ProtocolError("the acquirer's key for sealed payment data is not RSA")
        return key


# ---- messages ------------------------------------------------------------------------------------------
class Initiate(Message, frozen=True):
    """Payer -> payee: the level, the buyer's salt for the order and its pseudo-id."""

    kind: Literal["initiate"]
    level: Level
    salt_c: Hex32
    id_c: Hex64


class Clear(Message, frozen=True):
    """What the invoice says in clear (``kind`` is always ``clear``)."""

    kind: Literal["clear"]
    id_m: Annotated[str, Meta(min_length=1, max_length=40)]
    tid_m: Annotated[str, Meta(min_length=1, max_length=64)]
    date: int
    nonce_m: Hex32
    price: Annotated[int, Meta(ge=1, le=2**31 - 1)]
    currency: Annotated[int, Meta(gt=0, lt=1000)]


class Invoice(Message, frozen=True):
    """Payee -> payer: Clear, H(Common), and from 2KP the merchant's signature and certificate."""

    kind: Literal["invoice"]
    clear: Clear
    common_hash: Hex64
    sig_m: Annotated[str, Meta(max_length=128)] = ""
    merchant_certificate: Annotated[str, Meta(max_length=8192)] = ""


class Payment(Message, frozen=True):
    """Payer -> payee: the slip sealed to the acquirer; from 3KP the buyer's signature and certificate."""

    kind: Literal["payment"]
    enc_slip: dict[str, Any]
    sig_c: Annotated[str, Meta(max_length=128)] = ""
    payer_certificate: Annotated[str, Meta(max_length=8192)] = ""


class Confirm(Message, frozen=True):
    """Payee -> payer: the acquirer's signed authorisation (Sig_A, naming H(Common)) and, when the payee
    captured at once, the acquirer's signed capture of that authorisation; both passed on as they are."""

    kind: Literal["confirm"]
    answer: dict[str, Any]
    capture: dict[str, Any] = {}


def _ec_key(der: bytes, what: str) -> ec.EllipticCurvePublicKey:
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        raise ProtocolError(f"the {what} is not X.509") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ProtocolError(f"the {what} holds no EC key")
    return key


class PayerFlow:
    def __init__(self, module: IkpModule, terms: Terms, level: int) -> None:
        self.m, self.terms, self.level = module, terms, level
        self.state = "start"
        self.r_c = secrets.token_hex(16)
        self.salt_c = secrets.token_hex(16)
        self.common_hash = ""

    def step(self, incoming: dict[str, Any] | None) -> Step:
        t, ctx = self.terms, self.m.ctx
        if self.state == "start":
            assert ctx.account is not None
            self.state = "initiated"
            return Step({"kind": "initiate", "level": self.level, "salt_c": self.salt_c,
                         "id_c": f.buyer_id(self.r_c, ctx.account)})
        if self.state == "initiated":
            inv = receive(incoming, Invoice)
            c = inv.clear
            if (c.id_m, c.tid_m, c.price, c.currency) != (t.payee, t.payment_id, t.amount, t.currency):
                raise ProtocolError("the invoice names another payee, payment, price or currency than agreed")
            if abs(int(time.time()) - c.date) > MAX_SKEW_S:
                raise ProtocolError("the invoice's date is far from this computer's clock")
            assert ctx.account is not None
            common = f.common(self.level, t.amount, t.currency, t.payee, t.payment_id, c.date, c.nonce_m,
                              f.buyer_id(self.r_c, ctx.account), f.description_hash(self.salt_c, t.order_hash))
            common_hash = f.h(common)
            if common_hash.hex() != inv.common_hash:
                raise ProtocolError("the invoice's H(Common) is not what this payer computes: another order, "
                                    "price or buyer")
            evidence: dict[str, Any] = {"common": common, "level": self.level}
            if self.level >= 2:
                if not inv.sig_m or not inv.merchant_certificate:
                    raise ProtocolError(f"a {self.level}KP invoice must carry the merchant's signature")
                der = unb64(inv.merchant_certificate, "merchant certificate", 8192)
                verify_digest(_ec_key(der, "merchant's certificate"), f.merchant_digest(common_hash),
                              unb64(inv.sig_m, "merchant signature", 80), "merchant's signature on the invoice")
                evidence.update(sig_m=inv.sig_m, merchant_certificate=inv.merchant_certificate)
            code = None if self.level == 3 else str(ctx.extras.get("ikp_code") or "")
            if code == "":
                raise InstrumentError("this account has no iKP account code here: enrol it (1KP, 2KP)")
            slip = f.slip(t.amount, t.currency, common_hash.hex(), ctx.account, self.r_c, code)
            enc = seal(self.m._pi_key(), canonical(slip), common_hash.hex().encode())
            body: dict[str, Any] = {"kind": "payment", "enc_slip": enc}
            if self.level == 3:
                sig, cert = self.m._sign_digest(f.customer_digest(enc, common_hash),
                                                f"sign the iKP payment of {t.amount} to {t.payee_name or t.payee}")
                body.update(sig_c=b64(sig), payer_certificate=b64(cert))
                evidence["sig_c"] = b64(sig)
            self.common_hash = common_hash.hex()
            self.state = "paid"
            return Step(body, evidence=evidence)
        if self.state == "paid":
            msg = receive(incoming, Confirm)
            bank = ctx.bank
            assert bank is not None
            result = bank.verify_bank(SignedJson.from_json(msg.answer, "the acquirer's answer"))["result"]
            if (result.get("common_hash"), result.get("payment_id"), result.get("amount")) != (
                    self.common_hash, t.payment_id, t.amount):
                raise ProtocolError("the acquirer's answer is for another payment")
            status = Status.AUTHORISED
            evidence = {"bank_answer": msg.answer}
            if msg.capture:
                captured = bank.verify_bank(SignedJson.from_json(msg.capture, "the acquirer's capture"))["result"]
                if captured.get("authorisation") != result.get("authorisation"):
                    raise ProtocolError("the acquirer's capture is for another authorisation")
                status = Status.CAPTURED if captured.get("state") == "captured" else status
                evidence["bank_capture"] = msg.capture
            self.state = "done"
            return Step(None, done=True, status=status, evidence=evidence)
        raise ProtocolError("the iKP payment is finished")


class PayeeFlow:
    def __init__(self, module: IkpModule, terms: Terms) -> None:
        self.m, self.terms = module, terms
        self.state = "start"
        self.common: dict[str, Any] = {}
        self.level = 0
        self.merchant: dict[str, str] = {}         # Sig_M and the merchant's certificate (2KP, 3KP)

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "level": self.level, "common": self.common, "merchant": self.merchant}

    def step(self, incoming: dict[str, Any] | None) -> Step:
        t, ctx = self.terms, self.m.ctx
        if self.state == "start":
            ini = receive(incoming, Initiate)
            if ini.level not in self.m.payee_levels():
                raise ProtocolError(f"this payee does not take {ini.level}KP payments (it takes "
                                    f"{', '.join(f'{v}KP' for v in self.m.payee_levels()) or 'none'})")
            self.level = ini.level
            date, nonce_m = int(time.time()), secrets.token_hex(16)
            self.common = f.common(ini.level, t.amount, t.currency, t.payee, t.payment_id, date, nonce_m, ini.id_c,
                                   f.description_hash(ini.salt_c, t.order_hash))
            common_hash = f.h(self.common)
            body: dict[str, Any] = {"kind": "invoice", "common_hash": common_hash.hex(),
                                    "clear": {"kind": "clear", "id_m": t.payee, "tid_m": t.payment_id, "date": date,
                                              "nonce_m": nonce_m, "price": t.amount, "currency": t.currency}}
            if ini.level >= 2:
                sig, cert = self.m._sign_digest(f.merchant_digest(common_hash), "sign the iKP invoice")
                self.merchant = {"sig_m": b64(sig), "merchant_certificate": b64(cert)}
                body.update(self.merchant)
            self.state = "invoiced"
            return Step(body)
        if self.state == "invoiced":
            pay = receive(incoming, Payment)
            common_hash = f.h(self.common)
            params: dict[str, Any] = {"account": t.payee, "common": self.common, "enc_slip": pay.enc_slip,
                                      **self.merchant}
            if self.level == 3:
                if not pay.sig_c or not pay.payer_certificate:
                    raise ProtocolError("a 3KP payment must carry the buyer's signature and certificate")
                der = unb64(pay.payer_certificate, "buyer certificate", 8192)
                verify_digest(_ec_key(der, "buyer's certificate"), f.customer_digest(pay.enc_slip, common_hash),
                              unb64(pay.sig_c, "buyer signature", 80), "buyer's signature on the payment")
                params.update(sig_c=pay.sig_c, payer_certificate=pay.payer_certificate)
            bank = ctx.bank
            assert bank is not None
            # the payment's own idempotency keys: a payee that died after the bank acted gets its first answer
            answer = bank.call_signed("ikp/authorise", params, idempotency_key=f"ikp-authorise-{t.payment_id}")
            result = answer.body["result"]
            evidence = {"authorisation": result["authorisation"], "common": self.common, "level": self.level,
                        "enc_slip_sha256": f.h(pay.enc_slip).hex()}
            status = Status.AUTHORISED
            reply: dict[str, Any] = {"kind": "confirm", "answer": answer.to_json()}
            evidence["bank_answer"] = answer.to_json()
            if ctx.extras.get("capture", True):
                captured = bank.call_signed("set/capture", {"authorisation": result["authorisation"],
                                                            "amount": t.amount},
                                            idempotency_key=f"ikp-capture-{t.payment_id}")
                status = Status.CAPTURED
                reply["capture"] = evidence["bank_capture"] = captured.to_json()
            self.state = "done"
            return Step(reply, done=True, status=status, evidence=evidence)
        raise ProtocolError("the iKP payment is finished")
