"""The buyer's client: what its workflows may use, gathered once per session.

Why one object: the blocks need the same few things again and again — the TINGUIN, the CA roots
to verify the seller, the shop link, the evidence archive, the payment manager with its modules,
the card's signature key behind the TINGUIN's PIN entry, and for fair exchanges the buyer's
exchange party. The business application (``semper buy``, the demo) builds it; it never reaches
into it: it calls a workflow and gets the result.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from ..exchange.identity import Identity
from ..payment.item import ItemVerifier
from ..payment.manager import PaymentManager
from ..support.trust import TrustStore
from ..tinguin.api import TrustedUI
from ..tinguin.model import Party
from .archive import SharedArchive
from .exchange_client import ExchangeClient
from .pin import GatedSigner
from .shop_client import ShopClient

MODULE_LABELS = {"card-purse": "card purse (on your card)", "setpay": "account payment (SET-like, signed on your card)",
                 "cheque": "cheque (signed on your card)", "ecash": "e-cash (anonymous)",
                 "none": "nothing to pay"}


@dataclass
class Buyer:
    ui: TrustedUI
    trust: TrustStore
    shop: ShopClient
    archive: SharedArchive
    payments: PaymentManager
    signer: GatedSigner | None = None              # the card's signature key (None: anonymous deals only)
    exchange: ExchangeClient | None = None          # the buyer's exchange party (fair exchanges)
    verifiers: dict[str, ItemVerifier] = field(default_factory=dict)   # public checks of payments in exchanges
    purse: Any = None                               # hardware.purse.PurseSession, for the balance shown
    patience: float = 15.0                          # how long to wait for a delivery or an exchange (s)
    card_lock: threading.RLock = field(default_factory=threading.RLock)
    labels: dict[str, str] = field(default_factory=lambda: dict(MODULE_LABELS))
    #: keep the shop's standing offers (mail order) while they are valid and order on them without asking
    #: again (blocks.get_offer); False: ask the shop for the standing offer at every purchase
    keep_offers: bool = True
    #: the standing offers kept, by (shop, workflow, items, anonymous): (offer, its verified statement)
    offers: dict[tuple[Any, ...], tuple[Any, Any]] = field(default_factory=dict)
    _identity: Identity | None = None

    def certificate(self) -> x509.Certificate | None:
        if self.signer is None:
            return None
        return x509.load_der_x509_certificate(self.signer.certificate())

    def me(self) -> Party | None:
        cert = self.certificate()
        return Party.from_certificate(cert) if cert is not None else None

    def identity(self) -> Identity:
        """The card key as the exchange layer's signing identity (every signature behind a PIN entry)."""
        if self.signer is None:
            from .errors import CommerceError
            raise CommerceError("this client has no card key, so it can take part only in anonymous deals")
        if self._identity is None:
            self._identity = Identity(self.signer)
        return self._identity

    def balance(self) -> tuple[int, int] | None:
        """(balance, currency) of the purse, or None without one."""
        if self.purse is None:
            return None
        try:
            with self.card_lock:
                self.purse.select()
                info = self.purse.info()
            return info.balance, info.currency
        except Exception:          # the balance is informative; a card that went away must not end the deal
            return None
