"""Business items, tree-like packages, and descriptions of what a party expects.

An :class:`Item` is a type name plus JSON data (bytes as base64 text) that its manager understands.
A :class:`Package` is a tree of items and packages, transferred and exchanged as a whole. A
:class:`Description` says what the receiver expects of an item (type plus terms); a
:class:`PackageDescription` mirrors a package's shape. Descriptions go into the exchange id, so
their JSON form is canonical (sorted keys, no spaces) and has exactly one digest.

Everything arriving from a peer is parsed here with limits (depth, member count, sizes), so a
hostile peer cannot make a manager walk an unbounded tree.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from msgspec import Meta

from ..support.canonical import canonical as _canonical
from ..support.shapes import Shape, ShapeError, convert
from .errors import MalformedItem

MAX_DEPTH = 8
MAX_MEMBERS = 64
TYPE_NAMES = ("statement", "information", "credential", "payment")


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(value: Any, what: str, limit: int = 16 * 1024 * 1024) -> bytes:
    """Strict base64 from a peer; the message names the field when it is not."""
    if not isinstance(value, str):
        raise MalformedItem(f"{what} must be base64 text")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedItem(f"{what} is not valid base64") from None
    if len(raw) > limit:
        raise MalformedItem(f"{what} is larger than {limit} bytes")
    return raw


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value (what is hashed and signed; support.canonical)."""
    return _canonical(obj, "item", MalformedItem)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Item:
    """One business item: ``type`` names its manager, ``data`` is the manager's JSON form."""

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **dict(self.data)}


@dataclass(frozen=True)
class Package:
    """A tree of items: exchanged as a whole, its properties the weakest of its members'."""

    members: tuple[Content, ...] = ()
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"type": "package", "label": self.label, "members": [m.to_json() for m in self.members]}


@dataclass(frozen=True)
class Description:
    """What a receiver expects of one item: its type and the terms the item must meet."""

    type: str
    terms: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **dict(self.terms)}

    def with_terms(self, **terms: Any) -> Description:
        return Description(self.type, {**dict(self.terms), **terms})


@dataclass(frozen=True)
class PackageDescription:
    """The expected shape of a package: one description per member, in order."""

    members: tuple[Expectation, ...] = ()
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"type": "package", "label": self.label, "members": [m.to_json() for m in self.members]}


Content = Item | Package                          # runtime aliases, not only annotations
Expectation = Description | PackageDescription
NOTHING = Package((), "nothing")                  # the other side of a plain transfer
NOTHING_EXPECTED = PackageDescription((), "nothing")


def digest(obj: Content | Expectation) -> str:
    return sha256_hex(canonical(obj.to_json()))


def _check_type(value: Any, where: str) -> str:
    if value not in TYPE_NAMES:
        raise MalformedItem(f"{where}: unknown item type {value!r} (types: {', '.join(TYPE_NAMES)}, package)")
    return str(value)


class PackageShape(Shape, frozen=True):
    """A package (or a package description) as it travels: its members (items, descriptions or packages,
    each read by the functions below) and a label. An item's own fields are its manager's to read."""

    type: Literal["package"]
    members: Annotated[list[Any], Meta(max_length=MAX_MEMBERS)]
    label: Annotated[str, Meta(max_length=200)] = ""


def _package(obj: Mapping[str, Any], where: str, depth: int) -> PackageShape:
    if depth > MAX_DEPTH:
        raise MalformedItem(f"{where}: packages nest deeper than {MAX_DEPTH} levels")
    try:
        return convert(obj, PackageShape, where)
    except ShapeError as e:
        raise MalformedItem(str(e)) from None


def content_from_json(obj: Any, where: str = "item", depth: int = 0) -> Content:
    if not isinstance(obj, Mapping):
        raise MalformedItem(f"{where} must be a JSON object")
    if obj.get("type") == "package":
        p = _package(obj, where, depth)
        return Package(tuple(content_from_json(m, f"{where}.members[{i}]", depth + 1) for i, m in enumerate(p.members)),
                       p.label)
    kind = _check_type(obj.get("type"), where)
    return Item(kind, {k: v for k, v in obj.items() if k != "type"})


def expectation_from_json(obj: Any, where: str = "description", depth: int = 0) -> Expectation:
    if not isinstance(obj, Mapping):
        raise MalformedItem(f"{where} must be a JSON object")
    if obj.get("type") == "package":
        p = _package(obj, where, depth)
        return PackageDescription(tuple(expectation_from_json(m, f"{where}.members[{i}]", depth + 1)
                                        for i, m in enumerate(p.members)), p.label)
    kind = _check_type(obj.get("type"), where)
    return Description(kind, {k: v for k, v in obj.items() if k != "type"})


def pair_leaves(content: Content, expectation: Expectation, where: str = "item"
                ) -> Iterator[tuple[str, Item, Description]]:
    """Walk a package and its description together: (path, item, description) per leaf.

    A shape mismatch (an item where a package was expected, a member too many or too few) is an
    :class:`ItemMismatch` naming the place.
    """
    from .errors import ItemMismatch
    if isinstance(expectation, PackageDescription):
        if not isinstance(content, Package):
            raise ItemMismatch(f"{where}: expected a package of {len(expectation.members)} items, got one "
                               f"{content.type} item")
        if len(content.members) != len(expectation.members):
            raise ItemMismatch(f"{where}: expected a package of {len(expectation.members)} members, got "
                               f"{len(content.members)}")
        for i, (c, e) in enumerate(zip(content.members, expectation.members, strict=True)):
            yield from pair_leaves(c, e, f"{where}[{i}]")
        return
    if not isinstance(content, Item):
        raise ItemMismatch(f"{where}: expected one {expectation.type} item, got a package")
    if content.type != expectation.type:
        raise ItemMismatch(f"{where}: expected a {expectation.type} item, got a {content.type} item")
    yield where, content, expectation


def leaves(expectation: Expectation, where: str = "item") -> Iterator[tuple[str, Description]]:
    """Every leaf description with its path (the same paths :func:`pair_leaves` yields)."""
    if isinstance(expectation, PackageDescription):
        for i, e in enumerate(expectation.members):
            yield from leaves(e, f"{where}[{i}]")
    else:
        yield where, expectation


def rebuild(expectation: Expectation, items: Mapping[str, Item], where: str = "item") -> Content:
    """A package of the expectation's shape from items keyed by path (the inverse of the walks above)."""
    if isinstance(expectation, PackageDescription):
        return Package(tuple(rebuild(e, items, f"{where}[{i}]") for i, e in enumerate(expectation.members)),
                       expectation.label)
    return items[where]


def map_expectation(expectation: Expectation, fn: Any, where: str = "item") -> Expectation:
    """The same tree with every leaf description replaced by ``fn(path, description)``."""
    if isinstance(expectation, PackageDescription):
        return PackageDescription(tuple(map_expectation(e, fn, f"{where}[{i}]")
                                        for i, e in enumerate(expectation.members)), expectation.label)
    return fn(where, expectation)
