"""What a certified service may do, and the interpreter's run-time checks against it.

A :class:`Permit` is the part of a service certificate (:mod:`.certificate`) that says what the
certifier allowed after evaluating the document: the payment modules, the most one payment may
be, whether the service may ask for a card signature, whether it may run anonymous deals, how many
periods it may repeat. :meth:`Permit.overreach` compares a document's declared needs with it (a
download refuses a document that asks more); :class:`Enforcer` is what the interpreter asks before
each step, with what the seller actually sent, so that a document that under-declares or a seller
that asks more than the document said is refused at run time all the same.

What no permit can grant, because there is no field for it: skipping the TINGUIN's confirmation,
turning evidence off, seeing the PIN (the PIN goes from the TINGUIN to the card; the interpreter
never holds one).
"""
from __future__ import annotations

from typing import Annotated

import msgspec

from ...support.money import format_amount
from ...support.shapes import Shape
from ..errors import CommerceError, OfferRefused
from .document import MAX_AMOUNT, Module, ServiceDocument


class Permit(Shape, frozen=True):
    modules: Annotated[list[Module], msgspec.Meta(max_length=8)]
    max_amount: Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT)]
    currency: Annotated[int, msgspec.Meta(ge=1, le=999)]
    card_signature: bool
    anonymity: bool
    max_periods: Annotated[int, msgspec.Meta(ge=1, le=24)] = 1

    def overreach(self, doc: ServiceDocument) -> list[str]:
        """What the document asks beyond this permit (empty: it stays within)."""
        out = []
        if doc.payment is not None:
            extra = [m for m in doc.payment.modules if m not in self.modules]
            if extra:
                out.append(f"it would pay with {', '.join(extra)}, which its certificate does not allow")
            if doc.payment.currency != self.currency:
                out.append(f"it asks currency {doc.payment.currency}, its certificate allows {self.currency}")
            elif doc.payment.max_amount > self.max_amount:
                out.append(f"it may ask up to {format_amount(doc.payment.max_amount, doc.payment.currency)} a "
                           f"payment, its certificate allows {format_amount(self.max_amount, self.currency)}")
        if doc.card_signature and not self.card_signature:
            out.append("it asks for your card's signature, which its certificate does not allow")
        if doc.anonymity and not self.anonymity:
            out.append("it runs anonymous deals, which its certificate does not allow")
        if doc.periods > self.max_periods:
            out.append(f"it repeats {doc.periods} times, its certificate allows {self.max_periods}")
        return out

    def lines(self) -> list[tuple[str, str]]:
        """What the TINGUIN shows: the certificate's words, one fact a line."""
        pay = (f"{', '.join(self.modules)}; at most {format_amount(self.max_amount, self.currency)} a payment"
               if self.modules and self.max_amount else "nothing (it may not ask you to pay)")
        return [("may pay with", pay),
                ("may ask your card to sign", "yes (each signature behind your PIN in the TINGUIN)"
                 if self.card_signature else "no"),
                ("anonymous deals", "honoured" if self.anonymity else "not offered"),
                ("may repeat", f"{self.max_periods} period(s), one payment each")]


class ServiceRefused(OfferRefused):
    """A step the service's certificate does not permit (or a service that failed its checks): refused
    before anything more was given."""

    code = "service_refused"

    def __init__(self, message: str, reason: str = "not-permitted") -> None:
        super().__init__(message)
        self.reason = reason            # not-permitted, uncertified, untrusted, expired, revoked, tampered, ...


class Enforcer:
    """The interpreter's questions to the permit, each refused with the reason and before anything is given.

    ``permit`` None: a built-in workflow (shipped with semper, trusted as the blocks are: every
    installed payment module, any amount); a downloaded service always runs under its certificate's."""

    def __init__(self, permit: Permit | None, service: str) -> None:
        self.permit = permit or Permit(modules=[], max_amount=0, currency=978, card_signature=False,
                                       anonymity=False)
        self.service = service
        self.builtin = permit is None

    def _no(self, why: str) -> CommerceError:
        return ServiceRefused(f"the service {self.service!r} is not permitted to {why}; nothing was paid")

    def modules(self, offered: tuple[str, ...]) -> tuple[str, ...]:
        """The offer's modules this service may pay with (the TINGUIN shows only these)."""
        if self.builtin:
            return offered
        return tuple(m for m in offered if m in self.permit.modules)

    def amount(self, total: int, currency: int) -> None:
        if self.builtin or total == 0:
            return
        if currency != self.permit.currency or total > self.permit.max_amount:
            raise self._no(f"ask {format_amount(total, currency)} (its certificate allows at most "
                           f"{format_amount(self.permit.max_amount, self.permit.currency)})")

    def module(self, module: str) -> None:
        if not self.builtin and module != "none" and module not in self.permit.modules:
            raise self._no(f"pay with {module}")

    def card_signature(self) -> None:
        if not self.builtin and not self.permit.card_signature:
            raise self._no("ask for your card's signature")

    def anonymous(self) -> None:
        if not self.builtin and not self.permit.anonymity:
            raise self._no("run an anonymous deal")

    def periods(self, n: int) -> None:
        if not self.builtin and n > self.permit.max_periods:
            raise self._no(f"repeat {n} times")
