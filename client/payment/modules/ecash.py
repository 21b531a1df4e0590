"""E-cash module (eCash): coins blind-signed by the bank's mint, spent without the bank learning who paid.

Withdraw (``withdraw``): the wallet makes a serial per coin, blinds it for the mint key of its
denomination, saves the blinding factors, and asks the bank (signed by the holder) to debit the
account and sign; it unblinds and keeps the coins. Pay:

    payer: coins (key id, serial, signature) adding up to the amount, moved to in-flight first
    payee: checks each coin with the mint's public key, deposits them on line for this payment (a
           coin deposited before for anything else is a double spend: refused), answers with the
           bank's signed deposit

The bank saw the blinded values at withdrawal and only the coins at deposit: it cannot link them.
``reclaim`` deposits in-flight coins back to the payer's own account when a payee vanished.
The wallet is sealed to the holder's token (``TokenWalletKey``) or card (``use_card_wallet``: PIV
key 9D, the PIN through the party's own PIN entry).
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from msgspec import Meta

from .. import blind, formats
from ..errors import InstrumentError, PaymentRefused, ProtocolError
from ..model import Acceptance, ExchangeProperties, Instrument, Model, Status, Terms
from ..module import BaseModule, Message, Step, receive
from ..wallet import Coin, Wallet
from ..wire import SignedJson, b64, unb64

if TYPE_CHECKING:
    from semper.hardware.piv import PivSession


class EcashModule(BaseModule):
    name = "ecash"
    model = Model.CASH_LIKE
    properties = ExchangeProperties(externally_verifiable=True, revocable=False, anonymous=True, online=True)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._keys: dict[str, tuple[int, int, rsa.RSAPublicKey]] | None = None

    def mint_keys(self) -> dict[str, tuple[int, int, rsa.RSAPublicKey]]:
        """key id -> (currency, denomination, public key), from the bank's published list."""
        if self._keys is None:
            if self.ctx.bank is None:
                raise InstrumentError("e-cash needs the bank's mint keys")
            keys = {}
            for k in self.ctx.bank.info()["mint_keys"]:
                pub = load_pem_public_key(str(k["public"]).encode())
                assert isinstance(pub, rsa.RSAPublicKey)
                keys[str(k["key_id"])] = (int(k["currency"]), int(k["denomination"]), pub)
            self._keys = keys
        return self._keys

    def instruments(self) -> list[Instrument]:
        w = self.ctx.wallet
        if w is None:
            return []
        return [Instrument(self.name, w.name, cur, f"e-cash wallet ({cur})", w.balance(cur))
                for cur in sorted(w.currencies() | {self.ctx.currency})]

    def acceptance(self) -> Acceptance | None:
        if self.ctx.bank is None or self.ctx.account is None or self.ctx.signer is None:
            return None
        return Acceptance(self.name, (self.ctx.currency,), 1)

    def payer_flow(self, terms: Terms, instrument: Instrument, params: dict[str, Any]) -> PayerFlow:
        if self.ctx.wallet is None:
            raise InstrumentError("no e-cash wallet is open")
        return PayerFlow(self, terms)

    def payee_flow(self, terms: Terms) -> PayeeFlow:
        return PayeeFlow(self, terms)

    def use_card_wallet(self, path: Path, piv: PivSession, name: str = "wallet") -> Wallet:
        """Open (or start) the party's wallet at ``path`` sealed to its card's PIV key 9D, and use it.

        Why here: the module is what spends the wallet, and it has the party's context, whose
        ``enter_pin`` (the TINGUIN for users) is the only way the card's PIN is asked for.
        """
        from ..card_wallet import open_card_wallet
        self.ctx.wallet = open_card_wallet(path, piv, self.ctx, name)
        return self.ctx.wallet

    # ---- withdrawal --------------------------------------------------------------------------
    def withdraw(self, amount: int, currency: int | None = None) -> int:
        """Withdraw ``amount`` from the holder's account as coins; returns the wallet's new balance."""
        w, bank = self.ctx.wallet, self.ctx.bank
        if w is None or bank is None or self.ctx.account is None:
            raise InstrumentError("withdrawing needs the wallet, the bank and the holder's account")
        currency = currency or self.ctx.currency
        denoms = sorted(((d, kid) for kid, (c, d, _) in self.mint_keys().items() if c == currency), reverse=True)
        if not denoms:
            raise InstrumentError(f"the mint issues no coins in currency {currency}")
        plan: list[str] = []
        left = amount
        for d, kid in denoms:
            while left >= d:
                plan.append(kid)
                left -= d
        if left or len(plan) > 64:
            raise InstrumentError(f"{amount} cannot be withdrawn in at most 64 coins of the mint's denominations")
        ikey = secrets.token_hex(16)
        coins = []
        for kid in plan:
            serial = secrets.token_hex(32)
            b = blind.blind(self.mint_keys()[kid][2], formats.coin_message(kid, serial))
            coins.append({"key_id": kid, "serial": serial, "blinded": b64(b.blinded), "inverse": str(b.inverse)})
        w.pending[ikey] = {"account": self.ctx.account, "coins": coins}
        w.save()                                   # the blinding factors are safe before the bank debits
        self.resume(ikey)
        return w.balance(currency)

    def resume(self, ikey: str | None = None) -> int:
        """Finish pending withdrawals (after a crash or a lost answer); returns how many finished."""
        w, bank = self.ctx.wallet, self.ctx.bank
        assert w is not None and bank is not None
        done = 0
        for key in [ikey] if ikey else list(w.pending):
            p = w.pending[key]
            answer = bank.call("mint/withdraw", {"account": p["account"], "coins": [
                {"key_id": c["key_id"], "blinded": c["blinded"]} for c in p["coins"]]}, idempotency_key=key)
            sigs = answer["result"]["signatures"]
            if len(sigs) != len(p["coins"]):
                raise ProtocolError("the mint answered a different number of coins")
            new = []
            for c, s in zip(p["coins"], sigs, strict=True):
                cur, denom, pub = self.mint_keys()[c["key_id"]]
                bl = blind.Blinded(formats.coin_message(c["key_id"], c["serial"]), unb64(c["blinded"], "blinded"),
                                   int(c["inverse"]))
                sig = blind.finalize(pub, bl, unb64(s, "blind signature", 1024))
                new.append(Coin(c["key_id"], c["serial"], b64(sig), denom, cur))
            del w.pending[key]
            w.add(new)
            done += 1
        return done

    def reclaim(self, payment_id: str) -> int:
        """Deposit the coins handed out for ``payment_id`` to the payer's own account (payee vanished).

        Returns the amount recovered; 0 when the payee had deposited them (double spend refused).
        """
        w, bank = self.ctx.wallet, self.ctx.bank
        assert w is not None and bank is not None
        coins = w.in_flight.get(payment_id, [])
        if not coins:
            return 0
        try:
            bank.call("mint/deposit", {"account": self.ctx.account, "coins": [c.wire() for c in coins]},
                      idempotency_key=f"reclaim-{payment_id}")
            got = sum(c.denomination for c in coins)
        except PaymentRefused as e:
            if e.code != "double_spend":
                raise
            got = 0
        w.settle(payment_id)
        return got


class PayerFlow:
    def __init__(self, module: EcashModule, terms: Terms) -> None:
        self.m, self.terms = module, terms
        self.state = "start"

    def step(self, incoming: dict[str, Any] | None) -> Step:
        w = self.m.ctx.wallet
        assert w is not None
        if self.state == "start":
            coins = w.take(self.terms.amount, self.terms.currency, self.terms.payment_id)
            self.state = "sent"
            return Step({"kind": "coins", "currency": self.terms.currency, "coins": [c.wire() for c in coins]})
        if self.state == "sent":
            msg = receive(incoming, Deposited)
            bank = self.m.ctx.bank
            assert bank is not None
            result = bank.verify_bank(SignedJson.from_json(msg.answer, "the bank's deposit"))["result"]
            if result.get("total") != self.terms.amount:
                raise ProtocolError("the bank's deposit is for another amount")
            w.settle(self.terms.payment_id)
            self.state = "done"
            return Step(None, done=True, status=Status.PAID, evidence={"bank_answer": msg.answer})
        raise ProtocolError("the e-cash payment is finished")


class Coins(Message, frozen=True):
    """Payer -> payee: the coins that pay, all in the payment's currency."""

    kind: Literal["coins"]
    currency: int
    coins: Annotated[list[formats.WireCoin], Meta(min_length=1, max_length=256)]


class Deposited(Message, frozen=True):
    """Payee -> payer: the mint's signed answer to the deposit of those coins."""

    kind: Literal["deposited"]
    answer: dict[str, Any]                      # a SignedJson, checked with the bank's key


class PayeeFlow:
    def __init__(self, module: EcashModule, terms: Terms) -> None:
        self.m, self.terms = module, terms
        self.done = False

    def step(self, incoming: dict[str, Any] | None) -> Step:
        if self.done:
            raise ProtocolError("the e-cash payment is finished")
        msg = receive(incoming, Coins)
        if msg.currency != self.terms.currency:
            raise ProtocolError("the coins are in another currency")
        keys = self.m.mint_keys()
        total = 0
        wire = []
        for c in msg.coins:
            if c.key_id not in keys:
                raise ProtocolError("a coin names no mint key of this bank")
            cur, denom, pub = keys[c.key_id]
            coin = Coin(c.key_id, c.serial, b64(c.signature), denom, cur)
            if cur != self.terms.currency:
                raise ProtocolError("a coin is in another currency")
            blind.verify(pub, formats.coin_message(c.key_id, c.serial), c.signature)
            total += denom
            wire.append(coin.wire())
        if total != self.terms.amount:
            raise ProtocolError(f"the coins add up to {total}, the payment is {self.terms.amount}")
        bank = self.m.ctx.bank
        assert bank is not None
        # deposited *for this payment*: the same coins again for it answer as before (the exchange's third
        # party may have deposited them for this payee already), for anything else they are a double spend
        answer = bank.call_signed("mint/deposit_for", {"account": self.m.ctx.account,
                                                       "payment_id": self.terms.payment_id, "coins": wire},
                                  idempotency_key=f"deposit-{self.terms.payment_id}")
        self.done = True
        return Step({"kind": "deposited", "answer": answer.to_json()}, done=True, status=Status.PAID,
                    evidence={"bank_answer": answer.to_json(), "coins": len(wire)})
