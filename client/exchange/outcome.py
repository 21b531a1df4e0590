"""How an exchange ended for one party: what it holds, what it gave, and its evidence.

``status`` values:

* ``completed`` — the peer's item arrived and checked; this party's item went out (or was not due);
* ``resolved`` — the third party decided ``resolved``: the responder holds T's replacement of the
  originator's item, the originator holds the responder's item from T's decision;
* ``revoked`` — the third party revoked both transfers (rev-rev): neither side owes anything;
* ``expired`` — gen-ver with a commitment the third party may act on only until a time (a reserved
  cheque): nobody resolved before it, the third party decided so, and the originator gets its
  commitment back;
* ``originator-fault`` — T found the originator's signed commitment false: the responder holds T's
  signed finding;
* ``refused`` — T refused this party's request (a false complaint), with its signed reason;
* ``pending`` — this party gave nothing unconditional yet and T has not decided (its signed
  ``undecided`` is the evidence); the exchange can still be resolved by the peer, and
  :meth:`Party.recover` asks again;
* ``no-exchange`` — the exchange never started (refused in negotiation or at the proposal): nothing
  was given;
* ``failed`` — a plain transfer where the peer did not deliver (no fairness was agreed);
* ``stopped`` — this party stopped on purpose (its :class:`~.run.Outbox` ended the run).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..transfer.items import Content

HONEST_END = ("completed", "resolved", "revoked", "originator-fault", "pending", "no-exchange", "expired")


@dataclass
class Outcome:
    session: str
    role: str
    status: str
    reason: str = ""
    xid: str | None = None
    protocol: str | None = None
    received: Content | None = None
    gave: bool = False                   # this party's item went out unconditionally (or via T)
    decision: bytes | None = None        # the third party's last signed answer, if any
    messages_sent: int = 0
    ttp_requests: int = 0
    details: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"session": self.session, "role": self.role, "status": self.status, "reason": self.reason,
                "xid": self.xid, "protocol": self.protocol, "received": self.received is not None,
                "gave": self.gave, "decision": self.decision is not None, "messages_sent": self.messages_sent,
                "ttp_requests": self.ttp_requests}
