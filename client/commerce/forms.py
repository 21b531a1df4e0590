"""Order forms: structured, validated fields, the same on both sides.

Why structured forms: the business application (a web page, the command line) collects what the
order needs (where to deliver, who registers), but it is untrusted. The form's *spec* is part of
the seller's signed offer, the *values* are validated here against that spec and against fixed
local limits (kinds, lengths, characters) before the TINGUIN shows them and the buyer signs them,
and the seller validates them again against its own spec. A value that would not show as typed
(control characters, bidi overrides) is refused, so what the user confirms is what is signed.
"""
from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import FormError

KINDS = ("text", "email", "postcode", "country", "choice")
MAX_LEN = 120
MAX_FIELDS = 12
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}$")
_POSTCODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 -]{1,10}$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_KEY = json.JSONEncoder(sort_keys=True)     # json.dumps(d, sort_keys=True), without an encoder made per call


def _plain(value: str, field: str) -> str:
    """One line of visible characters: no controls, no format characters (bidi, zero-width).

    Printable ASCII (most values) has none of them, and is told so without asking each character's
    category (the seller checks every order's form; docs/performance.md)."""
    if value.isascii() and value.isprintable():
        return " ".join(value.split())
    for ch in value:
        cat = unicodedata.category(ch)
        if cat[0] == "C" or cat in ("Zl", "Zp"):
            raise FormError(field, f"contains the invisible or control character U+{ord(ch):04X}; type it plainly")
    return " ".join(value.split())


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: str = "text"
    required: bool = True
    max_len: int = 80
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.kind not in KINDS or not 1 <= self.max_len <= MAX_LEN:
            raise FormError(self.name, f"bad field definition (name [a-z0-9_], kind one of {', '.join(KINDS)}, "
                                       f"length 1-{MAX_LEN})")
        if (self.kind == "choice") != bool(self.choices):
            raise FormError(self.name, "a choice field lists its choices, and only a choice field does")

    def check(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise FormError(self.name, "must be text")
        value = _plain(raw, self.name)
        if not value:
            raise FormError(self.name, "is empty")
        if len(value) > self.max_len:
            raise FormError(self.name, f"is longer than {self.max_len} characters")
        if self.kind == "email" and not _EMAIL.match(value):
            raise FormError(self.name, f"{value!r} is not an e-mail address")
        if self.kind == "postcode" and not _POSTCODE.match(value):
            raise FormError(self.name, f"{value!r} is not a postcode")
        if self.kind == "country" and not (len(value) == 2 and value.isascii() and value.isalpha()):
            raise FormError(self.name, f"{value!r} is not a two-letter country code (ISO 3166)")
        if self.kind == "country":
            value = value.upper()
        if self.kind == "choice" and value not in self.choices:
            raise FormError(self.name, f"{value!r} is not one of {', '.join(self.choices)}")
        return value

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "label": self.label, "kind": self.kind, "required": self.required,
                               "max_len": self.max_len}
        if self.choices:
            out["choices"] = list(self.choices)
        return out

    @staticmethod
    def from_json(d: Any) -> Field:
        if not isinstance(d, Mapping):
            raise FormError("?", "a field definition must be a JSON object")
        try:
            choices = tuple(str(c) for c in d.get("choices", ()))
            return Field(str(d["name"]), _plain(str(d["label"]), "label")[:60], str(d.get("kind", "text")),
                         bool(d.get("required", True)), int(d.get("max_len", 80)), choices)
        except (KeyError, TypeError, ValueError) as e:
            raise FormError(str(d.get("name", "?")), f"bad field definition ({e})") from None


@dataclass(frozen=True)
class FormSpec:
    """A form: its name and fields, in the order the TINGUIN shows them."""

    name: str
    fields: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        if len(self.fields) > MAX_FIELDS or len({f.name for f in self.fields}) != len(self.fields):
            raise FormError(self.name, f"a form has at most {MAX_FIELDS} fields with distinct names")

    def validate(self, values: Mapping[str, Any]) -> dict[str, str]:
        """The values, checked and normalised; unknown fields and missing required ones refused."""
        if not isinstance(values, Mapping):
            raise FormError(self.name, "the form values must be a JSON object")
        known = {f.name for f in self.fields}
        for extra in sorted(set(values) - known):
            raise FormError(extra, f"the {self.name} form has no such field")
        out: dict[str, str] = {}
        for f in self.fields:
            if f.name not in values or values[f.name] in (None, ""):
                if f.required:
                    raise FormError(f.name, f"is required ({f.label})")
                continue
            out[f.name] = f.check(values[f.name])
        return out

    def lines(self, values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """(label, value) in the form's order: what the confirmation shows."""
        return tuple((f.label, values[f.name]) for f in self.fields if f.name in values)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "fields": [f.to_json() for f in self.fields]}

    @staticmethod
    def from_json(d: Any) -> FormSpec:
        if not isinstance(d, Mapping) or not isinstance(d.get("fields", []), list):
            raise FormError("form", "a form spec is {name, fields: [...]}")
        try:
            key = _KEY.encode(d)
        except (TypeError, ValueError):
            return FormSpec._parse(d)
        return FormSpec._parsed(key)

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _parsed(text: str) -> FormSpec:
        """A shop uses a handful of forms; each spec is checked once (FormSpec is immutable)."""
        return FormSpec._parse(json.loads(text))

    @staticmethod
    def _parse(d: Mapping[str, Any]) -> FormSpec:
        return FormSpec(str(d.get("name", "form"))[:40], tuple(Field.from_json(f) for f in d.get("fields", [])))


NONE = FormSpec("none")
DELIVERY = FormSpec("delivery", (
    Field("name", "Deliver to", "text"), Field("street", "Street", "text"),
    Field("postcode", "Postcode", "postcode", max_len=11), Field("city", "City", "text", max_len=60),
    Field("country", "Country", "country", max_len=2)))
PICKUP = FormSpec("pickup", (Field("pickup", "Pick-up point", "choice", choices=("Station A", "Station B",
                                                                                "Kiosk C")),))
REGISTRATION = FormSpec("registration", (Field("name", "Member name", "text"),
                                         Field("email", "E-mail", "email", max_len=120)))
FORMS = {f.name: f for f in (NONE, DELIVERY, PICKUP, REGISTRATION)}


def form_for(kind: str, anonymous: bool) -> FormSpec:
    """Which form an item kind needs; anonymous deals collect no name or address (a pick-up point instead)."""
    if kind == "physical":
        return PICKUP if anonymous else DELIVERY
    if kind == "registration":
        return REGISTRATION
    return NONE
