"""Amounts as people type them ("12.50") and as cards store them (minor units, ISO 4217 numeric).

How many decimals a currency has is ISO 4217's "minor unit" (EUR 2, JPY 0, KWD 3), taken from the
``iso4217`` package (ISO's own table), never assumed: 1 JPY is one minor unit, 1 KWD a thousand.
"""
from __future__ import annotations

import functools
import re
from decimal import Decimal

import iso4217

from semper.hardware.errors import SemperError

DEFAULT_CURRENCY = 978          # EUR: what an amount means when no currency is named
# plain decimals only: ASCII digits, at most one point. Decimal() alone also takes '1e3', '+5', '-0',
# 'NaN', 'Infinity', '1_000' and digits of other scripts ('١٢'), none of which a person means as money
_PLAIN = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


class AmountError(SemperError, ValueError):
    """An amount or currency that is not one (too many decimals, unknown code, ...): the user's input, exit 2."""

    exit_status = 2
    http_status = 400
    code = "bad_amount"


@functools.cache
def _by_number() -> dict[int, iso4217.Currency]:
    out: dict[int, iso4217.Currency] = {}
    for c in iso4217.Currency:
        if c.number is not None:
            out.setdefault(c.number, c)
    return out


def exponent(currency: int) -> int:
    """Decimals of a currency given by its ISO 4217 number (2 for a number ISO does not list or that
    has no minor unit defined, such as XAU: the card stores such amounts in hundredths)."""
    c = _by_number().get(currency)
    return c.exponent if c is not None and c.exponent is not None else 2


def currency_code(currency: int) -> str:
    c = _by_number().get(currency)
    return c.code if c is not None else f"{currency:03d}"


def check_amount_text(text: str) -> str:
    """The syntax of an amount, before its currency is known (an argparse type): plain decimal digits."""
    if not _PLAIN.fullmatch(text.strip()):
        raise AmountError(f"{text!r} is not an amount; write plain decimal digits like 12.50 (no sign, exponent or "
                          "thousands separator)")
    return text


def parse_amount(text: str, currency: int = DEFAULT_CURRENCY) -> int:
    """'12.50' EUR -> 1250, '500' JPY -> 500. Plain decimals only (ASCII digits and one point), as many
    decimals as the currency has at most, positive, below 2^31 minor units."""
    places = exponent(currency)
    plain = text.strip()
    if not _PLAIN.fullmatch(plain):
        example = "12" + ("." + "5" * places if places else "")
        raise AmountError(f"{text!r} is not an amount; write plain decimal digits like {example} (no sign, "
                          "exponent or thousands separator)")
    d = Decimal(plain)
    if d <= 0:
        raise AmountError(f"{text!r}: the amount must be positive")
    minor = d.scaleb(places)
    if minor != minor.to_integral_value():
        raise AmountError(f"{text!r}: {currency_code(currency)} has " +
                          (f"at most {places} decimals" if places else "no decimals"))
    if minor >= 2**31:
        raise AmountError(f"{text!r} is too large")
    return int(minor)


def parse_currency(text: str) -> int:
    code = text.strip().upper()
    if code.isascii() and code.isdigit() and 0 < int(code) < 1000:
        return int(code)
    try:
        c = iso4217.Currency(code)
    except ValueError:
        c = None
    if c is None or c.number is None:
        raise AmountError(f"unknown currency {text!r}; use an ISO 4217 code such as EUR, USD, JPY or its number")
    return c.number


def format_amount(minor: int, currency: int | None = None) -> str:
    """1250 -> '12.50', with the currency's code when given; negative amounts keep their sign on the
    whole amount (-5 -> '-0.05', not Python's floor division's '-1.95')."""
    places = exponent(currency) if currency is not None else exponent(DEFAULT_CURRENCY)
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10 ** places)
    s = f"{sign}{whole}" + (f".{frac:0{places}d}" if places else "")
    return f"{s} {currency_code(currency)}" if currency is not None else s
