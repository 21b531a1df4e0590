"""Message formats that payer, payee and bank must agree on byte for byte.

Kept apart from the modules so that the bank (``client/servers/bank_*.py``) and the modules use
the same definitions: a change on one side alone fails the tests.

* Account payment (SET / iKP): the payer's *payment instruction* PI (account data, for the bank
  only, sealed to the bank's key) and *order information* OI (bound to the order hash, for the
  seller) are linked by one **dual signature** over ``SHA-256(H(PI) || H(OI))``: the seller checks
  it with H(PI) and OI, the bank with PI and H(OI); neither learns what the other sees.
* Cheque (Mandate): a statement signed by the drawer naming bank, drawer account, cheque number,
  payee account, amount, currency and the order hash.
* Coin (eCash): ``canonical({"coin": serial, "key": key_id})``, signed blindly by the mint key of
  one denomination.
"""
from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from msgspec import Meta

from ..support.shapes import Shape
from .wire import canonical


def h(obj: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical(obj)).digest()


def payment_instruction(account: str, payee: str, amount: int, currency: int, payment_id: str, nonce: str,
                        exchange: dict[str, Any] | None = None) -> dict[str, Any]:
    """``exchange``: the clause of a fair exchange the payment is made in (``{"xid", "ttp"}``): the bank then
    captures or releases it only on that third party's decision (``client/servers/bank_exchange.py``)."""
    out = {"type": "set-pi", "account": account, "payee": payee, "amount": amount, "currency": currency,
           "payment_id": payment_id, "nonce": nonce}
    if exchange is not None:
        out["exchange"] = dict(exchange)
    return out


def order_information(order_hash: str, amount: int, currency: int, payment_id: str, payee: str,
                      exchange: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"type": "set-oi", "order_hash": order_hash, "amount": amount, "currency": currency,
           "payment_id": payment_id, "payee": payee}
    if exchange is not None:
        out["exchange"] = dict(exchange)
    return out


def dual_digest(pi_hash: bytes, oi_hash: bytes) -> bytes:
    return hashlib.sha256(pi_hash + oi_hash).digest()


class WireCoin(Shape, frozen=True):
    """A coin as it travels (payer -> payee -> mint): the mint key, its serial, the mint's signature."""

    key_id: str
    serial: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]         # 64 lower-case hex digits
    signature: Annotated[bytes, Meta(max_length=1024)]


class Cheque(Shape, frozen=True):
    """A cheque's signed body (Mandate): the drawer's account orders its bank to pay the payee."""

    codes = {"amount<": "bad_amount", "amount>": "amount_too_large"}
    type: Literal["cheque"]
    bank: str
    drawer: str
    number: Annotated[str, Meta(min_length=8, max_length=32)]
    payee: str
    amount: Annotated[int, Meta(ge=1, le=2**31 - 1)]
    currency: int
    order_hash: str


def cheque(bank: str, drawer: str, number: str, payee: str, amount: int, currency: int, order_hash: str
           ) -> dict[str, Any]:
    return {"type": "cheque", "bank": bank, "drawer": drawer, "number": number, "payee": payee, "amount": amount,
            "currency": currency, "order_hash": order_hash}


def coin_message(key_id: str, serial: str) -> bytes:
    return canonical({"coin": serial, "key": key_id})
