"""Negotiation: which module and which instrument pay given terms, from both sides' views.

The payee offers a list of acceptances (module, currencies, its preference); the payer has
instruments and its own preference order; the exchange layer or the deal may require properties
(revocable, externally verifiable, anonymous). The choice is deterministic so that both sides can
recompute it: among the pairs that fit, the lowest sum of the two ranks wins, ties going to the
payer's preference (the payer pays), then to the module name. When nothing fits, the error says
for every offered module why not, so a person can see what to add (a card, funds, a module).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import NegotiationError
from .model import Acceptance, Choice, ExchangeProperties, Instrument, Terms


@dataclass(frozen=True)
class Requirements:
    """Properties the payment must have (from the exchange protocol or the deal's attributes)."""

    revocable: bool = False
    externally_verifiable: bool = False
    anonymous: bool = False

    def unmet(self, p: ExchangeProperties) -> list[str]:
        return [name for name, wanted, has in (("revocable", self.revocable, p.revocable),
                                              ("externally verifiable", self.externally_verifiable,
                                               p.externally_verifiable),
                                              ("anonymous", self.anonymous, p.anonymous)) if wanted and not has]


def negotiate(terms: Terms, offer: Sequence[Acceptance], instruments: Sequence[Instrument],
              properties: Mapping[str, ExchangeProperties], payer_preferences: Sequence[str] = (),
              require: Requirements = Requirements()) -> Choice:
    prefs = {m: i for i, m in enumerate(payer_preferences)}
    candidates: list[tuple[tuple[int, int, str, int], Acceptance, Instrument]] = []
    reasons: list[str] = []
    for acc in offer:
        why = _why_not(terms, acc, instruments, properties, require)
        if why:
            reasons.append(f"{acc.module}: {why}")
            continue
        fitting = [i for i in instruments if _fits(terms, acc, i)]
        payer_rank = prefs.get(acc.module, len(prefs))
        for n, inst in enumerate(fitting):
            candidates.append(((payer_rank + acc.preference, payer_rank, acc.module, n), acc, inst))
    if not candidates:
        detail = "; ".join(reasons) if reasons else "the payee offered no payment module"
        raise NegotiationError(f"no way to pay {terms.amount} (currency {terms.currency}) to "
                               f"{terms.payee_name or terms.payee}: "
                               f"{detail}")
    _, acc, inst = min(candidates, key=lambda c: c[0])
    return Choice(acc.module, inst, dict(acc.params))


def _fits(terms: Terms, acc: Acceptance, inst: Instrument) -> bool:
    return (inst.module == acc.module and inst.currency == terms.currency
            and (inst.available is None or inst.available >= terms.amount))


def _why_not(terms: Terms, acc: Acceptance, instruments: Sequence[Instrument],
             properties: Mapping[str, ExchangeProperties], require: Requirements) -> str:
    if acc.module not in properties:
        return "not installed on the payer's side"
    unmet = require.unmet(properties[acc.module])
    if unmet:
        return f"its payments are not {' and not '.join(unmet)}, which this exchange requires"
    if terms.currency not in acc.currencies:
        return f"the payee accepts it only in currencies {', '.join(map(str, acc.currencies))}"
    mine = [i for i in instruments if i.module == acc.module]
    if not mine:
        return "the payer has no instrument for it"
    same = [i for i in mine if i.currency == terms.currency]
    if not same:
        return f"the payer's instruments are in other currencies ({', '.join(str(i.currency) for i in mine)})"
    if not any(i.available is None or i.available >= terms.amount for i in same):
        best = max(i.available or 0 for i in same)
        return f"not enough funds (at most {best} available)"
    return ""


def check_choice(terms: Terms, offer: Sequence[Acceptance], module: str) -> Acceptance:
    """The payee's side: the payer's choice must be one of its own acceptances for these terms."""
    for acc in offer:
        if acc.module == module and terms.currency in acc.currencies:
            return acc
    raise NegotiationError(f"the payee does not accept {module!r} for currency {terms.currency}")
