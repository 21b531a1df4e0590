"""The transfer layer (paper §3.3): business items, tree-like packages, security attributes.

Each item type has one manager (``statement``, ``information``, ``credential``, ``payment``) that
checks received items against what the receiver expects (a :class:`~.items.Description`) and
declares the item's *exchange-enabling properties* (external verifiability, generatability,
revocability) and whether it names its sender (anonymity). The exchange layer builds fair exchanges
from those properties alone, so it never needs to know what an item is.

Module map: ``items`` (items, packages, descriptions and their JSON forms), ``properties``,
``attributes`` (security attributes per transfer), ``binding`` (what ties an item to one exchange),
``managers`` (the manager protocol, offers, the registry, package walking), one module per item
type, ``escrow`` (keys escrowed to the third party) and ``payment`` (the payment-module interface the
payment manager implements in ``client/payment/item.py``; no payment system is known here).
"""
