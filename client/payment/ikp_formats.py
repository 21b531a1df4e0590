"""iKP message formats (1KP, 2KP, 3KP) that payer, payee and acquirer must agree on byte for byte.

iKP (Bellare, Garay, Hauser, Herzberg, Krawczyk, Steiner, Tsudik, Van Herreweghen, Waidner; IBM
Zurich 1995, JSAC 2000) is one protocol family in three strengths, named by how many parties hold a
signing key: in **1KP** only the acquirer signs, in **2KP** the merchant too, in **3KP** the buyer as
well. The quantities, in semper's terms:

* ``Common``: what all three agree on and never send in full between buyer and merchant at once:
  price, currency, the merchant's account (``id_m``), the payment id (``tid_m``), date, the
  merchant's nonce, the buyer's pseudo-id ``id_c = H(r_c, BAN)`` (the merchant learns no account),
  ``desc_hash = H(salt_c, order)`` (the acquirer learns no order) and the level;
* ``SLIP``: the buyer's account data for the acquirer only (account number, ``r_c``, and in 1KP and
  2KP the account code the holder enrolled, as a card holder gives a card number and its code),
  sealed to the acquirer's key with ``H(Common)`` as associated data;
* ``Sig_M``: the merchant's signature on ``H(Common)`` (2KP, 3KP); ``Sig_C``: the buyer's on
  ``H(EncSlip)`` and ``H(Common)`` (3KP); ``Sig_A``: the acquirer's signed answer naming ``H(Common)``.

Kept apart from the module so that the bank (``client/servers/bank_ikp.py``) and the module read the
same definitions; a change on one side alone fails the tests.
"""
from __future__ import annotations

import hashlib
from typing import Any

from .wire import canonical

LEVELS = (1, 2, 3)
MERCHANT_TAG = b"semper-ikp/merchant\x00"
CUSTOMER_TAG = b"semper-ikp/customer\x00"


def h(obj: Any) -> bytes:
    return hashlib.sha256(canonical(obj)).digest()


def buyer_id(r_c: str, ban: str) -> str:
    """``ID_C``: the buyer's pseudo-id, a salted hash of its account number (the merchant learns no account)."""
    return h({"r_c": r_c, "ban": ban}).hex()


def description_hash(salt_c: str, order_hash: str) -> str:
    """``H(SALT_C, DESC)``: the order, salted by the buyer, as the acquirer sees it."""
    return h({"salt": salt_c, "order": order_hash}).hex()


def common(level: int, price: int, currency: int, id_m: str, tid_m: str, date: int, nonce_m: str, id_c: str,
           desc_hash: str) -> dict[str, Any]:
    return {"type": "ikp-common", "level": level, "price": price, "currency": currency, "id_m": id_m,
            "tid_m": tid_m, "date": date, "nonce_m": nonce_m, "id_c": id_c, "desc_hash": desc_hash}


def slip(price: int, currency: int, common_hash: str, ban: str, r_c: str, code: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "ikp-slip", "price": price, "currency": currency, "common_hash": common_hash,
                           "ban": ban, "r_c": r_c}
    if code is not None:
        out["code"] = code
    return out


def merchant_digest(common_hash: bytes) -> bytes:
    """What ``Sig_M`` signs (2KP, 3KP)."""
    return hashlib.sha256(MERCHANT_TAG + common_hash).digest()


def customer_digest(enc_slip: dict[str, Any], common_hash: bytes) -> bytes:
    """What ``Sig_C`` signs (3KP): the sealed slip exactly as sent, and ``H(Common)``."""
    return hashlib.sha256(CUSTOMER_TAG + h(enc_slip) + common_hash).digest()


def code_aad(account: str) -> bytes:
    """Associated data of a sealed enrolment code: it opens only for the account it names."""
    return b"semper-ikp/code\x00" + account.encode()


__all__ = ["LEVELS", "buyer_id", "code_aad", "common", "customer_digest", "description_hash", "h", "merchant_digest",
           "slip"]
