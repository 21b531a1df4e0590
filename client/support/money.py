"""Amounts as people type them ("12.50") and as cards store them (minor units, ISO 4217 numeric)."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

CURRENCIES = {"EUR": 978, "USD": 840, "CHF": 756, "GBP": 826, "DKK": 208, "NOK": 578}
_BY_CODE = {v: k for k, v in CURRENCIES.items()}


class AmountError(ValueError):
    pass


def parse_amount(text: str) -> int:
    """'12.50' -> 1250. Two decimals at most, positive, below 2^31 minor units."""
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise AmountError(f"{text!r} is not an amount; write it like 12.50") from None
    if not d.is_finite() or d <= 0:
        raise AmountError(f"{text!r}: the amount must be positive")
    if d != d.quantize(Decimal("0.01")):
        raise AmountError(f"{text!r}: at most two decimals")
    minor = int(d * 100)
    if minor >= 2**31:
        raise AmountError(f"{text!r} is too large")
    return minor


def parse_currency(text: str) -> int:
    code = text.strip().upper()
    if code in CURRENCIES:
        return CURRENCIES[code]
    if code.isdigit() and 0 < int(code) < 1000:
        return int(code)
    raise AmountError(f"unknown currency {text!r}; use one of {', '.join(CURRENCIES)} or an ISO 4217 number")


def format_amount(minor: int, currency: int | None = None) -> str:
    s = f"{minor // 100}.{minor % 100:02d}"
    return f"{s} {_BY_CODE.get(currency, str(currency))}" if currency is not None else s
