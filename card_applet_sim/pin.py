"""A PIN (or PUK) with a persistent try counter, as a card keeps it.

The counter is decremented and made persistent *before* the comparison, and restored only after a
match: pulling the card during a guess therefore costs the guess, so tearing cannot be used to try
PINs for free (the classic attack on naive implementations). The verifier of the candidate is
derived before the decrement (it reveals nothing until the comparison, which comes after it).

The card keeps a salted scrypt verifier of the value, not the value or a fast hash of it: the image
is sealed under a key outside it, and should both leak, each guess at the PIN still costs a scrypt
(a 4-digit PIN then falls in about 10^4 x 25 ms, minutes, not microseconds; docs/threat-model.md).
A VERIFY repeated with the value that matched last (key 9C asks before every signature) is answered
from RAM: the card process remembers an HMAC of it under a per-process random key, so only the
first VERIFY of a session and every wrong guess pay the scrypt.
"""
from __future__ import annotations

import hashlib
import hmac

from .crypto import PIN_KDF_LOG2_N, PIN_KDF_P, PIN_KDF_R, pin_verifier, random_bytes
from .store import Store
from .sw import SW, CardError, wrong_pin

_VERIFIER_FORMAT = 1                    # verifier = format, log2 N, r, p, scrypt(value, salt)
_RAM_KEY = random_bytes(32)             # this process's key for remembering the last matching value


class Pin:
    def __init__(self, store: Store, name: str, min_len: int = 4, max_len: int = 8) -> None:
        self.store = store
        self.name = name            # e.g. "card/pin"
        self.min_len = min_len
        self.max_len = max_len
        self.validated = False      # transient: cleared on reset and power-off
        self._matched: bytes = b""  # RAM only: HMAC of (salt, verifier, value) that matched last

    def _k(self, part: str) -> str:
        return f"{self.name}/{part}"

    @property
    def is_set(self) -> bool:
        return self.store.get(self._k("verifier")) is not None

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
        # the cost the verifier records is the cost it was made with (one set of names for both)
        cost = (PIN_KDF_LOG2_N, PIN_KDF_R, PIN_KDF_P)
        verifier = bytes([_VERIFIER_FORMAT, *cost]) + pin_verifier(value, salt, *cost)
        self.store.put(self._k("salt"), salt)
        self.store.put(self._k("verifier"), verifier)
        self.store.put_int(self._k("max"), max_tries)
        self.store.put_int(self._k("tries"), max_tries)
        self._matched = b""

    def _matches(self, value: bytes) -> bool:
        salt = self.store.get(self._k("salt")) or b""
        verifier = self.store.get(self._k("verifier")) or b""
        memo = hmac.new(_RAM_KEY, hashlib.sha256(salt + verifier).digest() + value, "sha256").digest()
        if self._matched and hmac.compare_digest(memo, self._matched):
            return True
        if len(verifier) != 36 or verifier[0] != _VERIFIER_FORMAT:
            raise CardError(SW.REFERENCE_DATA_NOT_USABLE, f"{self.name} verifier is unreadable")
        log2_n, r, p = verifier[1], verifier[2], verifier[3]
        if not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 4):      # a sane cost, not a memory bomb
            raise CardError(SW.REFERENCE_DATA_NOT_USABLE, f"{self.name} verifier is unreadable")
        if not hmac.compare_digest(pin_verifier(value, salt, log2_n, r, p), verifier[4:]):
            return False
        self._matched = memo
        return True

    def verify(self, value: bytes) -> None:
        if not self.is_set:
            raise CardError(SW.REFERENCE_DATA_NOT_USABLE, f"{self.name} not set")
        tries = self.tries_left
        if tries <= 0:
            self.validated = False
            raise CardError(SW.AUTH_METHOD_BLOCKED, f"{self.name} blocked")
        self.validated = False
        # The slow part (scrypt) runs first: it changes nothing and its result stays in RAM until the
        # try is paid, so the window in which a pulled card has spent a try it never had judged is
        # a commit long, not a scrypt long.
        matched = self._matches(value)
        self.store.put_int(self._k("tries"), tries - 1)
        self.store.checkpoint()                       # the guess is paid for before it is judged
        if not matched:
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
