"""The manager protocol (one manager per item type), offers (the sender's side), and the registry.

A *manager* lives on the receiving side and at the third party: it checks received items against
descriptions, says which exchange-enabling properties an item's transfer has, and — at the third
party — verifies externally, generates a replacement, or records a revocation. An *offer* lives on
the sending side: it knows the item it will send and how to make it for one exchange (make it now,
commit to it first and release it later, or make it bound to the exchange so it can be revoked).

:class:`Managers` applies the leaf operations to whole packages, keyed by the leaf's path
(``item``, ``item[0]``, ``item[1][2]`` ...), so the exchange layer never walks a tree itself.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from .binding import Binding
from .errors import ItemMismatch, MalformedItem, UnknownItemType
from .items import (
    Content,
    Description,
    Expectation,
    Item,
    Package,
    PackageDescription,
    leaves,
    map_expectation,
    pair_leaves,
    rebuild,
)
from .properties import Properties

JsonDict = dict[str, Any]


class EscrowTarget(Protocol):
    """The third party's public escrow key, as an originator sees it (from T's signed statement)."""

    point: bytes
    key_id: str


class TtpPowers(Protocol):
    """What only the third party can do for a manager: open an escrow, sign a replacement."""

    def shared_secret(self, peer_point: bytes) -> bytes:
        """ECDH on T's escrow key (in T's token) with a peer's ephemeral point."""
        ...

    def sign(self, statement: Mapping[str, Any]) -> bytes:
        """A CMS statement signed by T's token key."""
        ...


class ItemManager(Protocol):
    item_type: str

    def check_description(self, d: Description) -> None:
        """MalformedItem unless the terms have this type's form."""
        ...

    def properties(self, d: Description) -> Properties: ...

    def complete(self, d: Description, hint: Mapping[str, Any]) -> Description:
        """The receiver fills in what only it can (e.g. a payee's payment request); default: unchanged."""
        ...

    def check(self, item: Item, d: Description, b: Binding | None, sender: x509.Certificate | None) -> Item:
        """Check a received item against its description (and exchange); return what the receiver keeps."""
        ...

    def check_commitment(self, commitment: Mapping[str, Any], attachments: Mapping[str, Any], d: Description,
                         b: Binding) -> None:
        """Generatable items: does the originator's signed commitment promise the described item?"""
        ...

    def check_release(self, item: Item, commitment: Mapping[str, Any], attachments: Mapping[str, Any],
                      d: Description, b: Binding) -> Item:
        """Generatable items: the originator's own release of what it committed to; the final item."""
        ...

    def generate(self, commitment: Mapping[str, Any], attachments: Mapping[str, Any], d: Description,
                 b: Binding, powers: TtpPowers) -> JsonDict:
        """The third party's replacement (JSON for its decision); CommitmentFalse if the commitment lies."""
        ...

    def check_replacement(self, replacement: Mapping[str, Any], commitment: Mapping[str, Any],
                          attachments: Mapping[str, Any], d: Description, b: Binding) -> Item:
        """The final item from the third party's replacement in a verified decision."""
        ...

    def accept(self, item: Item, d: Description) -> None:
        """Take a checked item in (a payee deposits a payment); idempotent; default: nothing to do."""
        ...


class Offer(Protocol):
    """The sending side of one item."""

    description: Description

    def hint(self) -> JsonDict:
        """What the receiver needs to complete the description (default: nothing)."""
        ...

    def accept_description(self, d: Description) -> None:
        """Refuse a completed description the sender will not honour (e.g. a payment request for
        another amount); ItemMismatch says why."""
        ...

    def make(self, d: Description, b: Binding | None) -> Item:
        """Transfer now (plain, verifiable or revocable transfers)."""
        ...

    def commit(self, d: Description, b: Binding, escrow: EscrowTarget | None) -> tuple[JsonDict, JsonDict]:
        """Generatable transfers: (commitment signed inside the proposal, attachments sent beside it)."""
        ...

    def release(self, d: Description, b: Binding) -> Item:
        """Generatable transfers: the item itself, after the peer's item arrived."""
        ...


@dataclass(frozen=True)
class PackageOffer:
    members: tuple[OfferTree, ...]
    label: str = ""


OfferTree = Offer | PackageOffer               # a runtime alias, not only an annotation


def offer_description(tree: OfferTree) -> Expectation:
    if isinstance(tree, PackageOffer):
        return PackageDescription(tuple(offer_description(m) for m in tree.members), tree.label)
    return tree.description


def offer_leaves(tree: OfferTree, where: str = "item") -> Iterator[tuple[str, Offer]]:
    if isinstance(tree, PackageOffer):
        for i, m in enumerate(tree.members):
            yield from offer_leaves(m, f"{where}[{i}]")
    else:
        yield where, tree


def satisfies(offered: Any, expected: Any) -> bool:
    """Offered terms satisfy expected ones when every expected key is there with an equal value
    (objects compared the same way, recursively; everything else by equality)."""
    if isinstance(expected, Mapping):
        return isinstance(offered, Mapping) and all(k in offered and satisfies(offered[k], v)
                                                    for k, v in expected.items())
    return bool(offered == expected) and type(offered) is type(expected)


def check_satisfies(offered: Expectation, expected: Expectation, where: str = "item") -> None:
    """ItemMismatch unless ``offered`` (the sender's description) meets ``expected`` (the receiver's)."""
    if isinstance(expected, PackageDescription):
        if not isinstance(offered, PackageDescription) or len(offered.members) != len(expected.members):
            raise ItemMismatch(f"{where}: the peer offers {_shape(offered)}, expected {_shape(expected)}")
        for i, (o, e) in enumerate(zip(offered.members, expected.members, strict=True)):
            check_satisfies(o, e, f"{where}[{i}]")
        return
    if not isinstance(offered, Description) or offered.type != expected.type:
        raise ItemMismatch(f"{where}: the peer offers {_shape(offered)}, expected a {expected.type} item")
    for key, value in expected.terms.items():
        if key not in offered.terms or not satisfies(offered.terms[key], value):
            raise ItemMismatch(f"{where}: the peer's {expected.type} item has {key}={offered.terms.get(key)!r}, "
                               f"expected {value!r}")


def _shape(e: Expectation) -> str:
    return f"a package of {len(e.members)}" if isinstance(e, PackageDescription) else f"a {e.type} item"


class Managers:
    """The registry: one manager per item type, and the package-wide operations built on them."""

    def __init__(self, *managers: ItemManager) -> None:
        self._by_type: dict[str, ItemManager] = {}
        for m in managers:
            self.add(m)

    def add(self, manager: ItemManager) -> None:
        self._by_type[manager.item_type] = manager

    def get(self, item_type: str) -> ItemManager:
        try:
            return self._by_type[item_type]
        except KeyError:
            raise UnknownItemType(f"no manager for {item_type!r} items here (known: "
                                  f"{', '.join(sorted(self._by_type)) or 'none'})") from None

    # ---- descriptions -----------------------------------------------------------------------
    def check_expectation(self, e: Expectation) -> None:
        for where, d in leaves(e):
            try:
                self.get(d.type).check_description(d)
            except MalformedItem as err:
                raise MalformedItem(f"{where}: {err}") from None

    def properties(self, e: Expectation) -> Properties:
        return Properties.weakest(self.get(d.type).properties(d) for _, d in leaves(e))

    def complete(self, e: Expectation, hints: Mapping[str, Any]) -> Expectation:
        def one(where: str, d: Description) -> Description:
            hint = hints.get(where, {})
            if not isinstance(hint, Mapping):
                raise MalformedItem(f"{where}: the hint for this item must be a JSON object")
            return self.get(d.type).complete(d, hint)
        return map_expectation(e, one)

    # ---- received items ---------------------------------------------------------------------
    def check(self, content: Content, e: Expectation, b: Binding | None, sender: x509.Certificate | None
              ) -> Content:
        kept = {where: self.get(d.type).check(item, d, b, sender) for where, item, d in pair_leaves(content, e)}
        return rebuild(e, kept)

    def check_commitments(self, commitments: Mapping[str, Any], attachments: Mapping[str, Any], e: Expectation,
                          b: Binding) -> None:
        for where, d in leaves(e):
            c, a = _part(commitments, where, "commitment"), _part(attachments, where, "attachment", True)
            self.get(d.type).check_commitment(c, a, d, b)

    def check_release(self, content: Content, commitments: Mapping[str, Any], attachments: Mapping[str, Any],
                      e: Expectation, b: Binding) -> Content:
        kept = {}
        for where, item, d in pair_leaves(content, e):
            c, a = _part(commitments, where, "commitment"), _part(attachments, where, "attachment", True)
            kept[where] = self.get(d.type).check_release(item, c, a, d, b)
        return rebuild(e, kept)

    def generate(self, commitments: Mapping[str, Any], attachments: Mapping[str, Any], e: Expectation,
                 b: Binding, powers: TtpPowers) -> JsonDict:
        out = {}
        for where, d in leaves(e):
            c, a = _part(commitments, where, "commitment"), _part(attachments, where, "attachment", True)
            out[where] = self.get(d.type).generate(c, a, d, b, powers)
        return out

    def accept(self, content: Content, e: Expectation) -> None:
        """The receiver takes a checked item in (a payee deposits a payment); idempotent."""
        for _where, item, d in pair_leaves(content, e):
            self.get(d.type).accept(item, d)

    def check_replacement(self, replacements: Mapping[str, Any], commitments: Mapping[str, Any],
                          attachments: Mapping[str, Any], e: Expectation, b: Binding) -> Content:
        kept = {}
        for where, d in leaves(e):
            r = _part(replacements, where, "replacement")
            c, a = _part(commitments, where, "commitment"), _part(attachments, where, "attachment", True)
            kept[where] = self.get(d.type).check_replacement(r, c, a, d, b)
        return rebuild(e, kept)

    def deadline(self, commitments: Mapping[str, Any], e: Expectation) -> int | None:
        """The earliest time (POSIX seconds) until which the third party may generate the originator's items:
        None when no item limits it (statements and information can be generated at any time; a reserved
        cheque only until its ``valid_until``, after which its drawer gets it back)."""
        out = None
        for where, d in leaves(e):
            fn = getattr(self.get(d.type), "deadline", None)
            c = commitments.get(where) if isinstance(commitments, Mapping) else None
            limit = fn(c, d) if fn is not None and isinstance(c, Mapping) else None
            if limit is not None:
                out = limit if out is None else min(out, limit)
        return out

    def settles(self, e: Expectation) -> bool:
        """Whether an item received under ``e`` becomes final only with the third party's resolution (a
        revocable payment: the bank holds it until then)."""
        return any(getattr(self.get(d.type), "settles", lambda _d: False)(d) for _, d in leaves(e))

    def settle(self, content: Content, e: Expectation, decision: bytes) -> None:
        """Make received revocable items final with the third party's 'resolved' decision."""
        for _where, item, d in pair_leaves(content, e):
            fn = getattr(self.get(d.type), "settle", None)
            if fn is not None:
                fn(item, d, decision)


def _part(parts: Mapping[str, Any], where: str, what: str, optional: bool = False) -> Mapping[str, Any]:
    value = parts.get(where) if isinstance(parts, Mapping) else None
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedItem(f"{where}: the {what} for this item is missing or not a JSON object")
    return value


# ---- offers over a whole tree ------------------------------------------------------------------
def offer_hints(tree: OfferTree) -> JsonDict:
    return {where: o.hint() for where, o in offer_leaves(tree)}


def offer_accept(tree: OfferTree, e: Expectation) -> None:
    descs = dict(leaves(e))
    for where, o in offer_leaves(tree):
        if where not in descs:
            raise ItemMismatch(f"{where}: the completed description has no such item")
        o.accept_description(descs[where])


def offer_make(tree: OfferTree, e: Expectation, b: Binding | None) -> Content:
    descs = dict(leaves(e))
    return rebuild(e, {where: o.make(descs[where], b) for where, o in offer_leaves(tree)})


def offer_commit(tree: OfferTree, e: Expectation, b: Binding, escrow: EscrowTarget | None
                 ) -> tuple[JsonDict, JsonDict]:
    descs = dict(leaves(e))
    commitments, attachments = {}, {}
    for where, o in offer_leaves(tree):
        c, a = o.commit(descs[where], b, escrow)
        commitments[where] = c
        if a:
            attachments[where] = a
    return commitments, attachments


def offer_release(tree: OfferTree, e: Expectation, b: Binding) -> Content:
    descs = dict(leaves(e))
    return rebuild(e, {where: o.release(descs[where], b) for where, o in offer_leaves(tree)})


def offer_revoked(tree: OfferTree, e: Expectation, b: Binding, decision: bytes) -> None:
    """The third party revoked the exchange: each offer undoes what it can (a revocable payment's hold
    goes back to the payer); statements need nothing (the decision itself voids them)."""
    descs = dict(leaves(e))
    for where, o in offer_leaves(tree):
        fn = getattr(o, "revoked", None)
        if fn is not None and where in descs:
            fn(descs[where], b, decision)


class OfferBase:
    """Defaults for offers: no hint, any completion accepted, and the operations an item type does
    not support refused with a clear reason."""

    description: Description

    def hint(self) -> JsonDict:
        return {}

    def accept_description(self, d: Description) -> None:
        """The agreed description must ask for nothing this offer does not give."""
        check_satisfies(self.description, d)

    def make(self, d: Description, b: Binding | None) -> Item:
        from .errors import UnsupportedAttribute
        raise UnsupportedAttribute(f"a {self.description.type} item cannot be sent this way")

    def commit(self, d: Description, b: Binding, escrow: EscrowTarget | None) -> tuple[JsonDict, JsonDict]:
        from .errors import NotGeneratable
        raise NotGeneratable(f"a {self.description.type} item is not generatable by the third party")

    def release(self, d: Description, b: Binding) -> Item:
        from .errors import NotGeneratable
        raise NotGeneratable(f"a {self.description.type} item is not generatable by the third party")


class ManagerBase:
    """Defaults for managers: no completion; nothing to do on acceptance; generatable operations refused."""

    item_type = ""

    def complete(self, d: Description, hint: Mapping[str, Any]) -> Description:
        return d

    def accept(self, item: Item, d: Description) -> None:
        return None

    def check_commitment(self, commitment: Mapping[str, Any], attachments: Mapping[str, Any], d: Description,
                         b: Binding) -> None:
        from .errors import NotGeneratable
        raise NotGeneratable(f"{self.item_type} items are not generatable")

    def check_release(self, item: Item, commitment: Mapping[str, Any], attachments: Mapping[str, Any],
                      d: Description, b: Binding) -> Item:
        from .errors import NotGeneratable
        raise NotGeneratable(f"{self.item_type} items are not generatable")

    def generate(self, commitment: Mapping[str, Any], attachments: Mapping[str, Any], d: Description,
                 b: Binding, powers: TtpPowers) -> JsonDict:
        from .errors import NotGeneratable
        raise NotGeneratable(f"{self.item_type} items are not generatable")

    def check_replacement(self, replacement: Mapping[str, Any], commitment: Mapping[str, Any],
                          attachments: Mapping[str, Any], d: Description, b: Binding) -> Item:
        from .errors import NotGeneratable
        raise NotGeneratable(f"{self.item_type} items are not generatable")


__all__ = [
    "EscrowTarget",
    "Item",
    "ItemManager",
    "ManagerBase",
    "Managers",
    "Offer",
    "OfferBase",
    "OfferTree",
    "Package",
    "PackageOffer",
    "TtpPowers",
    "check_satisfies",
    "offer_accept",
    "offer_commit",
    "offer_description",
    "offer_hints",
    "offer_leaves",
    "offer_make",
    "offer_release",
    "offer_revoked",
    "satisfies",
]
