"""Deals: the security context of one business scenario, and the local decisions taken in it.

Why a context: the paper's commerce layer sets up *deals* that "signal certain commerce security
attributes to all ongoing protocols" (3.5). Here the attributes are checked by every block before
it acts: an anonymous deal makes the order block sign nothing and show no certificate, makes the
payment block require an anonymous module (e-cash), and refuses blocks that would reveal the
buyer (the fair exchange names both parties' certificates); non-repudiation makes the order block
sign on the card; fairness makes the exchange block insist on a fair protocol.

Every step ends in a :class:`Decision` written to the party's evidence archive under the deal id,
so the sequence of local decisions is itself evidence.
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..payment.negotiation import Requirements
from .archive import SharedArchive
from .errors import CommerceError

WORKFLOWS = ("mail-order", "information", "registration", "contract")


@dataclass(frozen=True)
class DealAttributes:
    """What every block of the deal must honour."""

    anonymous: bool = False           # no identity certificate, nothing signed by the buyer, anonymous payment only
    non_repudiation: bool = True      # orders and contracts signed with the buyer's card key
    fair: bool = True                 # exchanges (information, signatures) only with a fair protocol

    def __post_init__(self) -> None:
        if self.anonymous and self.non_repudiation:
            raise CommerceError("a deal cannot be anonymous and have non-repudiation: an anonymous buyer signs "
                                "nothing (choose one)")

    def payment_requirements(self) -> Requirements:
        return Requirements(anonymous=self.anonymous)

    def labels(self) -> tuple[str, ...]:
        """The attribute names the TINGUIN shows in the confirmation."""
        out = ["anonymous"] if self.anonymous else []
        if self.non_repudiation:
            out.append("non-repudiation")
        if self.fair:
            out.append("fair exchange")
        return tuple(out)

    def as_dict(self) -> dict[str, bool]:
        return {"anonymous": self.anonymous, "non_repudiation": self.non_repudiation, "fair": self.fair}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> DealAttributes:
        known = {"anonymous", "non_repudiation", "fair"}
        if not isinstance(d, Mapping) or set(d) - known or not all(isinstance(v, bool) for v in d.values()):
            raise CommerceError(f"deal attributes are {', '.join(sorted(known))} (true/false), not {d!r}")
        return DealAttributes(**{k: bool(v) for k, v in d.items()})


@dataclass(frozen=True)
class Decision:
    """One local decision: after ``step``, the party is satisfied or raises an exception or dispute."""

    step: str
    verdict: str                      # "satisfied" | "refused" | "dispute" | "declined"
    reason: str = ""

    def as_json(self) -> bytes:
        return json.dumps({"step": self.step, "verdict": self.verdict, "reason": self.reason},
                          sort_keys=True).encode()


@dataclass
class Deal:
    """One deal as one party runs it: id, workflow, attributes, and its decisions so far."""

    deal_id: str
    workflow: str
    attributes: DealAttributes
    archive: SharedArchive | None = None
    decisions: list[Decision] = field(default_factory=list)
    _archived: int = 0

    def __post_init__(self) -> None:
        if self.workflow not in WORKFLOWS:
            raise CommerceError(f"unknown workflow {self.workflow!r}; workflows: {', '.join(WORKFLOWS)}")
        check_deal_id(self.deal_id)

    def decide(self, step: str, verdict: str, reason: str = "") -> Decision:
        """Record a local decision (and return it); the caller acts on the verdict.

        Anything but ``satisfied`` is archived at once (kind ``decision``). Satisfied decisions are
        archived together by :meth:`close` (kind ``decisions``): each durable archive entry costs
        about a millisecond, and a satisfied step's own evidence is already in the archive, so a
        crash loses no fact, only the summary line saying "satisfied".
        """
        d = Decision(step, verdict, reason)
        self.decisions.append(d)
        if verdict != "satisfied":
            if self.archive is not None:
                self.archive.append(self.deal_id, "decision", d.as_json())
            self.close()
        return d

    def close(self) -> None:
        """Archive the satisfied decisions not archived yet, as one entry, and make it all durable."""
        pending = [d for d in self.decisions[self._archived:] if d.verdict == "satisfied"]
        self._archived = len(self.decisions)
        if pending and self.archive is not None:
            self.archive.append(self.deal_id, "decisions", json.dumps(
                [{"step": d.step, "verdict": d.verdict, "reason": d.reason} for d in pending]).encode())
        self.sync()

    def sync(self) -> None:
        """Everything archived for the deal so far on disk (before this party gives something)."""
        if self.archive is not None:
            self.archive.sync()

    def keep(self, kind: str, content: bytes) -> None:
        """Archive a piece of evidence under the deal (in the archive's batch, when one is open)."""
        if self.archive is not None:
            self.archive.append(self.deal_id, kind, content)

    def keep_statement(self, der: bytes, statement_type: str | None = None) -> None:
        """Archive a signed statement (``statement_type``: see ``support.archive.statement_kind``)."""
        if self.archive is not None:
            self.archive.append_statement(self.deal_id, der, statement_type=statement_type)

    def satisfied(self) -> bool:
        return bool(self.decisions) and all(d.verdict == "satisfied" for d in self.decisions)


def deal_attributes(workflow: str, anonymous: bool = False) -> DealAttributes:
    """The attributes of a workflow's deal, the same on both sides: fairness where items are exchanged."""
    fair = workflow in ("information", "contract")
    if anonymous:
        return DealAttributes(anonymous=True, non_repudiation=False, fair=fair)
    return DealAttributes(fair=fair)


def new_deal_id() -> str:
    return secrets.token_hex(16)


_HEX = frozenset("0123456789abcdef")


def check_deal_id(deal_id: Any) -> str:
    if not isinstance(deal_id, str) or len(deal_id) != 32 or not _HEX.issuperset(deal_id):
        raise CommerceError(f"a deal id is 32 lower-case hex digits, not {deal_id!r}")
    return deal_id
