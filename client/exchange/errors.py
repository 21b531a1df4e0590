"""The exchange layer's errors: a small hierarchy whose messages say what happened and what to do."""
from __future__ import annotations


class ExchangeError(Exception):
    """Base of every exchange-layer failure."""

    user_facing = True


class NoFairProtocol(ExchangeError):
    """The two items' properties allow no fair protocol (nothing was sent)."""


class NegotiationFailed(ExchangeError):
    """The peer refused the exchange or answered outside the protocol before anything was given."""


class BadMessage(ExchangeError):
    """A protocol message is malformed, forged, or for another exchange."""


class PeerUnreachable(ExchangeError):
    """The peer's exchange service did not take the message (refused, timed out, TLS failed)."""


class TtpUnavailable(ExchangeError):
    """The third party could not be reached or answered outside its protocol; try again later
    (its decisions are kept, so a later request gets the same answer)."""


class PartyStopped(ExchangeError):
    """A party stopped on purpose in the middle of a run (shutdown, or its outbox held the rest back)."""
