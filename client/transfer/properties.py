"""Properties of a transfer: the exchange-enabling ones (paper §3.4) and anonymity.

* *verifiable*: the third party can check that the transfer happened and carried the described item;
* *generatable*: the third party can produce an equivalent item in the sender's place;
* *revocable*: the third party can undo the transfer;
* *anonymous*: the item does not name its sender (information does; a signature never; a payment as
  its module declares: e-cash is, the card purse names the card). The transfer layer reads it from the
  item's manager, and for payments the manager reads the module's own declaration, so
  :func:`~.attributes.check_attributes` and the payment modules cannot disagree.

A package has a property only if every member has it: the third party must be able to act on the
package as a whole, because packages are exchanged as a whole.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Properties:
    verifiable: bool = False
    generatable: bool = False
    revocable: bool = False
    anonymous: bool = False

    @staticmethod
    def weakest(members: Iterable[Properties]) -> Properties:
        ps = list(members)
        if not ps:                     # the empty package ("nothing"): trivially all of them
            return Properties(True, True, True, True)
        return Properties(all(p.verifiable for p in ps), all(p.generatable for p in ps),
                          all(p.revocable for p in ps), all(p.anonymous for p in ps))

    def as_dict(self) -> dict[str, bool]:
        return {"verifiable": self.verifiable, "generatable": self.generatable, "revocable": self.revocable,
                "anonymous": self.anonymous}

    def __str__(self) -> str:
        """The exchange-enabling ones, as the fairness messages name them."""
        names = [n for n in ("verifiable", "generatable", "revocable") if getattr(self, n)]
        return ", ".join(names) if names else "none"
