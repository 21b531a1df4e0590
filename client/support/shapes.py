"""Message shapes, declared once: msgspec Structs that read and check whatever arrives from outside.

Why one module: every party reads JSON from others (HTTP bodies, the bank's signed parameters, the
payment modules' messages, the exchange's statements), and four hand-written field checkers used to
do it, each with its own idea of a missing or mistyped field. A message is now declared once, as a
:class:`Shape` (a ``msgspec.Struct`` that refuses unknown fields), with exact types and the limits
of its fields (``msgspec.Meta``: lengths, ranges, patterns; ``bytes`` fields are base64 on the
wire). :func:`decode` reads JSON bytes into a shape, :func:`convert` checks a value already parsed
(the body of a signed statement), both strictly: no ``"1"`` for 1, no ``true`` for 1, no 1.0 for 1.

Every violation becomes one :class:`ShapeError` with a stable ``code``, the ``field`` (its JSON
path, ``coins[2].serial``) and a sentence naming it; :func:`refusal` is the one place where
msgspec's errors are read. Codes: ``missing_field``, ``unknown_field``, ``wrong_type``,
``bad_base64``, ``bad_length`` (text, list or bytes too short or too long), ``bad_value`` (out of
range, not one of the allowed values, not the pattern), ``malformed_json`` (not JSON, not an object
at the top, a number no reader can hold). A shape may rename a code for one of its fields through
its ``codes`` class variable (``{"amount": "bad_amount", "amount>": "amount_too_large"}``: the key
is the top-level field, with ``<`` or ``>`` for a value below or above its range; a renamed code is
for a bad value only, never for a missing, unknown or mistyped field), and a caller for a whole
family of messages (``defaults``, keyed by kind: ``{"length": "bad_value"}``).

What a party signs is never these objects' encoding: canonical JSON (``support/canonical.py``) stays
the signed byte form; shapes are for reading and checking only.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import msgspec

from semper.hardware.errors import SemperError

S = TypeVar("S", bound="Shape")


class Shape(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The base of every message shape: unknown fields are refused; instances are read-only."""

    codes: ClassVar[Mapping[str, str]] = {}


class ShapeError(SemperError, ValueError):
    """A message that is not of its shape: ``code`` (stable), ``field`` (JSON path), a sentence."""

    exit_status = 2
    http_status = 400

    def __init__(self, code: str, field: str, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message
        self.kind = kind                # missing, unknown, type, base64, length, range, value, json


DEFAULT_CODES = {"missing": "missing_field", "unknown": "unknown_field", "type": "wrong_type", "base64": "bad_base64",
                 "length": "bad_length", "range": "bad_value", "value": "bad_value", "json": "malformed_json"}

_AT = re.compile(r"^(?P<what>.*?)(?: - at `(?P<path>[^`]*)`(?: in `(?P<inside>[^`]*)`)?)?$", re.S)
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("missing", re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")),
    ("unknown", re.compile(r"^Object contains unknown field `(?P<name>[^`]+)`$")),
    ("type", re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")),
    ("length", re.compile(r"^Expected `(?P<want>[^`]+)` of length (?P<rel>[<>]=?)? ?(?P<limit>\d+)(?:, got \d+)?$")),
    ("range", re.compile(r"^Expected `(?P<want>[^`]+)` (?P<rel>[<>]=?) (?P<limit>-?[\d.e+]+)$")),
    ("value", re.compile(r"^(?:Expected `[^`]+` matching regex .*|Invalid (?:enum )?value .*)$", re.S)),
    ("base64", re.compile(r"^Invalid base64 encoded string$")),
    ("json", re.compile(r"^Number out of range$")),
)


def _path(raw: str | None) -> str:
    """msgspec's ``$.coins[2].serial`` as ``coins[2].serial`` ("" for the whole message)."""
    if not raw or raw == "$":
        return ""
    return raw[2:] if raw.startswith("$.") else raw.removeprefix("$")


def _top(field: str) -> str:
    return re.split(r"[.\[]", field, maxsplit=1)[0]


def refusal(error: msgspec.ValidationError, shape: type[Shape] | None = None, what: str = "the message",
            defaults: Mapping[str, str] | None = None) -> ShapeError:
    """The one reading of msgspec's validation errors: kind and path -> code, field and a sentence."""
    text = str(error)
    m = _AT.match(text)
    assert m is not None                                     # the pattern matches any text
    core, at = m.group("what"), _path(m.group("path"))
    if m.group("inside"):                                    # "- at `key` in `$.x`": a key of a mapping
        at = _path(m.group("inside"))
    kind, found = "value", None
    for name, rule in _RULES:
        found = rule.match(core)
        if found:
            kind = name
            break
    field = at
    if kind in ("missing", "unknown") and found is not None:
        field = f"{at}.{found['name']}" if at else found["name"]
    named = f"the field {field!r} of {what}" if field else what
    if kind == "missing":
        sentence = f"the field {field!r} is missing from {what}"
    elif kind == "unknown":
        sentence = f"{what} has a field it does not know: {field!r}"
    elif kind == "type" and found is not None:
        sentence = f"{named} must be {_a(found['want'])}, not {_a(found['got'])}"
        if not field:
            kind = "json"                                     # the message is not an object at all
    elif kind == "length" and found is not None:
        unit = {"str": "characters", "bytes": "bytes"}.get(found["want"], "elements")
        sentence = f"{named} must have {_bound(found['rel'])}{found['limit']} {unit}"
    elif kind == "range" and found is not None:
        sentence = f"{named} must be {_bound(found['rel'])}{found['limit']}"
    elif kind == "base64":
        sentence = f"{named} is not base64 (RFC 4648, with padding)"
    elif kind == "json":
        sentence = f"{named} holds a number no JSON reader can hold"
    else:
        sentence = f"{named} has a value that is not allowed ({core[0].lower() + core[1:]})"
    return ShapeError(_code(kind, field, found, shape, defaults), field, sentence, kind)


def _code(kind: str, field: str, found: re.Match[str] | None, shape: type[Shape] | None,
          defaults: Mapping[str, str] | None) -> str:
    own = shape.codes if shape is not None else {}
    top = _top(field)
    if kind == "range" and found is not None:
        side = "<" if found["rel"].startswith(">") else ">"     # "must be >= 1": the value was below
        if top + side in own:
            return own[top + side]
    if kind in ("length", "range", "value", "base64") and top in own:
        return own[top]
    return (defaults or {}).get(kind) or DEFAULT_CODES[kind]


def _a(type_name: str) -> str:
    name = {"str": "text", "int": "an integer", "bool": "true or false", "null": "null", "float": "a decimal number",
            "object": "a JSON object", "array": "a list", "bytes": "base64 text"}.get(type_name, type_name)
    return name if name.startswith(("a ", "an ", "true")) or name in ("text", "null", "base64 text") else f"a {name}"


def _bound(rel: str | None) -> str:
    return {"<=": "at most ", ">=": "at least ", "<": "less than ", ">": "more than "}.get(rel or "", "exactly ")


def _structure_first(data: Any, shape: type[Shape], what: str, defaults: Mapping[str, str] | None) -> None:
    """Unknown and missing top-level fields are reported before a bad value in another field, whatever
    their order in the message (msgspec reports the first problem it meets)."""
    if not isinstance(data, dict):
        return
    fields = _fields(shape)
    names = {f.encode_name for f in fields}
    unknown = sorted(k for k in data if k not in names)
    if unknown:
        code = (defaults or {}).get("unknown") or DEFAULT_CODES["unknown"]
        raise ShapeError(code, unknown[0], f"{what} has field(s) it does not know: {', '.join(map(repr, unknown))}",
                         "unknown")
    for f in fields:
        if f.required and f.encode_name not in data:
            code = (defaults or {}).get("missing") or DEFAULT_CODES["missing"]
            raise ShapeError(code, f.encode_name, f"the field {f.encode_name!r} is missing from {what}", "missing")


@functools.cache
def _fields(shape: type[Shape]) -> tuple[msgspec.structs.FieldInfo, ...]:
    return msgspec.structs.fields(shape)          # slow (it resolves the annotations): once per shape


def _not_json(defaults: Mapping[str, str] | None, message: str) -> ShapeError:
    return ShapeError((defaults or {}).get("json") or DEFAULT_CODES["json"], "", message, "json")


def _refused(e: msgspec.ValidationError, data: Any, shape: type[Shape], what: str,
             defaults: Mapping[str, str] | None) -> ShapeError:
    """The refusal for ``e``; an unknown or missing top-level field of ``data`` is said first."""
    error = refusal(e, shape, what, defaults)
    if error.kind not in ("missing", "unknown") or error.field != _top(error.field):
        _structure_first(data, shape, what, defaults)
    return error


def decode(raw: bytes, shape: type[S], what: str = "the body", defaults: Mapping[str, str] | None = None) -> S:
    """JSON bytes as ``shape``, strictly; a :class:`ShapeError` otherwise (``malformed_json`` when the
    bytes are not JSON: not UTF-8, a lone surrogate, NaN, trailing text, nesting too deep)."""
    try:
        return msgspec.json.decode(raw, type=shape, strict=True)
    except msgspec.ValidationError as e:
        try:
            data = msgspec.json.decode(raw)               # only on this path: a refusal costs a second read
        except msgspec.DecodeError as bad:                # not JSON further on: that comes first
            raise _not_json(defaults, f"{what} is not JSON this service reads: {bad}") from None
        except RecursionError:
            data = None
        raise _refused(e, data, shape, what, defaults) from None
    except msgspec.DecodeError as e:
        raise _not_json(defaults, f"{what} is not JSON this service reads: {e}") from None
    except RecursionError:
        raise _not_json(defaults, f"{what} nests lists or objects too deeply") from None


def convert(value: Any, shape: type[S], what: str = "the message", defaults: Mapping[str, str] | None = None) -> S:
    """An already parsed JSON value (a dict from a signed statement) as ``shape``, strictly."""
    try:
        return msgspec.convert(value, shape, strict=True)
    except msgspec.ValidationError as e:
        raise _refused(e, value, shape, what, defaults) from None
    except RecursionError:
        raise _not_json(defaults, f"{what} nests lists or objects too deeply") from None
