"""The one signed byte form of a JSON value: UTF-8, keys sorted, no insignificant space.

Everything semper hashes or signs as JSON (statements, payment messages, exchange items, documents)
goes through :func:`canonical`, so two parties always derive the same bytes from the same value. Only
values every JSON reader reads the same way are allowed: no floats (money is in minor units), no
NaN, integers within 2^53, string keys, and text that has a UTF-8 form (no lone UTF-16 surrogate).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from semper.hardware.errors import SemperError

MAX_JSON_INT = 2**53 - 1          # beyond this JSON readers disagree
# msgspec writes exactly the bytes of json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) for
# the plain values canonical() accepts (tests/test_canonical.py holds the two together), ten times faster
_ENCODER = msgspec.json.Encoder(order="sorted")


class NotCanonical(SemperError, ValueError):
    """The value has no canonical JSON form; the message names the offending part's path."""

    http_status = 400
    code = "not_canonical"


def canonical(value: Any, where: str = "value", error: type[Exception] = NotCanonical) -> bytes:
    """The canonical bytes of ``value``; ``error`` is the exception class the caller's layer raises
    for bad input (it gets the message with the path of the offending part)."""
    if not _plain(value):
        _find_problem(value, where, error)        # raises, naming the path
    try:
        return _ENCODER.encode(value)
    except UnicodeEncodeError:
        _find_surrogate(value, where, error)
        raise error(f"{where}: text with a lone UTF-16 surrogate has no UTF-8 form") from None


_LEAVES = frozenset((str, bool, type(None)))     # exact types that are always plain


def _plain(value: Any) -> bool:
    """JSON of exact built-in types within the limits: exact type checks, no ABCs (runs per value).

    Why this shape: it runs over every value a party signs or checks; leaves are decided where they
    are met (one set lookup, the integer bound inline) instead of by a call each, a third less time
    (tests/test_canonical.py holds it to the plain definition)."""
    kind = type(value)
    if kind is dict:
        for k, v in value.items():
            t = type(v)
            if type(k) is not str or (t not in _LEAVES and not (-MAX_JSON_INT <= v <= MAX_JSON_INT if t is int
                                                                else _plain(v))):
                return False
        return True
    if kind is list:
        for v in value:
            t = type(v)
            if t not in _LEAVES and not (-MAX_JSON_INT <= v <= MAX_JSON_INT if t is int else _plain(v)):
                return False
        return True
    if kind in _LEAVES:
        return True
    if kind is int:
        return -MAX_JSON_INT <= value <= MAX_JSON_INT
    return False


def _find_problem(value: Any, where: str, error: type[Exception]) -> None:
    """The same rules for everything else (subclasses, tuples, mappings), with the path in the message."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) > MAX_JSON_INT:
            raise error(f"{where}: integer {value} is too large for JSON readers; send it as a string")
        return
    if isinstance(value, float):
        raise error(f"{where}: floating-point numbers have no canonical form; use integers (minor units) "
                    "or strings")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise error(f"{where}: object keys must be strings, not {type(k).__name__}")
            _find_problem(v, f"{where}.{k}", error)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _find_problem(v, f"{where}[{i}]", error)
        return
    raise error(f"{where}: {type(value).__name__} cannot go into signed JSON (JSON values only; encode bytes "
                "as hex or base64)")


def _find_surrogate(value: Any, where: str, error: type[Exception]) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise error(f"{where}: text with a lone UTF-16 surrogate has no UTF-8 form") from None
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _find_surrogate(k, f"{where} (a key)", error)
            _find_surrogate(v, f"{where}.{k}", error)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _find_surrogate(v, f"{where}[{i}]", error)
