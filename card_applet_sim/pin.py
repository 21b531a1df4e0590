"""A PIN (or PUK) with a persistent try counter, as a card keeps it.

The counter is decremented and made persistent *before* the comparison, and restored only after a
match: pulling the card during a guess therefore costs the guess, so tearing cannot be used to try
PINs for free (the classic attack on naive implementations).
"""
from __future__ import annotations

import hmac

from .crypto import random_bytes, sha256
from .store import Store
from .sw import SW, CardError, wrong_pin


class Pin:
    def __init__(self, store: Store, name: str, min_len: int = 4, max_len: int = 8) -> None:
        self.store = store
        self.name = name            # e.g. "card/pin"
        self.min_len = min_len
        self.max_len = max_len
        self.validated = False      # transient: cleared on reset and power-off

    def _k(self, part: str) -> str:
        return f"{self.name}/{part}"

    @property
    def is_set(self) -> bool:
        return self.store.get(self._k("hash")) is not None

    @property
    def tries_left(self) -> int:
        return self.store.get_int(self._k("tries"))

    @property
    def max_tries(self) -> int:
        return self.store.get_int(self._k("max"))

    def check_format(self, value: bytes) -> None:
        if not (self.min_len <= len(value) <= self.max_len) or not value.isdigit():
            raise CardError(SW.WRONG_DATA, f"{self.name} must be {self.min_len}-{self.max_len} digits")

    def set(self, value: bytes, max_tries: int = 3) -> None:
        """Set the value and reset the counter (personalisation, change, unblock)."""
        self.check_format(value)
        salt = random_bytes(16)
        self.store.put(self._k("salt"), salt)
        self.store.put(self._k("hash"), sha256(salt + value))
        self.store.put_int(self._k("max"), max_tries)
        self.store.put_int(self._k("tries"), max_tries)

    def verify(self, value: bytes) -> None:
        if not self.is_set:
            raise CardError(SW.REFERENCE_DATA_NOT_USABLE, f"{self.name} not set")
        tries = self.tries_left
        if tries <= 0:
            self.validated = False
            raise CardError(SW.AUTH_METHOD_BLOCKED, f"{self.name} blocked")
        self.validated = False
        self.store.put_int(self._k("tries"), tries - 1)
        self.store.checkpoint()                       # the guess is paid for before it is judged
        salt = self.store.get(self._k("salt")) or b""
        ok = hmac.compare_digest(sha256(salt + value), self.store.get(self._k("hash")) or b"")
        if not ok:
            raise wrong_pin(tries - 1)
        self.store.put_int(self._k("tries"), self.max_tries)
        self.validated = True

    def status(self) -> None:
        """VERIFY without data: 9000 when validated, else 63Cx (or 6983 when blocked)."""
        if self.validated:
            return
        if self.tries_left <= 0:
            raise CardError(SW.AUTH_METHOD_BLOCKED, f"{self.name} blocked")
        raise wrong_pin(self.tries_left)
