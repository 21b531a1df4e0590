"""The e-cash wallet: coins stored encrypted under a key that only the holder's token or card can use.

Why: coins are bearer value; a copied wallet file must be worthless. The file is sealed (AES-256-
GCM under a fresh key each save, that key wrapped to a key the holder's device never gives out:
RSA-OAEP to a token key with CKA_EXTRACTABLE false (:class:`TokenWalletKey`), or ECDH with the
card's PIV key 9D (:class:`client.payment.card_wallet.CardWalletKey`)), so opening it needs the
device and its PIN. Every change is written
atomically (temporary file, fsync, rename) *before* the operation that depends on it: blinding
factors before a withdrawal is sent, coins moved to "in flight" before they are handed to a payee.
So a crash at any point loses no value: a pending withdrawal is finished with the same idempotency
key, and in-flight coins are either deposited by the payee or reclaimed by the payer.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from semper.hsm.rsa import RsaTokenKeys

from .errors import InstrumentError
from .sealed import open_sealed, seal

WALLET_KEY_ID = b"semper-wallet"
AAD = b"semper wallet v1"


class WalletKey(Protocol):
    """Seals the wallet's contents to a device key; ``open`` needs the device (the private half).

    Why seal/open and not wrap/unwrap: the two devices wrap differently (RSA-OAEP of the data key
    vs. an ephemeral ECDH per save), so each key owns its sealed format; the wallet only stores it.
    ``seal`` needs no PIN (public key only), so saving never asks; ``open`` may.
    """

    def seal(self, plaintext: bytes, aad: bytes) -> dict[str, str]: ...

    def open(self, sealed: object, aad: bytes) -> bytes: ...


class TokenWalletKey:
    """The wallet key as an RSA key pair on a PKCS#11 token (made on first use)."""

    def __init__(self, keys: RsaTokenKeys, key_id: bytes = WALLET_KEY_ID) -> None:
        self.keys = keys
        self.key_id = key_id
        pub = keys.public(key_id)
        self._public = pub if pub is not None else keys.generate(key_id, "semper wallet key")

    def public(self) -> rsa.RSAPublicKey:
        return self._public

    def unwrap(self, wrapped: bytes) -> bytes:
        return self.keys.decrypt(self.key_id, wrapped)

    def seal(self, plaintext: bytes, aad: bytes) -> dict[str, str]:
        return seal(self._public, plaintext, aad)

    def open(self, sealed: object, aad: bytes) -> bytes:
        return open_sealed(self.unwrap, sealed, aad)


@dataclass(frozen=True)
class Coin:
    key_id: str
    serial: str
    signature: str               # base64
    denomination: int
    currency: int

    def wire(self) -> dict[str, str]:
        return {"key_id": self.key_id, "serial": self.serial, "signature": self.signature}


class Wallet:
    def __init__(self, path: Path, key: WalletKey, name: str = "wallet") -> None:
        self.path = Path(path)
        self.key = key
        self.name = name
        self.coins: list[Coin] = []
        self.in_flight: dict[str, list[Coin]] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        sealed = json.loads(self.path.read_text())
        data = json.loads(self.key.open(sealed, AAD))
        self.coins = [Coin(**c) for c in data["coins"]]
        self.in_flight = {k: [Coin(**c) for c in v] for k, v in data["in_flight"].items()}
        self.pending = dict(data["pending"])

    def save(self) -> None:
        data = {"coins": [asdict(c) for c in self.coins],
                "in_flight": {k: [asdict(c) for c in v] for k, v in self.in_flight.items()}, "pending": self.pending}
        sealed = self.key.seal(json.dumps(data).encode(), AAD)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(sealed))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def balance(self, currency: int | None = None) -> int:
        return sum(c.denomination for c in self.coins if currency is None or c.currency == currency)

    def currencies(self) -> set[int]:
        return {c.currency for c in self.coins}

    def take(self, amount: int, currency: int, payment_id: str) -> list[Coin]:
        """Coins adding up to exactly ``amount``, moved to in-flight for ``payment_id`` (saved first)."""
        chosen: list[Coin] = []
        left = amount
        for c in sorted((c for c in self.coins if c.currency == currency), key=lambda c: -c.denomination):
            if c.denomination <= left:
                chosen.append(c)
                left -= c.denomination
            if left == 0:
                break
        if left:
            raise InstrumentError(f"the wallet cannot pay exactly {amount} with its coins ({self.balance(currency)} "
                                  "in all); withdraw smaller coins")
        ids = {c.serial for c in chosen}
        self.coins = [c for c in self.coins if c.serial not in ids]
        self.in_flight.setdefault(payment_id, []).extend(chosen)
        self.save()
        return chosen

    def settle(self, payment_id: str) -> None:
        if self.in_flight.pop(payment_id, None) is not None:
            self.save()

    def add(self, coins: list[Coin]) -> None:
        known = {c.serial for c in self.coins}
        self.coins.extend(c for c in coins if c.serial not in known)
        self.save()

