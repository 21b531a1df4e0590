"""Every PIN through the TINGUIN, straight to the card (or the reader's PIN pad), never kept.

Two adapters, because two kinds of code need the card's PIN verified:

* payment modules and the bank client get a :data:`client.payment.module.PinEntry`
  (:func:`tinguin_pin`): ``enter_pin(purpose, session)`` asks the user in the TINGUIN and hands the
  typed digits to ``session.verify_pin`` — the payment layer never sees them;
* everything that signs through a :class:`hardware.signer.Signer` (the order block, the exchange
  layer's identity, registration, the archive's checkpoints) gets a :class:`GatedSigner`, whose
  every signature is preceded by a PIN entry through the TINGUIN: PIV key 9C wants a VERIFY right
  before each signature, and keeping the PIN to replay it is exactly what must not happen.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from semper.hardware import errors as hw
from semper.hardware.signer import PinStatus, Signer

from ..payment.errors import InstrumentError
from ..payment.module import PinEntry
from ..tinguin.api import TrustedUI, pin_route


class PinNotEntered(hw.PinRequiredError):
    """The user cancelled the PIN request, or the PIN is blocked: the card did not sign."""


def tinguin_pin(ui: TrustedUI) -> PinEntry:
    """A PIN entry for the payment layer: the TINGUIN asks, the card session verifies."""
    def enter(purpose: str, session: Any) -> None:
        if isinstance(session, GatedSigner):      # it asks right before it signs: one PIN entry, this purpose
            session.announce(purpose)
            return
        deliver, pad = pin_route(session)
        outcome = ui.ask_pin(purpose, deliver, pad=pad)
        if not outcome.ok:
            raise InstrumentError(f"the PIN was not verified to {purpose} ({outcome.message or outcome.status.value}); "
                                  "nothing was done with the card")
    return enter


class GatedSigner:
    """A card key that signs only right after the user entered the PIN in the TINGUIN.

    ``select`` re-selects the signing applet first when it shares the card with the purse; the
    ``purpose`` shown is set per operation with :meth:`purpose_for` (default: a generic sentence); it
    is an attribute, not thread-local, because the exchange layer signs in its own threads.
    Signatures are serialised by a lock: one PIN entry, one signature.
    """

    def __init__(self, signer: Signer, ui: TrustedUI, *, select: Callable[[], Any] | None = None,
                 lock: threading.RLock | None = None, default_purpose: str = "sign with your card's key") -> None:
        self.signer = signer
        self.ui = ui
        self.select = select
        self.lock = lock or threading.RLock()
        self.label = getattr(signer, "label", "card")
        self.default_purpose = default_purpose
        self._purpose: str | None = None      # what the next signatures are for (set by the deal in progress)
        self._next: str | None = None         # what the very next signature is for (announced by a module)
        self.signatures = 0

    def announce(self, purpose: str) -> None:
        """What the very next signature is for (a payment module or the bank client says it)."""
        self._next = purpose

    @contextlib.contextmanager
    def purpose_for(self, text: str) -> Iterator[None]:
        before, self._purpose = self._purpose, text
        try:
            yield
        finally:
            self._purpose = before

    def certificate(self) -> bytes:
        with self.lock:
            if self.select is not None:
                self.select()
            return self.signer.certificate()

    def public_point(self) -> bytes:
        with self.lock:
            if self.select is not None:
                self.select()
            return self.signer.public_point()

    def pin_status(self) -> PinStatus:
        with self.lock:
            if self.select is not None:
                self.select()
            return self.signer.pin_status()

    def verify_pin(self, pin: bytes) -> None:
        """For callers that were handed a PIN by other means (none in semper's user paths)."""
        self.signer.verify_pin(pin)

    def sign_digest(self, digest: bytes) -> bytes:
        with self.lock:
            purpose, self._next = self._next or self._purpose or self.default_purpose, None
            if self.select is not None:
                self.select()
            deliver, pad = pin_route(self.signer)
            outcome = self.ui.ask_pin(purpose, deliver, pad=pad)
            if not outcome.ok:
                why = outcome.message or outcome.status.value
                raise PinNotEntered(f"the PIN was not verified to {purpose} ({why}); the card did not sign")
            self.signatures += 1         # nothing may touch the card between VERIFY and the signature
            return self.signer.sign_digest(digest)
