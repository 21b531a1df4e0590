"""The seller's catalogue: what it sells, at which price, as which kind of goods.

Kinds decide the workflow: ``physical`` goods go by mail order (delivery note), ``information`` is
sold on line (fairly exchanged for the payment, or delivered after payment by mail order),
``registration`` is a membership with a service provider, ``contract`` is signed by both sides.
A catalogue file is JSON; information content is read from a file next to it or given inline.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CommerceError

KINDS = ("physical", "information", "registration", "contract")
_SKU = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


@dataclass(frozen=True)
class CatalogueItem:
    sku: str
    description: str
    kind: str
    unit_price: int                      # minor units
    currency: int = 978
    content: bytes | None = None         # information goods
    name: str | None = None              # file name of information goods
    contract: str | None = None          # contract text
    max_quantity: int = 10

    def __post_init__(self) -> None:
        if not _SKU.match(self.sku):
            raise CommerceError(f"item id {self.sku!r}: lower-case letters, digits and '-', at most 40")
        if self.kind not in KINDS:
            raise CommerceError(f"item {self.sku}: kind must be one of {', '.join(KINDS)}")
        if not isinstance(self.unit_price, int) or not 0 <= self.unit_price < 2**31:
            raise CommerceError(f"item {self.sku}: the price is in minor units (0 to 2^31-1)")
        if self.kind == "information" and not self.content:
            raise CommerceError(f"item {self.sku}: information goods need content")
        if self.kind == "contract" and not self.contract:
            raise CommerceError(f"item {self.sku}: a contract needs its text")

    @property
    def sha256(self) -> str | None:
        data = self.content if self.content is not None else (self.contract.encode() if self.contract else None)
        return hashlib.sha256(data).hexdigest() if data is not None else None

    def public(self) -> dict[str, Any]:
        """What the catalogue page shows (never the content itself)."""
        out: dict[str, Any] = {"sku": self.sku, "description": self.description, "kind": self.kind,
                               "unit_price": self.unit_price, "currency": self.currency}
        if self.content is not None:
            out.update(length=len(self.content), sha256=self.sha256, name=self.name or self.sku)
        return out


@dataclass
class Catalogue:
    items: dict[str, CatalogueItem] = field(default_factory=dict)

    @staticmethod
    def of(items: Iterable[CatalogueItem]) -> Catalogue:
        return Catalogue({i.sku: i for i in items})

    def get(self, sku: str) -> CatalogueItem:
        try:
            return self.items[sku]
        except KeyError:
            raise CommerceError(f"no item {sku!r} in the catalogue (items: {', '.join(sorted(self.items))})") from None

    @staticmethod
    def load(path: Path) -> Catalogue:
        """A JSON list of items; ``content_file`` is read relative to the catalogue file."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise CommerceError(f"cannot read the catalogue {path}: {e}") from None
        if not isinstance(raw, list):
            raise CommerceError(f"{path}: the catalogue is a JSON list of items")
        items = []
        for d in raw:
            try:
                content = d.get("content")
                data = content.encode() if isinstance(content, str) else None
                if d.get("content_file"):
                    data = (Path(path).parent / d["content_file"]).read_bytes()
                items.append(CatalogueItem(str(d["sku"]), str(d["description"]), str(d["kind"]), int(d["unit_price"]),
                                           int(d.get("currency", 978)), data, d.get("name"), d.get("contract"),
                                           int(d.get("max_quantity", 10))))
            except (KeyError, TypeError, ValueError, OSError) as e:
                raise CommerceError(f"{path}: a catalogue item is incomplete or unreadable ({e})") from None
        return Catalogue.of(items)

    def dump(self, path: Path) -> None:
        out = []
        for i in self.items.values():
            d: dict[str, Any] = {"sku": i.sku, "description": i.description, "kind": i.kind,
                                 "unit_price": i.unit_price, "currency": i.currency, "max_quantity": i.max_quantity}
            if i.content is not None:
                name = i.name or f"{i.sku}.bin"
                (Path(path).parent / name).write_bytes(i.content)
                d.update(content_file=name, name=name)
            if i.contract:
                d["contract"] = i.contract
            out.append(d)
        Path(path).write_text(json.dumps(out, indent=1))


REPORT = ("SEMPER market report 2026\n" + "".join(f"line {n}: tea prices rose by {n % 7}.{n % 10} percent\n"
                                                   for n in range(1, 60))).encode()
CONTRACT = ("Supply agreement.\n1. The seller supplies 12 boxes of tea every month.\n"
            "2. The buyer pays within 30 days of delivery.\n3. Either side may end it with one month's notice.\n")


def demo_catalogue() -> Catalogue:
    """What the demo shop sells (prices in EUR cents)."""
    return Catalogue.of([
        CatalogueItem("teapot", "Teapot, white porcelain, 1.2 l", "physical", 1250),
        CatalogueItem("tea-sampler", "Tea sampler, 12 kinds", "physical", 890),
        CatalogueItem("market-report", "Market report 2026 (PDF-like text)", "information", 400, content=REPORT,
                      name="market-report-2026.txt"),
        CatalogueItem("tea-club", "Tea club membership, one year", "registration", 1500),
        CatalogueItem("supply-contract", "Supply agreement, 12 boxes a month", "contract", 0, contract=CONTRACT),
    ])
