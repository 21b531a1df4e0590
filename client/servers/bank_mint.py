"""The mint: e-cash coins blind-signed on withdrawal, deposited on line, each spent once.

Withdrawal debits the holder's account and credits e-cash outstanding by the coins' value; the
mint signs each blinded coin with the RSA key of its denomination, in the token (raw RSA), and
checks its own result before answering. It never sees the coins themselves, so at deposit it
cannot tell who withdrew them. Deposit checks every coin's signature with the denomination's key
and records its serial; a serial seen before is a double spend and the whole deposit is refused.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from msgspec import Meta

from ..payment import blind, formats
from ..payment.errors import ProtocolError
from ..payment.wire import b64
from ..support.db import Transaction
from ..support.shapes import Shape
from . import bank_store as store
from .bank_store import AccountId, BankRefusal, Op

if TYPE_CHECKING:
    from .bank import Bank, MintKey, Sender

MAX_COINS = 64
MAX_DEPOSIT = 256


class BlindCoin(Shape, frozen=True):
    key_id: str
    blinded: Annotated[bytes, Meta(max_length=1024)]


class Withdraw(Shape, frozen=True):
    """``mint/withdraw``: blinded coins for the mint to sign, paid from the account."""

    codes = {"coins": "malformed"}
    account: AccountId
    coins: Annotated[list[BlindCoin], Meta(min_length=1, max_length=MAX_COINS)]


class Deposit(Shape, frozen=True):
    """``mint/deposit``: coins to credit to the account, each spent once."""

    codes = {"coins": "malformed"}
    account: AccountId
    coins: Annotated[list[formats.WireCoin], Meta(min_length=1, max_length=MAX_DEPOSIT)]


def _key(bank: Bank, key_id: str) -> MintKey:
    k = bank.mint_keys.get(key_id)
    if k is None:
        raise BankRefusal("unknown_key", f"the mint has no key {key_id!r}", 404)
    return k


@dataclass(frozen=True)
class WithdrawCheck:
    account: str
    coins: list[tuple[MintKey, bytes]]


def check_withdraw(bank: Bank, sender: Sender, p: Withdraw) -> WithdrawCheck:
    coins = []
    for c in p.coins:
        k = _key(bank, c.key_id)
        x = c.blinded
        if len(x) != (k.public.key_size + 7) // 8 or int.from_bytes(x, "big") >= k.public.public_numbers().n:
            raise BankRefusal("malformed", "a blinded coin is not a number below the mint key's modulus")
        coins.append((k, x))
    if len({k.currency for k, _ in coins}) != 1:
        raise BankRefusal("currency_mismatch", "all coins of one withdrawal must be in one currency", 422)
    return WithdrawCheck(p.account, coins)


def apply_withdraw(bank: Bank, tx: Transaction, sender: Sender, c: WithdrawCheck) -> dict[str, Any]:
    acc = bank.owned_account(tx, c.account, sender)
    currency = c.coins[0][0].currency
    if acc.currency != currency:
        raise BankRefusal("currency_mismatch", f"account {acc.id} holds currency {acc.currency}, the coins are "
                                               f"{currency}", 422)
    total = sum(k.denomination for k, _ in c.coins)
    if total > 2**31 - 1:
        raise BankRefusal("amount_too_large", "the withdrawal is above the limit")
    wid = "W" + secrets.token_hex(8).upper()
    entry = store.post(tx, "ecash-withdraw", wid, [(acc.id, -total), (store.system_account("ecash", currency), total)])
    sigs = []
    for k, x in c.coins:
        s = bank.keys.rsa.raw_sign(bytes.fromhex(k.key_id), x)
        blind.blind_sign_check(k.public, x, s)
        sigs.append(b64(s))
    tx.execute("INSERT INTO withdrawals (id, account, currency, total, coins, entry, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (wid, acc.id, currency, total, len(c.coins), entry, store.now_iso()))
    return {"withdrawal": wid, "total": total, "currency": currency, "signatures": sigs}


@dataclass(frozen=True)
class DepositCheck:
    account: str
    coins: list[tuple[MintKey, str, bytes]]


def check_deposit(bank: Bank, sender: Sender, p: Deposit) -> DepositCheck:
    coins = []
    for c in p.coins:
        k = _key(bank, c.key_id)
        serial, sig = c.serial, c.signature
        try:
            blind.verify(k.public, formats.coin_message(k.key_id, serial), sig)
        except ProtocolError as e:
            raise BankRefusal("bad_coin", f"coin {serial[:12]}...: {e}", 401) from None
        coins.append((k, serial, sig))
    if len({s for _, s, _ in coins}) != len(coins):
        raise BankRefusal("double_spend", "the deposit holds the same coin twice", 409)
    if len({k.currency for k, _, _ in coins}) != 1:
        raise BankRefusal("currency_mismatch", "all coins of one deposit must be in one currency", 422)
    return DepositCheck(p.account, coins)


def apply_deposit(bank: Bank, tx: Transaction, sender: Sender, c: DepositCheck) -> dict[str, Any]:
    acc = bank.owned_account(tx, c.account, sender)
    currency = c.coins[0][0].currency
    if acc.currency != currency:
        raise BankRefusal("currency_mismatch", f"account {acc.id} holds currency {acc.currency}", 422)
    for _, serial, _ in c.coins:
        if tx.one("SELECT at FROM spent_coins WHERE serial = ?", (serial,)):
            raise BankRefusal("double_spend", f"coin {serial[:12]}... was deposited before: double spending is "
                                              "refused", 409)
    total = sum(k.denomination for k, _, _ in c.coins)
    entry = store.post(tx, "ecash-deposit", f"deposit/{len(c.coins)}",
                       [(store.system_account("ecash", currency), -total), (acc.id, total)])
    for k, serial, sig in c.coins:
        tx.execute("INSERT INTO spent_coins (serial, key_id, denomination, currency, signature, account, entry, at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (serial, k.key_id, k.denomination, currency, sig.hex(), acc.id,
                                                      entry, store.now_iso()))
    return {"total": total, "currency": currency, "coins": len(c.coins), "state": "deposited"}


OPS = [Op("mint/withdraw", Withdraw, check_withdraw, apply_withdraw),
       Op("mint/deposit", Deposit, check_deposit, apply_deposit)]
