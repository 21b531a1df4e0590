"""The exchange layer (paper §3.4): generic optimistic fair exchange of packages of business items.

An exchange manager negotiates with its peer which generic protocol the two items' properties
allow (``negotiation``): *gen-ver* (generatable for externally verifiable, the paper's figure 4),
*rev-rev* (revocable for revocable), or *plain* (two transfers, no fairness asked for). The
parties are servers that talk over HTTPS (``wire``); each runs its side of a protocol
(``genver``, ``revrev``, ``plain``) as an asyncio task (``party``), records every message in its
evidence archive, and goes to the third party (``ttp_client``) only when the peer fails it.
``messages`` defines the exchange id and the signed messages; ``judge`` is the offline arbiter.
This layer gets signers and item managers; it never touches hardware.
"""
