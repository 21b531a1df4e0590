"""The project's one exception base, and the hierarchy for everything below the SEMPER layers.

Each class says what happened in words a person can act on; the raw status word is kept as an
attribute for logs, never as the message's substance.

``SemperError`` lives here because ``hardware`` is the bottom of the host side: every other part
imports it, and it imports none of them (``card_applet_sim`` stays independent and has its own).
"""
from __future__ import annotations


class SemperError(Exception):
    """Base of every exception the project raises on purpose; its class says what the failure means.

    Why one base with these attributes: the command line and the services decide by class, never by
    the class's name or by words in the message (docs/architecture.md, "Rules").

    * ``exit_status``: what ``semper`` exits with: 1 the operation failed, 2 bad input (the user's
      arguments, amounts, preferences, order form); the table of every exit status is in
      docs/architecture.md.
    * ``http_status``, ``code``: what a service answers when a handler raises it, as the JSON refusal
      ``{"error": code, "message": str(e)}`` (support/http_service.py). 500 is the service's own
      fault: its log gets the details, the client only ``internal``.

    Subclasses set them as class attributes. A refusal whose status and code are chosen where it is
    raised (``ApiError``, the bank's and the CA's refusals, a bank's refusal seen by a client) sets
    them on the instance.
    """

    exit_status: int = 1
    http_status: int = 500
    code: str = "internal"


class HardwareError(SemperError):
    """Base of every error raised by the hardware abstraction.

    In a service a card or token failure is the service's own fault (500, details in its log)."""

    ckr: str | None = None      # a PKCS#11 return code's name, kept for logs (hsm/errors.py), never the message


class ReaderError(HardwareError):
    """No reader, no card, the card was removed, or the PC/SC service is not running."""


class CardRemovedError(ReaderError):
    """The card went away during the operation; nothing after the last answer is certain."""


class TransportError(HardwareError):
    """The bytes could not be exchanged with the card (protocol or framing problem)."""


class CardError(HardwareError):
    """The card refused a command; ``sw`` is the status word it answered with."""

    def __init__(self, message: str, sw: int = 0) -> None:
        super().__init__(message)
        self.sw = sw


class WrongPinError(CardError):
    """``tries_left`` is None when the device does not say (PKCS#11 reports no counter)."""

    def __init__(self, tries_left: int | None, sw: int = 0) -> None:
        if tries_left is None:
            msg = "wrong PIN"
        elif tries_left:
            msg = f"wrong PIN: {tries_left} {'try' if tries_left == 1 else 'tries'} left"
        else:
            msg = "wrong PIN: the PIN is now blocked; unblock it with the PUK"
        super().__init__(msg, sw)
        self.tries_left = tries_left


class PinBlockedError(CardError):
    def __init__(self, sw: int = 0, what: str = "PIN") -> None:
        super().__init__(f"the {what} is blocked" + ("; unblock it with the PUK" if what == "PIN" else ""), sw)


class PinRequiredError(CardError):
    """The command needs a verified PIN first."""


class InsufficientFundsError(CardError):
    pass


class MaxBalanceError(CardError):
    pass


class NotAuthenticError(CardError):
    """A signature or certificate the card checked did not verify."""


class ReplayError(CardError):
    """The message was stale or already used (sequence, counter or nonce mismatch)."""


class NotFoundError(CardError):
    """Applet, object or record not on the card."""


class ConditionsError(CardError):
    """The card is not in a state that allows the command (e.g. not personalised)."""


class InvalidInputError(CardError):
    """The card rejected the command's data or parameters as malformed."""


class TokenError(HardwareError):
    """A PKCS#11 token or module problem (module missing, token not found, ...)."""
