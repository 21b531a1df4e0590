"""Signed statements and credentials as business items (CMS statements, ``client/support/cms.py``).

Statement description terms: ``statement_type`` (the statement's ``type``), ``fields`` (values the
body must contain, compared as in :func:`.managers.satisfies`), ``revocable`` (bool). A credential
is a signed attribute statement (``type: credential``) issued by the sender; its terms are
``attributes`` and ``revocable``.

Every statement made for an exchange names it: ``"exchange": {"xid", "ttp"}`` in its body. A
*revocable* one also carries ``"revocable_by": <third party's certificate id>``: it is void once
that third party decides ``revoked`` for the exchange, which is how the third party undoes the
transfer (the judge and the receiver's manager honour the decision).

Statements are *verifiable* (anyone checks the signature against the CA) and *generatable*: in a
fair exchange the originator commits to the body inside its signed proposal, and the third party
can replace the originator's signature by its own *replacement statement* naming the exchange, the
originator and the committed body. Credentials are verifiable, and revocable when issued so; not
generatable (the third party does not issue credentials in another's name).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..support.cms import EvidenceError, canonical_json
from ..support.trust import TrustStore
from ..support.verify import VerifiedStatement, verify_statement
from .binding import Binding, cert_id
from .errors import ItemMismatch, MalformedItem
from .items import Description, Item, b64d, b64e
from .managers import EscrowTarget, ManagerBase, OfferBase, TtpPowers, satisfies
from .properties import Properties

Sign = Callable[[Mapping[str, Any]], bytes]
MAX_STATEMENT = 256 * 1024


def same_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_bytes(Encoding.DER) == b.public_bytes(Encoding.DER)


def verify_item_statement(der_b64: Any, trust: TrustStore, what: str) -> VerifiedStatement:
    der = b64d(der_b64, f"{what}.der", MAX_STATEMENT)
    try:
        return verify_statement(der, trust)
    except EvidenceError as e:
        raise ItemMismatch(f"the {what} is not valid evidence: {e}") from None


class _SignedItemManager(ManagerBase):
    """What statements and credentials share: a CMS statement by the sender, checked body."""

    generatable = False

    def __init__(self, trust: TrustStore) -> None:
        self.trust = trust

    def _expected(self, d: Description) -> tuple[str, Mapping[str, Any]]:
        raise NotImplementedError

    def properties(self, d: Description) -> Properties:
        return Properties(verifiable=True, generatable=self.generatable, revocable=d.terms.get("revocable") is True,
                          anonymous=False)                    # a signature names its signer

    def _check_body(self, body: Mapping[str, Any], d: Description, b: Binding | None) -> None:
        kind, fields = self._expected(d)
        if body.get("type") != kind:
            raise ItemMismatch(f"expected a {kind!r} statement, got {body.get('type')!r}")
        for key, value in fields.items():
            if key not in body or not satisfies(body[key], value):
                raise ItemMismatch(f"the {kind} statement has {key}={body.get(key)!r}, expected {value!r}")
        if b is not None:
            clause = body.get("exchange")
            if not isinstance(clause, Mapping) or clause.get("xid") != b.xid:
                raise ItemMismatch(f"the {kind} statement is not for this exchange (it names "
                                   f"{clause.get('xid') if isinstance(clause, Mapping) else None!r})")
            if d.terms.get("revocable") is True and body.get("revocable_by") != b.ttp_id:
                raise ItemMismatch(f"the {kind} statement was promised revocable by the exchange's third party, "
                                   "but does not say so")

    def check(self, item: Item, d: Description, b: Binding | None, sender: x509.Certificate | None) -> Item:
        vs = verify_item_statement(item.data.get("der"), self.trust, self.item_type)
        if sender is not None and not same_key(vs.signer, sender):
            raise ItemMismatch(f"the {self.item_type} is signed by {vs.signer_name}, not by the peer")
        self._check_body(vs.body, d, b)
        return Item(self.item_type, {"der": item.data["der"]})


class StatementManager(_SignedItemManager):
    item_type = "statement"
    generatable = True

    def check_description(self, d: Description) -> None:
        kind = d.terms.get("statement_type")
        if not isinstance(kind, str) or not kind:
            raise MalformedItem("a statement description needs 'statement_type'")
        if not isinstance(d.terms.get("fields", {}), Mapping):
            raise MalformedItem("a statement description's 'fields' must be a JSON object")
        if not isinstance(d.terms.get("revocable", False), bool):
            raise MalformedItem("'revocable' must be true or false")

    def _expected(self, d: Description) -> tuple[str, Mapping[str, Any]]:
        return str(d.terms["statement_type"]), d.terms.get("fields", {})

    @staticmethod
    def _body(commitment: Mapping[str, Any]) -> Mapping[str, Any]:
        body = commitment.get("body")
        if not isinstance(body, Mapping):
            raise MalformedItem("the statement commitment lacks its body")
        try:
            canonical_json(body)
        except EvidenceError as e:
            raise MalformedItem(f"the committed statement body cannot be signed: {e}") from None
        return body

    def check_commitment(self, commitment: Mapping[str, Any], attachments: Mapping[str, Any], d: Description,
                         b: Binding) -> None:
        self._check_body(self._body(commitment), d, b)

    def check_release(self, item: Item, commitment: Mapping[str, Any], attachments: Mapping[str, Any],
                      d: Description, b: Binding) -> Item:
        kept = self.check(item, d, b, b.originator)
        vs = verify_item_statement(kept.data["der"], self.trust, "statement")
        if vs.body != dict(self._body(commitment)):
            raise ItemMismatch("the signed statement is not the one committed to in the proposal")
        return kept

    def generate(self, commitment: Mapping[str, Any], attachments: Mapping[str, Any], d: Description,
                 b: Binding, powers: TtpPowers) -> dict[str, Any]:
        body = self._body(commitment)
        self._check_body(body, d, b)
        der = powers.sign({"type": "replacement", "xid": b.xid, "originator": cert_id(b.originator),
                           "responder": cert_id(b.responder), "statement": dict(body)})
        return {"der": b64e(der)}

    def check_replacement(self, replacement: Mapping[str, Any], commitment: Mapping[str, Any],
                          attachments: Mapping[str, Any], d: Description, b: Binding) -> Item:
        vs = verify_item_statement(replacement.get("der"), self.trust, "replacement statement")
        if b.ttp is None or not same_key(vs.signer, b.ttp):
            raise ItemMismatch(f"the replacement statement is signed by {vs.signer_name}, not by the exchange's "
                               "third party")
        body = vs.body
        if body.get("type") != "replacement" or body.get("xid") != b.xid or \
                body.get("originator") != cert_id(b.originator) \
                or body.get("statement") != dict(self._body(commitment)):
            raise ItemMismatch("the replacement statement is for another exchange, originator or statement")
        return Item("statement", {"der": replacement["der"], "replacement": True})


class CredentialManager(_SignedItemManager):
    item_type = "credential"

    def check_description(self, d: Description) -> None:
        if not isinstance(d.terms.get("attributes"), Mapping):
            raise MalformedItem("a credential description needs 'attributes' (a JSON object)")
        if not isinstance(d.terms.get("revocable", False), bool):
            raise MalformedItem("'revocable' must be true or false")

    def _expected(self, d: Description) -> tuple[str, Mapping[str, Any]]:
        return "credential", {"attributes": d.terms["attributes"]}


class _SignedOffer(OfferBase):
    def __init__(self, sign: Sign, body: Mapping[str, Any], revocable: bool) -> None:
        self.sign = sign
        self.body = dict(body)
        self.revocable = revocable

    def full_body(self, b: Binding | None) -> dict[str, Any]:
        body = dict(self.body)
        if b is not None:
            body["exchange"] = b.exchange_clause()
            if self.revocable:
                body["revocable_by"] = b.ttp_id
        return body

    def make(self, d: Description, b: Binding | None) -> Item:
        return Item(self.description.type, {"der": b64e(self.sign(self.full_body(b)))})


class StatementOffer(_SignedOffer):
    """A statement the sender will sign (e.g. a receipt or a contract signature)."""

    def __init__(self, sign: Sign, body: Mapping[str, Any], *, revocable: bool = False) -> None:
        super().__init__(sign, body, revocable)
        fields = {k: v for k, v in self.body.items() if k != "type"}
        self.description = Description("statement", {"statement_type": str(self.body["type"]), "fields": fields,
                                                     "revocable": revocable})

    def commit(self, d: Description, b: Binding, escrow: EscrowTarget | None) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"body": self.full_body(b)}, {}

    def release(self, d: Description, b: Binding) -> Item:
        return self.make(d, b)


class CredentialOffer(_SignedOffer):
    """A credential the sender issues: signed attributes, revocable by the exchange's third party if asked."""

    def __init__(self, sign: Sign, attributes: Mapping[str, Any], *, revocable: bool = False) -> None:
        super().__init__(sign, {"type": "credential", "attributes": dict(attributes)}, revocable)
        self.description = Description("credential", {"attributes": dict(attributes), "revocable": revocable})
