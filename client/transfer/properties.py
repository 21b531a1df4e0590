"""Exchange-enabling properties of a transfer (paper §3.4).

* *verifiable*: the third party can check that the transfer happened and carried the described item;
* *generatable*: the third party can produce an equivalent item in the sender's place;
* *revocable*: the third party can undo the transfer.

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

    @staticmethod
    def weakest(members: Iterable[Properties]) -> Properties:
        ps = list(members)
        if not ps:                     # the empty package ("nothing"): trivially all three
            return Properties(True, True, True)
        return Properties(all(p.verifiable for p in ps), all(p.generatable for p in ps),
                          all(p.revocable for p in ps))

    def as_dict(self) -> dict[str, bool]:
        return {"verifiable": self.verifiable, "generatable": self.generatable, "revocable": self.revocable}

    def __str__(self) -> str:
        names = [n for n, v in self.as_dict().items() if v]
        return ", ".join(names) if names else "none"
