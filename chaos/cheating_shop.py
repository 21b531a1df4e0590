"""A shop that cheats: the real shop with one step done dishonestly, and ``python -m semper.chaos.cheating_shop``.

Why a subclass and not a mock: everything but the cheat is the product's shop (offers signed with its
token, orders checked, payments through its PSAM, its archive), so what the buyer's client catches is
the cheat and nothing else. The product offers the seams (``Shop.payment_amount``, ``content_of``,
``delivery_lines``, ``ShopHome.open(shop_class=...)``, the exchange party's ``outbox``); the
misbehaviour lives only here, and no user-facing command can switch it on. The entry point is
``semper serve shop`` with a cheat set: same folder, same token, same HTTPS service, same
announcement line.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from semper.client.commerce.catalogue import CatalogueItem
from semper.client.servers.shop import Shop, ShopDeal
from semper.client.servers.shop_home import OpenShop, ShopHome

from .party_faults import Faults
from .plan import CHEATS


@dataclass
class Cheat:
    """How the shop misbehaves (the buyer's client must catch each); all off: an honest shop."""

    wrong_goods: bool = False        # the delivery (or the exchanged information) is not what was offered
    no_delivery: bool = False        # paid, but never delivers (in a fair exchange: stops before its item)
    price_change: int = 0            # asks this much more in the payment than it offered
    replay_offer: bool = False       # answers a new request with an offer it signed for an earlier one (a
                                     # standing offer: the first it made, whatever items it was for)

    @classmethod
    def named(cls, name: str) -> Cheat:
        """The cheat ``semper chaos`` plans by name (a changed price: 1.00 more)."""
        if name not in CHEATS:
            raise ValueError(f"unknown cheat {name!r}; one of {', '.join(CHEATS)}")
        return cls(price_change=100) if name == "price_change" else cls(**{name: True})


class CheatingShop(Shop):
    """The shop, cheating as :attr:`cheat` says (it may be changed between deals)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.cheat = Cheat()
        self.exchange_outbox = Faults()          # its exchange party's outbox (see open_cheating_shop)
        self._first_offer: tuple[str, bytes, str] | None = None
        self._first_standing: tuple[bytes, str] | None = None

    def new_deal(self, workflow: str, items: Sequence[tuple[str, int]], nonce: str, anonymous: bool
                 ) -> tuple[str, bytes, str]:
        if self.cheat.replay_offer and self._first_offer is not None:
            return self._first_offer                 # a genuine offer, signed for an earlier request
        made = super().new_deal(workflow, items, nonce, anonymous)
        if self._first_offer is None:
            self._first_offer = made
        return made

    def standing_offer(self, workflow: str, items: Sequence[tuple[str, int]], anonymous: bool) -> tuple[bytes, str]:
        """A standing offer (mail order) names no deal and answers no nonce: a genuine one for the same items,
        replayed, is the offer the shop makes to anyone. The replay that cheats gives the first standing offer
        it made, for whatever items it was, in answer to a request for other items."""
        if self.cheat.replay_offer and self._first_standing is not None:
            return self._first_standing
        made = super().standing_offer(workflow, items, anonymous)
        if self._first_standing is None:
            self._first_standing = made
        return made

    def payment_amount(self, sd: ShopDeal) -> int:
        return super().payment_amount(sd) + self.cheat.price_change

    def content_of(self, item: CatalogueItem) -> bytes | None:
        content = super().content_of(item)
        return content + b" (abridged)" if self.cheat.wrong_goods and content is not None else content

    def delivery_lines(self, sd: ShopDeal) -> list[dict[str, Any]]:
        lines = super().delivery_lines(sd)
        if self.cheat.wrong_goods:
            return [{**x, "sku": "tea-sampler" if x["sku"] != "tea-sampler" else "teapot"} for x in lines]
        return lines

    def make_delivery(self, sd: ShopDeal) -> None:
        if self.cheat.no_delivery:
            return                                   # paid, and nothing is shipped
        super().make_delivery(sd)

    def exchange_plan(self, deal_id: str) -> Any:
        plan = super().exchange_plan(deal_id)
        # the exchange starts right after this: the seller commits, takes the payment, stops before its item
        self.exchange_outbox.stop_before = "item" if self.cheat.no_delivery else None
        return plan


def open_cheating_shop(home: ShopHome, pin: bytes, db: str | None = None) -> OpenShop:
    """The shop's folder opened as a :class:`CheatingShop` whose exchange party sends through the
    shop's :attr:`~CheatingShop.exchange_outbox`."""
    opened = home.open(pin, shop_class=CheatingShop, db=db)
    shop = opened.shop
    make_party = opened.party
    if make_party is not None:
        def party() -> Any:
            p = make_party()
            p.outbox = shop.exchange_outbox
            return p
        opened.party = party
    return opened


def start_in_process(world: Any, psam_reader: str | None = None) -> CheatingShop:
    """The demo world's shop as a cheating shop in this process (after ``world.start_in_process(shop=False)``),
    registered in ``world.services`` like the honest one."""
    from semper.client.demo_world import TOKEN_PIN
    from semper.client.support.channels import server_context
    from semper.client.support.http_service import ServiceRunner
    s = world.services
    opened = open_cheating_shop(world._shop_home(psam_reader, s.ttp, s.bank), TOKEN_PIN, db=world.dbs.get("shop"))
    s.opened_shop = opened
    s.closers.append(opened.close)
    s.runners.append(ServiceRunner(opened.app(), "127.0.0.1", 0, server_context(*opened.tls)).start())
    s.shop = s.runners[-1].url
    return opened.shop


def main(argv: list[str] | None = None) -> int:
    from .faulty_service import fault_parser, serve
    ap = fault_parser("cheating_shop")
    ap.add_argument("--cheat", choices=CHEATS, required=True)
    args = ap.parse_args(argv)
    opened = open_cheating_shop(ShopHome(args.dir), args.pin_file.read_bytes().strip(), db=args.db)
    opened.shop.cheat = Cheat.named(args.cheat)
    return serve(opened, args.port, f"semper shop {opened.shop.name!r} (cheating: {args.cheat})")

if __name__ == "__main__":
    raise SystemExit(main())
