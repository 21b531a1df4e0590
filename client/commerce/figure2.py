"""Every cell of the paper's Figure 2 as something a person does, through the TINGUIN.

Figure 2 (paper §2.1) lists the transfers and fair exchanges of the three primitive items: money,
signatures, information. The exchange layer already runs any of them from the items' properties
(gen-ver, rev-rev, plain); this module is the user's side of it, between two *persons* (the shop's
workflows are ``workflows.py``):

=============================  ===========================  ==========================================
cell (originator gives / gets)  items                        protocol (negotiated from the properties)
=============================  ===========================  ==========================================
payment                        money / nothing               plain (a transfer)
signature transfer             signature / nothing           plain
information transfer           information / nothing         plain
fair money exchange            cheque / e-cash               gen-ver (reserved cheque generatable)
fair payment with receipt      receipt / money               gen-ver; rev-rev for SET and a revocable one
fair purchase                  information / money           gen-ver
fair contract signing          signature / signature         gen-ver (statements are generatable)
certified mail                 information / signed receipt  gen-ver
fair information exchange      information / information     gen-ver
=============================  ===========================  ==========================================

Each side confirms in the TINGUIN, before anything is sent or armed, exactly what it gives, what it
expects, with whom (the peer's certificate, checked here; the exchange refuses any other key) and what
keeps it fair; the result, with the exchange's evidence, is shown in the TINGUIN too. The originator
runs :func:`originate`; the responder confirms a *standing* offer with :func:`respond`, which answers
the next matching negotiation (from the named peer only, when one is named).
"""
from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from ..exchange.errors import ExchangeError
from ..exchange.identity import Identity, TtpInfo
from ..exchange.messages import check_party_cert
from ..exchange.negotiation import choose_protocol
from ..exchange.outcome import Outcome
from ..exchange.party import ResponsePlan
from ..payment.item import ItemPayer
from ..payment.manager import PaymentManager
from ..support.money import format_amount
from ..support.trust import TrustStore
from ..tinguin.confirmation import digest as confirmation_digest
from ..tinguin.model import DealOutcome, EvidenceItem, ExchangeRequest, OutcomeStatus, Party, ProgressStep, StepState
from ..transfer.errors import TransferError
from ..transfer.information import InformationOffer
from ..transfer.items import NOTHING_EXPECTED, Description, Expectation
from ..transfer.managers import OfferTree, PackageOffer
from ..transfer.payment import PaymentOffer
from ..transfer.statements import CredentialOffer, StatementOffer
from .errors import CommerceError, DealAborted, DealDeclined
from .exchange_client import ExchangeClient


# ---- the items a person names ------------------------------------------------------------------------
@dataclass(frozen=True)
class Money:
    module: str
    amount: int                              # minor units
    currency: int                            # ISO 4217 numeric


@dataclass(frozen=True)
class Signature:
    """A statement signed by its giver: ``{"type": statement_type, **fields}`` (an expectation matches the
    fields given, a subset of the signed ones). ``revocable``: a credential with those attributes issued
    revocable by the third party (what rev-rev needs against a revocable SET payment; a plain statement is
    generatable, so it goes into gen-ver)."""

    statement_type: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    revocable: bool = False


@dataclass(frozen=True)
class Information:
    """Information given (``data``) or expected (``sha256`` and ``length``, from the data's owner)."""

    name: str
    data: bytes | None = None
    sha256: str | None = None
    length: int | None = None

    def digest(self) -> tuple[str, int]:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest(), len(self.data)
        if self.sha256 is None or self.length is None:
            raise CommerceError("expected information is named by its SHA-256 and length")
        return self.sha256, self.length


Thing = Money | Signature | Information | None         # None: nothing (the other side of a transfer)


def kind(x: Thing) -> str:
    return {Money: "money", Signature: "signature", Information: "information"}.get(type(x), "nothing")


# ---- the cells --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    key: str
    title: str
    kinds: frozenset[str]                    # the two primitive types (one for same-type exchanges)
    transfer: bool
    how: str = ""                            # which items and protocol (as the tests run it)


CELLS: dict[str, Cell] = {c.key: c for c in (
    Cell("payment", "payment (a transfer of money)", frozenset({"money"}), True, "any module / nothing: plain"),
    Cell("signature-transfer", "signature transfer", frozenset({"signature"}), True, "a statement / nothing: plain"),
    Cell("information-transfer", "information transfer", frozenset({"information"}), True,
         "data / nothing: plain"),
    Cell("fair-money-exchange", "fair money exchange", frozenset({"money"}), False,
         "reserved cheque (generatable) / e-cash or card purse (verifiable): gen-ver"),
    Cell("fair-payment-with-receipt", "fair payment with receipt", frozenset({"money", "signature"}), False,
         "receipt / e-cash, cheque or card purse: gen-ver; revocable credential / SET: rev-rev"),
    Cell("fair-purchase", "fair purchase", frozenset({"money", "information"}), False,
         "information / e-cash or card purse: gen-ver; reserved cheque / information: gen-ver"),
    Cell("fair-contract-signing", "fair contract signing", frozenset({"signature"}), False,
         "statement / statement: gen-ver"),
    Cell("certified-mail", "certified mail", frozenset({"signature", "information"}), False,
         "information / signed receipt of its digest: gen-ver"),
    Cell("fair-information-exchange", "fair information exchange", frozenset({"information"}), False,
         "information / information: gen-ver"),
)}


def cell_for(give: Thing, expect: Thing) -> Cell:
    """The Figure 2 cell of giving ``give`` for ``expect`` (either may be nothing: a transfer)."""
    kinds = {kind(give), kind(expect)}
    transfer = "nothing" in kinds
    kinds.discard("nothing")
    if not kinds:
        raise CommerceError("nothing for nothing is not an exchange")
    for cell in CELLS.values():
        if cell.kinds == kinds and cell.transfer == transfer:
            return cell
    raise CommerceError(f"no Figure 2 cell for {kind(give)} against {kind(expect)}")


# ---- the person ------------------------------------------------------------------------------------------
@dataclass
class Person:
    """What a person's client brings to a Figure 2 exchange: the key it signs with, its payment manager
    with the public payment checks, its exchange party (in a background loop) and the third party."""

    identity: Identity
    payments: PaymentManager
    verifiers: Mapping[str, Any]
    exchange: ExchangeClient
    trust: TrustStore
    ttp: TtpInfo | None = None
    payer_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)   # module -> ItemPayer kw


def _attributes(x: Signature) -> dict[str, Any]:
    return {"statement": x.statement_type, **dict(x.fields)}


def make_offer(person: Person, x: Thing) -> OfferTree:
    """The offer for what this person gives (made by its own managers, signed with its own key)."""
    if isinstance(x, Money):
        verifier = person.verifiers.get(x.module)
        if verifier is None:
            raise DealAborted(f"{x.module} payments cannot be checked by a third party here: not in an exchange")
        payer = ItemPayer(person.payments, x.module, verifier, **dict(person.payer_options.get(x.module, {})))
        return PaymentOffer(payer, x.amount, x.currency)
    if isinstance(x, Signature) and x.revocable:
        return CredentialOffer(person.identity.sign, _attributes(x), revocable=True)
    if isinstance(x, Signature):
        return StatementOffer(person.identity.sign, {"type": x.statement_type, **dict(x.fields)})
    if isinstance(x, Information):
        if x.data is None:
            raise CommerceError("information you give needs its data")
        return InformationOffer(x.data, x.name)
    return PackageOffer((), "nothing")


def describe(x: Thing) -> Expectation:
    """The description of what this person expects: checked against what arrives before it counts."""
    if isinstance(x, Money):
        return Description("payment", {"module": x.module, "amount": x.amount, "currency": x.currency})
    if isinstance(x, Signature) and x.revocable:
        return Description("credential", {"attributes": _attributes(x), "revocable": True})
    if isinstance(x, Signature):
        return Description("statement", {"statement_type": x.statement_type, "fields": dict(x.fields)})
    if isinstance(x, Information):
        sha, length = x.digest()
        return Description("information", {"sha256": sha, "length": length, "name": x.name})
    return NOTHING_EXPECTED


def lines(x: Thing) -> tuple[tuple[str, str], ...]:
    """(label, value) lines the TINGUIN shows for an item: every term that will be made or checked."""
    if isinstance(x, Money):
        return (("payment", f"{format_amount(x.amount, x.currency)} by {x.module}"),)
    if isinstance(x, Signature):
        out = [("signed statement", x.statement_type + (" (revocable by the third party)" if x.revocable else ""))]
        out += [(f"  {k}", str(v)) for k, v in sorted(x.fields.items())]
        return tuple(out)
    if isinstance(x, Information):
        sha, length = x.digest()
        return (("information", x.name), ("  length", f"{length} bytes"), ("  SHA-256", sha))
    return ()


FAIRNESS = {
    "gen-ver": "gen-ver: the originator's item can be made by the third party in its place, the responder's "
               "checked by it; whoever stops, the third party gives the honest side what it was promised, or "
               "its signed decision.",
    "rev-rev": "rev-rev: both items can be revoked by the third party; if either does not arrive, the third "
               "party voids both, and a revocable payment is final only with its 'resolved'.",
    "plain": "none: a transfer (or an exchange without fairness). What you give is given once it is sent; the "
             "signed proposal and acceptance are the evidence.",
}


def protocol_of(person: Person, give: Thing, expect: Thing, fair: bool) -> str:
    m = person.exchange.party.managers
    if kind(give) == "nothing" or kind(expect) == "nothing":
        return "plain"
    try:
        return choose_protocol(m.properties(describe(give)), m.properties(describe(expect)), fair)
    except TransferError as e:
        raise DealAborted(str(e)) from None


# ---- the workflows ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerResult:
    cell: str
    deal_id: str
    status: OutcomeStatus
    summary: str
    outcome: Outcome | None
    evidence: tuple[EvidenceItem, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is OutcomeStatus.SATISFIED


ENDINGS = {
    "completed": (OutcomeStatus.SATISFIED, "both items exchanged"),
    "resolved": (OutcomeStatus.SATISFIED, "finished by the third party: you hold what you expected"),
    "revoked": (OutcomeStatus.CANCELLED, "the third party revoked both transfers: nobody owes anything"),
    "expired": (OutcomeStatus.CANCELLED, "nobody resolved in time: the commitment went back to its giver"),
    "no-exchange": (OutcomeStatus.CANCELLED, "the exchange did not take place: nothing was given"),
    "pending": (OutcomeStatus.DISPUTE, "you gave nothing unconditional; the third party has not decided yet: "
                                      "ask again later (your archive holds its signed answer)"),
    "originator-fault": (OutcomeStatus.DISPUTE, "the third party found the other side's commitment false: its "
                                                "signed finding is your evidence"),
    "refused": (OutcomeStatus.DISPUTE, "the third party refused the request: its signed reason is in your archive"),
    "failed": (OutcomeStatus.DISPUTE, "the other side did not deliver (no fairness was agreed): your archive holds "
                                      "the signed proposal and acceptance"),
    "stopped": (OutcomeStatus.FAILED, "this client stopped the exchange"),
}


def _evidence(person: Person, outcome: Outcome) -> tuple[EvidenceItem, ...]:
    if outcome.xid is None:
        return ()
    return tuple(EvidenceItem(kind, f"exchange {outcome.xid[:16]}…", hashlib.sha256(content).hexdigest(), n)
                 for n, (kind, content) in enumerate(person.exchange.evidence(outcome.xid)))


def _step(ui: Any, key: str, title: str, state: StepState, detail: str = "") -> None:
    ui.progress(ProgressStep(key, title, state, detail))


def _confirm(ui: Any, request: ExchangeRequest) -> None:
    answer = ui.confirm(request)
    if not answer.accepted:
        raise DealDeclined("you declined the exchange in the TINGUIN; nothing was sent or offered")
    if confirmation_digest(answer.shown_text) != answer.digest:
        raise CommerceError("the TINGUIN's confirmation digest does not match its text")


def _finish(ui: Any, person: Person, cell: Cell, deal_id: str, outcome: Outcome | None, summary: str | None = None
            ) -> PeerResult:
    if outcome is None:
        status, text = OutcomeStatus.CANCELLED, summary or "nobody asked for this exchange in time: nothing was given"
        evidence: tuple[EvidenceItem, ...] = ()
    else:
        status, text = ENDINGS.get(outcome.status, (OutcomeStatus.FAILED, outcome.status))
        text = f"{cell.title}: {text} ({outcome.status}; {outcome.reason})"
        evidence = _evidence(person, outcome)
    _step(ui, "exchange", "exchange", StepState.DONE if status is OutcomeStatus.SATISFIED else StepState.FAILED,
          outcome.status if outcome else "no exchange")
    ui.result(DealOutcome(deal_id, status, text, evidence))
    return PeerResult(cell.key, deal_id, status, text, outcome, evidence)


def _request(person: Person, cell: Cell, deal_id: str, peer: x509.Certificate | None, address: str,
             give: Thing, expect: Thing, protocol: str) -> ExchangeRequest:
    if protocol != "plain" and person.ttp is None:
        raise DealAborted(f"a {cell.title} needs a third party; configure one")
    if peer is not None:
        try:
            check_party_cert(peer, person.trust, "peer")       # shown as checked: it is, here
        except ExchangeError as e:
            raise DealAborted(f"the other party's certificate does not check: {e}") from None
    return ExchangeRequest(cell=f"{cell.title} ({protocol})", deal_id=deal_id,
                           peer=Party.from_certificate(peer) if peer is not None else None, peer_address=address,
                           give=lines(give), expect=lines(expect), fairness=FAIRNESS[protocol],
                           third_party=(Party.from_certificate(person.ttp.certificate)
                                        if protocol != "plain" and person.ttp is not None else None),
                           signer=Party.from_certificate(person.identity.certificate))


def originate(ui: Any, person: Person, peer_url: str, peer: x509.Certificate, give: Thing, expect: Thing, *,
              fair: bool = True, patience: float = 60.0, deal_id: str | None = None) -> PeerResult:
    """Give ``give`` for ``expect`` to the person whose certificate is ``peer``, at ``peer_url``."""
    cell = cell_for(give, expect)
    deal_id = deal_id or secrets.token_hex(8)
    fair = fair and not cell.transfer
    protocol = protocol_of(person, give, expect, fair)
    _step(ui, "confirm", "confirm in the TINGUIN", StepState.RUNNING)
    _confirm(ui, _request(person, cell, deal_id, peer, peer_url, give, expect, protocol))
    _step(ui, "confirm", "confirm in the TINGUIN", StepState.DONE)
    _step(ui, "exchange", f"{cell.title} ({protocol})", StepState.RUNNING)
    offer, want = make_offer(person, give), describe(expect)
    outcome = person.exchange.originate(peer_url, offer, want, patience, fair=fair, responder=peer)
    return _finish(ui, person, cell, deal_id, outcome)


def respond(ui: Any, person: Person, give: Thing, expect: Thing, *, peer: x509.Certificate | None = None,
            fair: bool | None = True, patience: float = 60.0, deal_id: str | None = None) -> PeerResult:
    """Confirm a standing offer (give ``give`` for ``expect``, to ``peer`` only when named) and answer
    the next matching exchange within ``patience`` seconds."""
    cell = cell_for(expect, give)                  # named from the originator's side
    deal_id = deal_id or secrets.token_hex(8)
    protocol = protocol_of(person, expect, give, bool(fair) and not cell.transfer)
    _step(ui, "confirm", "confirm in the TINGUIN", StepState.RUNNING)
    _confirm(ui, _request(person, cell, deal_id, peer, "(the originator's, when it asks)", give, expect, protocol))
    _step(ui, "confirm", "confirm in the TINGUIN", StepState.DONE)
    _step(ui, "exchange", f"{cell.title} ({protocol}): waiting for the other side", StepState.RUNNING)
    plan = ResponsePlan(describe(expect), make_offer(person, give), fair=None if cell.transfer else fair,
                        originator=peer)
    known = person.exchange.expect(plan)
    try:
        outcome = person.exchange.wait(known, patience)
    finally:
        person.exchange.withdraw(plan)
    return _finish(ui, person, cell, deal_id, outcome)


__all__ = ["CELLS", "FAIRNESS", "Cell", "Information", "Money", "PeerResult", "Person", "Signature", "cell_for",
           "describe", "kind", "lines", "make_offer", "originate", "respond"]
