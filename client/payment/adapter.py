"""Adapters: how a payment system with an interface of its own becomes a payment module (paper fig. 5).

Many systems offer a one-shot interface: the payer's side makes a *token* for an amount and a
payee (a voucher code, a signed transfer order), the payee's side *redeems* it and says whether it
was good. :class:`OneShotAdapter` maps that onto the manager's flows (one message each way), so
such a system attaches by subclassing it, naming the module, its model and properties, and
implementing three small methods. The system's own errors should be raised as
:class:`~client.payment.errors.PaymentError` subclasses (``PaymentRefused`` for a rejected token).
"""
from __future__ import annotations

from typing import Any, Literal

from .errors import PaymentRefused, ProtocolError
from .model import Acceptance, Instrument, Status, Terms
from .module import BaseModule, Message, Step, receive


class OneShotAdapter(BaseModule):
    """Subclass and implement ``system_instruments``, ``system_pay`` and ``system_redeem``."""

    currencies: tuple[int, ...] = (978,)

    # ---- what a wrapped system implements ----------------------------------------------------
    def system_instruments(self) -> list[tuple[str, int, int | None]]:
        """(reference, currency, available or None) for each of the payer's instruments."""
        raise NotImplementedError

    def system_pay(self, instrument_ref: str, terms: Terms) -> dict[str, Any]:
        """Make the token that pays ``terms`` (JSON)."""
        raise NotImplementedError

    def system_redeem(self, token: dict[str, Any], terms: Terms) -> bool:
        """Redeem a token at the payee; False when the system rejects it."""
        raise NotImplementedError

    def system_accepts(self) -> bool:
        """Whether this party can redeem tokens (default: yes)."""
        return True

    # ---- the module interface ------------------------------------------------------------------
    def instruments(self) -> list[Instrument]:
        return [Instrument(self.name, ref, cur, f"{self.name} {ref}", avail)
                for ref, cur, avail in self.system_instruments()]

    def acceptance(self) -> Acceptance | None:
        return Acceptance(self.name, self.currencies) if self.system_accepts() else None

    def payer_flow(self, terms: Terms, instrument: Instrument, params: dict[str, Any]) -> _Payer:
        return _Payer(self, terms, instrument.ref)

    def payee_flow(self, terms: Terms) -> _Payee:
        return _Payee(self, terms)


class Token(Message, frozen=True):
    """Payer -> payee: the other system's payment token."""

    kind: Literal["token"]
    token: dict[str, Any]


class Redeemed(Message, frozen=True):
    """Payee -> payer: whether the payee's system took the token."""

    kind: Literal["redeemed"]
    ok: bool


class _Payer:
    def __init__(self, m: OneShotAdapter, terms: Terms, ref: str) -> None:
        self.m, self.terms, self.ref, self.sent = m, terms, ref, False

    def step(self, incoming: dict[str, Any] | None) -> Step:
        if not self.sent:
            self.sent = True
            token = self.m.system_pay(self.ref, self.terms)
            return Step({"kind": "token", "token": token}, status=Status.PENDING, evidence={"token": token})
        msg = receive(incoming, Redeemed)
        if msg.ok is not True:
            raise PaymentRefused(f"the payee's {self.m.name} system rejected the token", "rejected")
        return Step(None, done=True, status=Status.PAID)


class _Payee:
    def __init__(self, m: OneShotAdapter, terms: Terms) -> None:
        self.m, self.terms, self.done = m, terms, False

    def step(self, incoming: dict[str, Any] | None) -> Step:
        if self.done:
            raise ProtocolError(f"the {self.m.name} payment is finished")
        msg = receive(incoming, Token)
        ok = self.m.system_redeem(msg.token, self.terms)
        self.done = True
        return Step({"kind": "redeemed", "ok": ok}, done=True, status=Status.PAID if ok else Status.FAILED,
                    evidence={"token": msg.token})
