"""The offline arbiter: read one party's evidence bundle of an exchange and rule who fulfilled what.

The judge trusts only its own CA roots and the payment verifiers it is given (the payment layer's
``item_verifiers``, e.g. the card purse's under the scheme root: the caller builds them, because the
exchange layer knows no payment system). It checks
the bundle's hash chain and signed checkpoint (``client/support/archive.py``), but its ruling rests
on evidence that proves itself: the originator's signed proposal (with its commitments), the
responder's signed acceptance, items checked by their managers against the descriptions the
proposal fixes (a card-signed debit proof, a key that decrypts the committed ciphertext to the
committed digest, a signed statement), and the third party's signed decisions. An unsigned entry
that does not check counts for nothing, so a party cannot improve its case by editing its archive.

For each side the ruling says ``fulfilled`` (true/false), ``how`` (delivered, by the third party's
replacement, revoked, ...) and the reasons; then an overall sentence and whether the outcome is fair.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..support.archive import BadBundle, verify_bundle
from ..support.trust import TrustStore
from ..transfer.errors import TransferError
from ..transfer.information import InformationManager
from ..transfer.items import Content, content_from_json
from ..transfer.managers import Managers
from ..transfer.payment import PaymentManager, PaymentVerifier
from ..transfer.statements import CredentialManager, StatementManager
from .errors import BadMessage
from .messages import Decision, Proposal, check_accept, check_decision


@dataclass
class Side:
    role: str
    name: str = ""
    fulfilled: bool = False
    how: str = "no evidence"
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "name": self.name, "fulfilled": self.fulfilled, "how": self.how,
                "reasons": self.reasons}


@dataclass
class Ruling:
    bundle_ok: bool
    bundle_problems: list[str]
    xid: str | None = None
    protocol: str | None = None
    originator: Side = field(default_factory=lambda: Side("originator"))
    responder: Side = field(default_factory=lambda: Side("responder"))
    third_party: list[dict[str, Any]] = field(default_factory=list)
    ruling: str = ""
    fair: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"bundle": {"ok": self.bundle_ok, "problems": self.bundle_problems},
                "exchange": {"xid": self.xid, "protocol": self.protocol},
                "originator": self.originator.as_dict(), "responder": self.responder.as_dict(),
                "third_party": self.third_party, "ruling": self.ruling, "fair": self.fair}


def judge_managers(trust: TrustStore, payments: Mapping[str, PaymentVerifier] | None = None) -> Managers:
    return Managers(StatementManager(trust), CredentialManager(trust), InformationManager(),
                    PaymentManager(dict(payments or {})))


def _entries(path: Path) -> list[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
            return [(str(e["kind"]), z.read(str(e["file"]))) for e in manifest["entries"]]
    except (KeyError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise BadBundle(f"{path} is not a readable evidence bundle ({e})") from None


def judge(path: Path, trust: TrustStore, payments: Mapping[str, PaymentVerifier] | None = None) -> Ruling:
    """Rule on the exchange whose evidence bundle is at ``path``; see the module docstring. ``payments``:
    module name -> verifier of its proofs (without one, a payment item counts for nothing)."""
    report = verify_bundle(Path(path), trust)
    ruling = Ruling(report.ok, [p.message for p in report.problems])
    entries = _entries(Path(path))
    managers = judge_managers(trust, payments)
    proposal = None
    for kind, content in entries:
        if kind == "statement:xchg-proposal":
            try:
                proposal = Proposal.verify(content, trust)
                break
            except BadMessage as e:
                ruling.bundle_problems.append(f"a proposal in the bundle does not verify: {e}")
    if proposal is None:
        ruling.ruling = "no valid signed proposal: there is no exchange to rule on; nobody owes anything under it"
        ruling.fair = True
        return ruling
    b = proposal.binding
    ruling.xid, ruling.protocol = b.xid, b.protocol
    ruling.originator.name = b.originator.subject.rfc4514_string()
    ruling.responder.name = b.responder.subject.rfc4514_string()

    accepted = False
    decisions: list[Decision] = []
    attachments: Mapping[str, Any] = {}
    candidates: dict[str, list[Content]] = {"originator": [], "responder": []}
    for kind, content in entries:
        if kind == "statement:xchg-accept":
            try:
                check_accept(content, proposal, trust)
                accepted = True
            except BadMessage as e:
                ruling.bundle_problems.append(f"an acceptance does not verify: {e}")
        elif kind == "statement:decision":
            try:
                decisions.append(check_decision(content, trust, b, None))
            except BadMessage as e:
                ruling.bundle_problems.append(f"a third-party answer does not verify: {e}")
        elif kind == "attachments":
            attachments = json.loads(content).get("attachments", {})
        elif kind.startswith("item:"):
            try:
                obj = json.loads(content)
                item = content_from_json(obj.get("item"))
            except (ValueError, TransferError):
                continue
            archived_by = obj.get("role")
            direction = kind.split(":", 1)[1]
            other = "responder" if archived_by == "originator" else "originator"
            owner = archived_by if direction == "sent" else other
            candidates[owner].append(item)
    for d in decisions:
        ruling.third_party.append({"outcome": d.outcome, "final": d.final, "reason": d.reason,
                                   "asked_by": (d.body.get("request") or {}).get("by"),
                                   "request": (d.body.get("request") or {}).get("kind")})
    finals = [d for d in decisions if d.final]
    final = finals[0] if finals else None
    if len({d.outcome for d in finals}) > 1:
        ruling.bundle_problems.append("the third party made conflicting final decisions for this exchange")
    if final is not None and final.outcome == "resolved":
        for who in ("responder", "originator"):         # rev-rev resolutions keep both items
            item_json = final.body.get(f"{who}_item")
            if item_json is not None:
                try:
                    candidates[who].append(content_from_json(item_json))
                except TransferError:
                    pass

    o, r = ruling.originator, ruling.responder
    if final is not None and final.outcome == "revoked":
        for side in (o, r):
            side.fulfilled, side.how = True, "revoked"
            side.reasons.append(f"the third party revoked both transfers: {final.reason}")
        ruling.ruling = "both transfers were revoked by the third party: the start is restored, neither owes anything"
        ruling.fair = True
        return ruling

    # the responder's item
    for item in candidates["responder"]:
        try:
            managers.check(item, proposal.desc_r, b, b.responder)
            r.fulfilled, r.how = True, "delivered"
            r.reasons.append("a valid item of it is in the evidence: it verifies against the description in the "
                             "signed proposal"
                             + (" (the third party kept it for the originator)" if final is not None and
                                final.outcome == "resolved" else ""))
            break
        except TransferError as e:
            r.reasons.append(f"an item attributed to it does not verify: {e}")
    if not r.fulfilled:
        r.reasons.append("no valid item of the responder is in the evidence"
                         + ("" if accepted else " (and no signed acceptance)"))

    # the originator's item
    for item in candidates["originator"]:
        try:
            if b.protocol == "gen-ver":
                managers.check_release(item, proposal.commitments, attachments, proposal.desc_o, b)
            else:
                managers.check(item, proposal.desc_o, b, b.originator)
            o.fulfilled, o.how = True, "delivered"
            o.reasons.append("a valid item of it is in the evidence: it verifies against "
                             + ("its signed commitment" if b.protocol == "gen-ver" else "the agreed description"))
            break
        except TransferError as e:
            o.reasons.append(f"an item attributed to it does not verify: {e}")
    if not o.fulfilled and final is not None and final.outcome == "resolved":
        try:
            managers.check_replacement(final.body.get("replacement") or {}, proposal.commitments, attachments,
                                       proposal.desc_o, b)
            o.fulfilled, o.how = True, "by the third party's replacement"
            o.reasons.append("the third party generated its item in its place after verifying the responder's item")
        except TransferError as e:
            o.reasons.append(f"the third party's replacement does not check: {e}")
    if not o.fulfilled and final is not None and final.outcome == "expired":
        o.how = "commitment expired"
        o.reasons.append(f"the third party found that its commitment expired before anyone resolved: {final.reason}")
    if not o.fulfilled and final is not None and final.outcome == "originator-fault":
        o.how = "commitment false"
        o.reasons.append(f"the third party found its signed commitment false: {final.reason}")
    if not o.fulfilled and o.how == "no evidence":
        o.reasons.append("no valid item of the originator is in the evidence")

    for d in decisions:
        if d.outcome == "refused":
            side = r if (d.body.get("request") or {}).get("by") == "responder" else o
            side.reasons.append(f"the third party refused its request: {d.reason}")

    if o.fulfilled and r.fulfilled:
        ruling.ruling = "both parties fulfilled: the exchange is complete"
        ruling.fair = True
    elif r.fulfilled and o.how == "commitment expired":
        ruling.ruling = ("the responder gave its item but did not resolve before the originator's commitment expired "
                         "(the deadline was in the signed proposal): the commitment went back; the responder's "
                         "claim is outside the exchange")
        ruling.fair = False
    elif r.fulfilled:
        ruling.ruling = ("the responder fulfilled and the originator did not: the originator owes its item (its "
                         "signed commitment and the third party's finding are the evidence)"
                         if o.how == "commitment false" else
                         "the responder fulfilled; the originator's item is not in this evidence: the responder "
                         "is entitled to a resolution by the third party")
        ruling.fair = False
    elif o.fulfilled:
        ruling.ruling = ("the originator fulfilled and the responder did not: the responder owes its item")
        ruling.fair = False
    else:
        ruling.ruling = "neither party gave its item: no exchange took place and nobody owes anything"
        ruling.fair = True
    return ruling
