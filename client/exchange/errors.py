"""The exchange layer's errors: a small hierarchy whose messages say what happened and what to do."""
from __future__ import annotations

from semper.hardware.errors import SemperError


class ExchangeError(SemperError):
    """Base of every exchange-layer failure (the exchange did not happen as agreed: 422)."""

    http_status = 422
    code = "exchange_failed"


class NoFairProtocol(ExchangeError):
    """The two items' properties allow no fair protocol (nothing was sent)."""

    code = "no_fair_protocol"


class NegotiationFailed(ExchangeError):
    """The peer refused the exchange or answered outside the protocol before anything was given."""


class BadMessage(ExchangeError):
    """A protocol message is malformed, forged, or for another exchange."""

    http_status = 400
    code = "bad_message"


class PeerUnreachable(ExchangeError):
    """The peer's exchange service did not take the message (refused, timed out, TLS failed)."""

    http_status = 502
    code = "peer_unreachable"


class TtpUnavailable(ExchangeError):
    """The third party could not be reached or answered outside its protocol; try again later
    (its decisions are kept, so a later request gets the same answer)."""

    http_status = 503
    code = "ttp_unavailable"


class PartyStopped(ExchangeError):
    """A party stopped on purpose in the middle of a run (shutdown, or its outbox held the rest back)."""

    http_status = 503
    code = "stopped"
