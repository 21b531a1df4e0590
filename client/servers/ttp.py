"""The third party T of optimistic fair exchange: resolve, abort, complaint, status; decided once.

T acts only when a party asks, and every answer is a CMS statement signed by T's token key (type
``decision``, see ``client/exchange/messages.py``). Requests are statements signed by a party of
the exchange and carry the originator's signed proposal, so T needs no state before the first
request: the proposal names both parties, T itself, both items' descriptions and the commitments,
and its exchange id is recomputed from those.

What T decides (the fairness argument is in docs/exchange.md):

* ``resolve`` (gen-ver, by the responder, with its item): if the responder's item passes its
  manager's *external verification* against the description in the proposal, T *generates* the
  originator's item (opens the escrowed key, or signs a replacement statement) and decides
  ``resolved``, keeping the responder's item for the originator. If the originator's commitment
  turns out false, T decides ``originator-fault``. If the responder's item does not verify, the
  request is a false complaint: a signed refusal, and nothing about the exchange changes.
* ``abort`` (rev-rev, by either party): ``revoked``; both transfers are void.
* ``resolve`` in rev-rev (by either party, with both items): if both verify, ``resolved``: both
  transfers stand and T keeps both items (a revocable payment is then captured at the bank); a later
  abort gets this decision, with the peer's item.
* a gen-ver commitment the third party may act on only until a time (a reserved cheque's
  ``valid_until``): after it, with nothing decided, ``expired`` — the originator gets it back.
* ``complaint``: a resolve (gen-ver responder) or an abort (rev-rev) by another name; refused for
  the gen-ver originator (its commitment is honoured only against the responder's item, which T
  then keeps for it) and for plain transfers (no fairness was agreed).
* ``status``: the decision, or a signed ``undecided``.

A final decision is written in one transaction, under a per-exchange lock, *before* it is sent:
the table's primary key makes a second decision impossible, and after a restart the stored
decision is sent again byte for byte. Refusals to authenticated parties are kept by the request's
digest, so a replayed request gets the identical answer.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from semper.hardware.errors import SemperError
from semper.hardware.signer import Signer

from ..exchange.errors import BadMessage
from ..exchange.messages import REQUEST_KINDS, Proposal, TtpRequest, read
from ..support.cms import EvidenceError, sign_statement
from ..support.db import Database, Transaction
from ..support.trust import TrustStore
from ..support.verify import verify_statement
from ..transfer.binding import cert_id
from ..transfer.errors import CommitmentFalse, TransferError
from ..transfer.items import content_from_json
from ..transfer.managers import Managers
from ..transfer.statements import same_key
from . import ttp_store as store

log = logging.getLogger("semper.ttp")
MAX_REQUEST = 16 * 1024 * 1024
LOCK_STRIPES = 64
STEPS = ("signed", "stored")    # a final decision's two durable steps, as ThirdParty.on_step reports them


def _log_step(step: str, xid: str) -> None:
    log.debug("decision for exchange %s %s", xid, step)


class TtpError(SemperError):
    """A request the third party's service cannot take at all (it answers every other one with a signed
    decision, refusals included)."""

    http_status = 400
    code = "bad_request"


class _Refusal(SemperError):
    """Inside :meth:`ThirdParty.handle` only: the signed refusal to answer with (``keep``: store it)."""

    http_status = 422
    code = "refused"

    def __init__(self, reason: str, keep: bool) -> None:
        super().__init__(reason)
        self.reason, self.keep = reason, keep


@dataclass
class Counters:
    requests: dict[str, int] = field(default_factory=lambda: {k: 0 for k in REQUEST_KINDS})
    decisions: int = 0
    refusals: int = 0
    replays: int = 0


class ThirdParty:
    """T's decisions over one database; thread-safe (the service calls it from a thread pool)."""

    def __init__(self, db: Database, signer: Signer, certificate: x509.Certificate, trust: TrustStore,
                 managers: Managers, escrow: Any | None, *, chain: tuple[x509.Certificate, ...] = (),
                 on_step: Callable[[str, str], None] | None = None) -> None:
        self.db = db
        self.signer = signer
        self.certificate = certificate
        self.trust = trust
        self.managers = managers
        self.escrow = escrow
        self.chain = chain
        # called with (step, exchange id) as a final decision is "signed" (not yet stored) and then
        # "stored" (not yet answered): where tracing, metrics or an operator's audit hook attach
        self.on_step: Callable[[str, str], None] = on_step if on_step is not None else _log_step
        self.counters = Counters()
        self._count_lock = threading.Lock()
        self._sign_lock = threading.Lock()
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        db.migrate(store.SCHEMA)

    # ---- TtpPowers for the managers ------------------------------------------------------------
    def shared_secret(self, peer_point: bytes) -> bytes:
        if self.escrow is None:
            raise CommitmentFalse("this third party holds no escrow key; the key was escrowed elsewhere")
        return bytes(self.escrow.shared_secret(peer_point))

    def sign(self, statement: Mapping[str, Any]) -> bytes:
        with self._sign_lock:
            return sign_statement(self.signer, statement, extra_certs=self.chain)

    @property
    def ttp_id(self) -> str:
        return cert_id(self.certificate)

    def _lock(self, xid: str) -> threading.Lock:
        """One of a fixed set of locks, by the exchange id: requests for one exchange queue behind each
        other, memory stays bounded; the table's primary key decides once even across processes."""
        return self._locks[int(xid[:8], 16) % LOCK_STRIPES]

    def _count(self, name: str, kind: str | None = None) -> None:
        with self._count_lock:
            if kind is not None:
                self.counters.requests[kind] += 1
            else:
                setattr(self.counters, name, getattr(self.counters, name) + 1)

    # ---- the one entry point --------------------------------------------------------------------
    def handle(self, kind: str, request: bytes) -> bytes:
        """Answer one request (``kind`` from the endpoint); always a signed statement, never an exception
        for bad input."""
        if kind not in REQUEST_KINDS:
            raise TtpError(f"unknown request kind {kind!r}")
        self._count("requests", kind)
        digest = hashlib.sha256(request).hexdigest()
        with self.db.transaction(write=False) as tx:
            kept = store.get_answer(tx, digest)
        if kept is not None:
            self._count("replays")
            return kept
        base: dict[str, Any] = {"type": "decision", "xid": None, "final": False,
                                "request": {"kind": kind, "sha256": digest}, "ttp": self.ttp_id}
        try:
            return self._decide(kind, request, digest, base)
        except _Refusal as r:
            self._count("refusals")
            answer = self.sign({**base, "outcome": "refused", "reason": r.reason})
            if r.keep:
                refusal = answer
                answer = self.db.run(lambda tx: store.insert_answer(tx, digest, base.get("xid"), "refused", refusal))
            return answer

    def _decide(self, kind: str, request: bytes, digest: str, base: dict[str, Any]) -> bytes:
        if len(request) > MAX_REQUEST:
            raise _Refusal(f"the request is larger than {MAX_REQUEST} bytes", False)
        try:
            vs = verify_statement(request, self.trust)
        except EvidenceError as e:
            raise _Refusal(f"the request is not a valid signed statement of a certified party: {e}", False) from None
        body = vs.body
        if body.get("type") != "ttp-request" or body.get("kind") != kind:
            raise _Refusal(f"the request is not a {kind} request (type {body.get('type')!r}, kind "
                           f"{body.get('kind')!r})", False)
        base["xid"] = body.get("xid") if isinstance(body.get("xid"), str) else None
        try:
            req: TtpRequest = read(body, TtpRequest, "the request")
        except BadMessage as e:
            raise _Refusal(str(e), False) from None
        try:
            if req.proposal is None:
                raise BadMessage("the request names no proposal")
            proposal = Proposal.verify(req.proposal, self.trust)
        except (BadMessage, TransferError) as e:
            raise _Refusal(f"the request does not carry a valid proposal: {e}", False) from None
        b = proposal.binding
        if b.ttp is None or not same_key(b.ttp, self.certificate):
            raise _Refusal("the exchange names another third party; ask that one", False)
        if req.xid != b.xid:
            raise _Refusal("the request's exchange id is not the proposal's", False)
        if same_key(vs.signer, b.originator):
            role = "originator"
        elif same_key(vs.signer, b.responder):
            role = "responder"
        else:
            raise _Refusal(f"{vs.signer_name} is not a party of this exchange", False)
        base.update({"protocol": b.protocol, "originator": cert_id(b.originator), "responder": cert_id(b.responder),
                     "proposal_sha256": proposal.sha256})
        base["request"]["by"] = role
        with self._lock(b.xid):
            with self.db.transaction(write=False) as tx:
                record = store.get_record(tx, b.xid)
            if record is not None:
                self._count("replays")
                return record.decision
            outcome, extra = self._evaluate(kind, role, proposal, req)
            if outcome == "undecided":
                return self.sign({**base, "outcome": "undecided", "reason": "no decision has been made for this "
                                  "exchange; the third party acts only when a party asks it to"})
            decision = self.sign({**base, "final": True, "outcome": outcome, **extra})
            self.on_step("signed", b.xid)
            rec = store.Record(b.xid, b.protocol, cert_id(b.originator), cert_id(b.responder), outcome, decision,
                               digest, store.now_iso())

            def record_decision(tx: Transaction) -> bytes | None:
                if store.insert_record(tx, rec, request, proposal.der):
                    return None
                earlier = store.get_record(tx, b.xid)
                assert earlier is not None
                return earlier.decision

            earlier = self.db.run(record_decision)
            if earlier is not None:
                return earlier
            self._count("decisions")
            self.on_step("stored", b.xid)
            return decision

    def _evaluate(self, kind: str, role: str, proposal: Proposal, req: TtpRequest) -> tuple[str, dict[str, Any]]:
        """(outcome, fields) for an undecided exchange, or _Refusal."""
        protocol = proposal.protocol
        b = proposal.binding
        # gen-ver: a commitment the third party may act on only until a time (a reserved cheque's
        # valid_until): after it, and with nothing decided, the exchange is over and its drawer gets it back
        limit = self.managers.deadline(proposal.commitments, proposal.desc_o) if protocol == "gen-ver" else None
        if limit is not None and time.time() > limit and kind in ("status", "resolve", "complaint"):
            return "expired", {"reason": "the originator's commitment could be released by the third party only "
                                         f"until {limit} (POSIX time); nobody resolved before, so it goes back to "
                                         "the originator and the exchange did not happen"}
        if kind == "status":
            return "undecided", {}
        if kind == "complaint":
            if protocol == "plain":
                raise _Refusal("no fairness was agreed for these plain transfers; the third party has no power over "
                               "them (take your evidence to the judge)", True)
            if protocol == "gen-ver" and role == "originator":
                raise _Refusal("the originator of a gen-ver exchange needs no third party: its commitment is "
                               "honoured only against the responder's item, which the third party then keeps for it "
                               "(ask for the status)", True)
            kind = "resolve" if protocol == "gen-ver" else "abort"
        if kind == "abort":
            if protocol != "rev-rev":
                raise _Refusal(f"abort is for rev-rev exchanges; this one is {protocol}"
                               + (" (the responder resolves; the originator asks for the status)"
                                  if protocol == "gen-ver" else ""), True)
            return "revoked", {"reason": f"the {role} asked to abort; both transfers of this exchange are revoked "
                                         "and void"}
        # resolve
        if protocol == "rev-rev":
            return self._resolve_revocable(role, proposal, req)
        if protocol != "gen-ver" or role != "responder":
            raise _Refusal("only the responder of a gen-ver exchange, or either party of a rev-rev exchange, can "
                           "ask for a resolution", True)
        try:
            item = content_from_json(req.item, "item")
            kept = self.managers.check(item, proposal.desc_r, b, b.responder)
        except TransferError as e:
            raise _Refusal(f"false complaint: the responder's item does not verify against the agreed description "
                           f"({e}); the exchange stays as it was", True) from None
        attachments = req.attachments or {}
        if not isinstance(attachments, Mapping):
            raise _Refusal("the attachments must be a JSON object", True)
        try:
            replacement = self.managers.generate(proposal.commitments, attachments, proposal.desc_o, b, self)
        except CommitmentFalse as e:
            return "originator-fault", {"reason": f"the responder's item verified, but the originator's signed "
                                                  f"commitment is false: {e}", "responder_item": kept.to_json()}
        except TransferError as e:
            raise _Refusal(f"the request lacks what the third party needs to generate the originator's item: {e}",
                           True) from None
        return "resolved", {"reason": "the responder's item verified against the agreed description; the third "
                                      "party generated the originator's item in its place",
                            "replacement": replacement, "responder_item": kept.to_json()}

    def _resolve_revocable(self, role: str, proposal: Proposal, req: TtpRequest) -> tuple[str, dict[str, Any]]:
        """rev-rev: a party holding the peer's item hands in both; if both verify against the agreed
        descriptions, both stand (``resolved``) and T keeps them: a later abort by either gets the other's."""
        b = proposal.binding
        peer = "responder" if role == "originator" else "originator"
        descs = {"originator": proposal.desc_o, "responder": proposal.desc_r}
        items = {peer: req.item, role: req.own}
        kept = {}
        for who, raw in items.items():
            try:
                item = content_from_json(raw, f"the {who}'s item")
                kept[who] = self.managers.check(item, descs[who], b, b.party(who))
            except TransferError as e:
                raise _Refusal(f"false complaint: the {who}'s item does not verify against the agreed description "
                               f"({e}); the exchange stays as it was", True) from None
        return "resolved", {"reason": f"the {role} handed in both items and both verified: both transfers stand; "
                                      "the third party keeps them for both parties",
                            "originator_item": kept["originator"].to_json(),
                            "responder_item": kept["responder"].to_json()}

    def stats(self) -> dict[str, Any]:
        with self.db.transaction(write=False) as tx:
            stored = store.counts(tx)
        with self._count_lock:
            requests = dict(self.counters.requests)
        return {"requests": requests, "total_requests": sum(requests.values()),
                "decisions": self.counters.decisions, "refusals": self.counters.refusals,
                "replays": self.counters.replays, "stored": stored}


def escrow_statement(sign: Callable[[Mapping[str, Any]], bytes], point: bytes, key_id: str) -> bytes:
    """T's signed publication of its escrow key: originators seal keys to the point it names."""
    return sign({"type": "escrow-key", "point": point.hex(), "key_id": key_id,
                 "algorithm": "ECIES P-256 HKDF-SHA256 AES-256-GCM (semper-escrow/1)"})
