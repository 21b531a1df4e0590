"""The commerce layer (paper 3.5): deals, and workflows built from offer, order, payment and delivery blocks.

A *deal* is a security context with attributes (anonymity, non-repudiation, fairness) that every
block used in it honours. A *workflow* is the sequence of transfers and exchanges of one business
scenario, run locally by each party, with a local decision after each step: satisfied, or an
exception or dispute with the evidence collected so far (paper section 2, figure 1).

Buyer side: :mod:`.workflows` (mail-order retailing, on-line purchase of information, registration
with a service provider, contract signing) over :mod:`.blocks`, talking to the shop through
:mod:`.shop_client`, to the user only through the TINGUIN (:mod:`client.tinguin.api`). Seller
side: :mod:`.shop` (the same blocks from the other end), served by :mod:`.shop_http`. Both sides
keep their evidence in their own archive; :mod:`.judge` rules on a deal's bundle.

Layering: this package calls the exchange, transfer and payment layers and the supporting services;
it never talks APDUs — cards are reached through ``hardware`` sessions handed in from outside.
"""
