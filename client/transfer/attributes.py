"""Security attributes of one transfer, and how the transfer layer provides them.

* **confidentiality**: every transfer goes over TLS to a peer whose certificate chains to the
  pinned CA root (``client/support/channels.py``); information in a fair exchange is also
  encrypted end to end (AES-256-GCM), so not even the third party sees it unless it must release
  the key.
* **integrity**: every received item is checked against a description holding digests or signed
  terms (:class:`~.managers.Managers.check`); TLS protects the bytes in transit.
* **anonymity**: the sender sends no identity certificate and signs nothing. Refused together with
  non-repudiation, and for every item whose manager says it is not anonymous
  (:attr:`~.properties.Properties.anonymous`): statements and credentials (signatures), and payments
  whose module names the payer (the card purse sends the card number and certificate). For payments
  the answer is the payment module's own declaration (``ExchangeProperties.anonymous`` on its class,
  e-cash: yes), which reaches this layer through the payment manager's item verifiers; this layer
  keeps no list of its own.
* **non-repudiation of origin**: the sender signs an *origin* statement naming the transfer, the
  item's digest and the description's digest.
* **non-repudiation of receipt**: the receiver signs a *receipt* statement naming the same.

:func:`check_attributes` refuses an attribute the items cannot have, before anything is sent.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ..support.cms import EvidenceError
from ..support.trust import TrustStore
from ..support.verify import verify_statement
from .binding import cert_id
from .errors import ItemMismatch, UnsupportedAttribute
from .items import Content, Description, Expectation, digest, leaves
from .properties import Properties
from .statements import same_key


@dataclass(frozen=True)
class SecurityAttributes:
    confidentiality: bool = True
    integrity: bool = True
    anonymity: bool = False
    non_repudiation_of_origin: bool = False
    non_repudiation_of_receipt: bool = False

    def as_dict(self) -> dict[str, bool]:
        return {"confidentiality": self.confidentiality, "integrity": self.integrity, "anonymity": self.anonymity,
                "non_repudiation_of_origin": self.non_repudiation_of_origin,
                "non_repudiation_of_receipt": self.non_repudiation_of_receipt}

    @staticmethod
    def from_dict(obj: Mapping[str, Any]) -> SecurityAttributes:
        names = SecurityAttributes().as_dict()
        unknown = set(obj) - set(names)
        if unknown or not all(isinstance(v, bool) for v in obj.values()):
            raise UnsupportedAttribute(f"security attributes are {', '.join(names)} (true/false); got {dict(obj)!r}")
        return SecurityAttributes(**{k: bool(v) for k, v in obj.items()})


def check_attributes(attrs: SecurityAttributes, expectation: Expectation,
                     properties: Callable[[Description], Properties]) -> None:
    """UnsupportedAttribute when these items cannot be transferred with these attributes. ``properties``
    gives an item's properties from its manager (``Managers.properties``)."""
    if not attrs.confidentiality or not attrs.integrity:
        raise UnsupportedAttribute("semper always transfers over TLS with checked descriptions; confidentiality "
                                   "and integrity cannot be switched off")
    if attrs.anonymity:
        if attrs.non_repudiation_of_origin or attrs.non_repudiation_of_receipt:
            raise UnsupportedAttribute("anonymity and non-repudiation exclude each other: a signature names its signer")
        for where, d in leaves(expectation):
            if properties(d).anonymous:
                continue
            if d.type == "payment":
                raise UnsupportedAttribute(f"{where}: the {d.terms.get('module')} payment names the payer; choose an "
                                           "anonymous payment module")
            if d.type in ("statement", "credential"):
                raise UnsupportedAttribute(f"{where}: a {d.type} is a signature and names its signer; it cannot be "
                                           "sent anonymously")
            raise UnsupportedAttribute(f"{where}: a {d.type} item names its sender; it cannot be sent anonymously")


def origin_statement(sign: Callable[[Mapping[str, Any]], bytes], transfer_id: str, content: Content,
                     expectation: Expectation, receiver: x509.Certificate | None) -> bytes:
    """Non-repudiation of origin: the sender's signature on what it sends."""
    return sign({"type": "origin", "transfer": transfer_id, "item_sha256": digest(content),
                 "description_sha256": digest(expectation),
                 "to": cert_id(receiver) if receiver is not None else None})


def receipt_statement(sign: Callable[[Mapping[str, Any]], bytes], transfer_id: str, content: Content,
                      expectation: Expectation, sender: x509.Certificate | None) -> bytes:
    """Non-repudiation of receipt: the receiver's signature on what it got."""
    return sign({"type": "receipt", "transfer": transfer_id, "item_sha256": digest(content),
                 "description_sha256": digest(expectation),
                 "from": cert_id(sender) if sender is not None else None})


def check_nr_statement(der: bytes, trust: TrustStore, kind: str, transfer_id: str, content: Content,
                       expectation: Expectation, signer: x509.Certificate) -> None:
    """ItemMismatch unless ``der`` is a valid ``kind`` (origin/receipt) statement by ``signer`` for this
    transfer and exactly this item."""
    try:
        vs = verify_statement(der, trust)
    except EvidenceError as e:
        raise ItemMismatch(f"the {kind} statement is not valid evidence: {e}") from None
    body = vs.body
    if not same_key(vs.signer, signer):
        raise ItemMismatch(f"the {kind} statement is signed by {vs.signer_name}, not by the peer")
    if (body.get("type"), body.get("transfer"), body.get("item_sha256"), body.get("description_sha256")) != \
            (kind, transfer_id, digest(content), digest(expectation)):
        raise ItemMismatch(f"the {kind} statement is for another transfer or item")
