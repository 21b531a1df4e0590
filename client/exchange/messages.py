"""The exchange id and the signed messages of an exchange, as every party and the third party read them.

Exchange id (the binding that fixes the known flaw of this protocol family, docs/exchange.md)::

    xid = SHA-256(canonical JSON {"version": "semper-exchange/1", "protocol",
                  "originator", "responder", "ttp": certificate ids (SHA-256 of DER; ttp may be null),
                  "originator_item", "responder_item": descriptions,
                  "nonces": [originator nonce, responder nonce]})

Messages that commit a party are CMS statements (``client/support/cms.py``):

* ``xchg-proposal`` by the originator: the xid's fields with the three certificates in full, and
  for gen-ver the commitments to its generatable item;
* ``xchg-accept`` by the responder: the xid and the proposal's digest;
* ``ttp-request`` by a party to the third party: ``kind`` (resolve, abort, complaint, status),
  the xid, the proposal, and what the kind needs;
* ``decision`` by the third party: the xid, both parties, the outcome, whether it is ``final``,
  the request it answers, and (resolved) the replacement and the responder's item.

Every check a receiver makes on these is here, so the parties, the third party and the judge
cannot disagree about what a valid message is.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from msgspec import Meta

from ..support.cms import EvidenceError
from ..support.shapes import Shape, ShapeError, convert
from ..support.trust import TrustStore, Usage
from ..support.verify import VerifiedStatement, verify_statement
from ..transfer.binding import Binding, cert_id
from ..transfer.errors import TransferError
from ..transfer.items import Expectation, b64d, b64e, canonical, expectation_from_json
from ..transfer.statements import same_key
from .errors import BadMessage

VERSION = "semper-exchange/1"
Protocol = Literal["gen-ver", "rev-rev", "plain"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
Nonce = Annotated[str, Meta(min_length=16, max_length=64)]
CertificateB64 = Annotated[bytes, Meta(min_length=1, max_length=8192)]       # DER, base64 in the statement


class ProposalBody(Shape, frozen=True):
    """The signed body of an ``xchg-proposal`` (:meth:`Proposal.body_for` writes it)."""

    type: Literal["xchg-proposal"]
    version: Literal["semper-exchange/1"]
    xid: str
    protocol: Protocol
    originator: CertificateB64
    responder: CertificateB64
    ttp: CertificateB64 | None
    originator_item: dict[str, Any]             # descriptions: transfer.items reads them (depth, members)
    responder_item: dict[str, Any]
    nonces: tuple[Nonce, Nonce]
    commitments: dict[str, Any] = {}


def read(body: Any, shape: type[Any], what: str) -> Any:
    """A statement's body as its shape, or BadMessage naming the field."""
    try:
        return convert(body, shape, what)
    except ShapeError as e:
        raise BadMessage(str(e)) from None
FINAL_OUTCOMES = ("resolved", "revoked", "originator-fault", "expired")
OUTCOMES = FINAL_OUTCOMES + ("refused", "undecided")


def exchange_id(protocol: str, originator: x509.Certificate, responder: x509.Certificate,
                ttp: x509.Certificate | None, desc_o: Expectation, desc_r: Expectation, nonce_o: str,
                nonce_r: str) -> str:
    return hashlib.sha256(canonical({
        "version": VERSION, "protocol": protocol, "originator": cert_id(originator),
        "responder": cert_id(responder), "ttp": cert_id(ttp) if ttp is not None else None,
        "originator_item": desc_o.to_json(), "responder_item": desc_r.to_json(), "nonces": [nonce_o, nonce_r],
    })).hexdigest()


def cert_b64(cert: x509.Certificate) -> str:
    return b64e(cert.public_bytes(Encoding.DER))


def load_cert(value: Any, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(b64d(value, what, 8192))
    except (TransferError, ValueError) as e:
        raise BadMessage(f"the {what} is not a DER certificate ({e})") from None


def _der_cert(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise BadMessage(f"the {what} is not a DER certificate ({e})") from None


def verify(der: bytes, trust: TrustStore, what: str) -> VerifiedStatement:
    try:
        return verify_statement(der, trust)
    except EvidenceError as e:
        raise BadMessage(f"the {what} is not valid evidence: {e}") from None


def check_party_cert(cert: x509.Certificate, trust: TrustStore, what: str) -> None:
    """A certificate named in an exchange must be one the CA issued for signing evidence."""
    try:
        trust.check_certificate(cert, [], dt.datetime.now(dt.UTC), Usage.STATEMENT)
    except EvidenceError as e:
        raise BadMessage(f"the {what}'s certificate is not acceptable: {e}") from None


@dataclass(frozen=True)
class Proposal:
    """A verified proposal: who, what, which third party, and the binding for its items."""

    der: bytes
    body: Mapping[str, Any]
    binding: Binding
    desc_o: Expectation
    desc_r: Expectation
    commitments: Mapping[str, Any]

    @property
    def xid(self) -> str:
        return self.binding.xid

    @property
    def protocol(self) -> str:
        return self.binding.protocol

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @staticmethod
    def body_for(binding: Binding, desc_o: Expectation, desc_r: Expectation, nonces: tuple[str, str],
                 commitments: Mapping[str, Any]) -> dict[str, Any]:
        return {"type": "xchg-proposal", "version": VERSION, "xid": binding.xid, "protocol": binding.protocol,
                "originator": cert_b64(binding.originator), "responder": cert_b64(binding.responder),
                "ttp": cert_b64(binding.ttp) if binding.ttp is not None else None,
                "originator_item": desc_o.to_json(), "responder_item": desc_r.to_json(),
                "nonces": list(nonces), "commitments": dict(commitments)}

    @classmethod
    def verify(cls, der: bytes, trust: TrustStore) -> Proposal:
        """Signature by the originator it names, all three certificates acceptable, xid recomputed."""
        vs = verify(der, trust, "proposal")
        body = vs.body
        if body.get("type") != "xchg-proposal" or body.get("version") != VERSION:
            raise BadMessage("this is not a semper exchange proposal (type/version)")
        p: ProposalBody = read(body, ProposalBody, "the proposal")
        protocol, nonces, commitments = p.protocol, p.nonces, p.commitments
        try:
            originator = _der_cert(p.originator, "originator")
            responder = _der_cert(p.responder, "responder")
            ttp = _der_cert(p.ttp, "third party") if p.ttp is not None else None
            desc_o = expectation_from_json(p.originator_item, "originator_item")
            desc_r = expectation_from_json(p.responder_item, "responder_item")
        except TransferError as e:
            raise BadMessage(f"the proposal is malformed: {e}") from None
        if not same_key(vs.signer, originator):
            raise BadMessage("the proposal is not signed by the originator it names")
        if protocol != "plain" and ttp is None:
            raise BadMessage(f"a {protocol} proposal must name its third party")
        for cert, what in ((responder, "responder"),) + (((ttp, "third party"),) if ttp is not None else ()):
            check_party_cert(cert, trust, what)
        xid = exchange_id(protocol, originator, responder, ttp, desc_o, desc_r, nonces[0], nonces[1])
        if p.xid != xid:
            raise BadMessage("the proposal's exchange id does not match its contents (altered or mixed up)")
        return cls(der, body, Binding(xid, protocol, originator, responder, ttp), desc_o, desc_r, commitments)


def accept_body(proposal: Proposal) -> dict[str, Any]:
    return {"type": "xchg-accept", "xid": proposal.xid, "proposal_sha256": proposal.sha256}


def check_accept(der: bytes, proposal: Proposal, trust: TrustStore) -> VerifiedStatement:
    vs = verify(der, trust, "acceptance")
    if not same_key(vs.signer, proposal.binding.responder):
        raise BadMessage("the acceptance is not signed by the responder")
    if vs.body != accept_body(proposal):
        raise BadMessage("the acceptance is for another exchange or proposal")
    return vs


# ---- the third party's side ------------------------------------------------------------------
RequestKind = Literal["resolve", "abort", "complaint", "status"]
REQUEST_KINDS: tuple[str, ...] = get_args(RequestKind)


class TtpRequest(Shape, frozen=True):
    """The signed body of a ``ttp-request`` (:func:`request_body` writes it; the third party reads it)."""

    type: Literal["ttp-request"]
    kind: RequestKind
    xid: str
    proposal: Annotated[bytes, Meta(min_length=1)] | None         # the proposal statement (DER)
    # resolve: the responder's item and what generation needs. Read only when the third party
    # evaluates a resolution (transfer.items, and a refusal it keeps): an exchange already decided
    # answers with its decision whatever these hold.
    item: Any = None
    attachments: Any = None
    # rev-rev resolve: the requester's own item beside the peer's (``item``); the third party then holds
    # both, and whoever asks later gets the other's
    own: Any = None


def request_body(kind: str, proposal: Proposal | None, xid: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "ttp-request", "kind": kind, "xid": xid,
                            "proposal": b64e(proposal.der) if proposal is not None else None}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


@dataclass(frozen=True)
class Decision:
    """A verified answer of the third party for one exchange."""

    der: bytes
    body: Mapping[str, Any]

    @property
    def outcome(self) -> str:
        return str(self.body.get("outcome"))

    @property
    def final(self) -> bool:
        return self.body.get("final") is True

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", ""))


def check_decision(der: bytes, trust: TrustStore, binding: Binding | None, ttp: x509.Certificate | None,
                   xid: str | None = None) -> Decision:
    """A decision signed by the expected third party, naming this exchange (and its parties)."""
    vs = verify(der, trust, "third party's answer")
    expected_ttp = binding.ttp if binding is not None else ttp
    if expected_ttp is None or not same_key(vs.signer, expected_ttp):
        raise BadMessage(f"the answer is signed by {vs.signer_name}, not by the exchange's third party")
    body = vs.body
    want_xid = binding.xid if binding is not None else xid
    if body.get("type") != "decision" or body.get("xid") != want_xid or body.get("outcome") not in OUTCOMES:
        raise BadMessage("the third party's answer is not a decision for this exchange")
    named = (body.get("originator"), body.get("responder"))
    if binding is not None and body.get("final") is True and \
            named != (cert_id(binding.originator), cert_id(binding.responder)):
        raise BadMessage("the decision names other parties than this exchange's")
    return Decision(der, body)
