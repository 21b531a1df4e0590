"""The hand-off request a web page makes to the buyer's agent, and the checks on where it came from.

Why its own module: the request is the one thing an untrusted page can put into the buyer's client,
so what it may contain is declared once and read strictly here, for both doors (the loopback
endpoint's JSON body and the ``web+semper:`` link the desktop hands to ``semper agent open``).

A request names the shop (an https origin), the offer id the shop's page made (a checkout: the items
the buyer chose) and the filled form. Nothing else: no price, no seller name, no item list; the agent
asks the shop for those and gets them signed.
"""
from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

import msgspec

from semper.hardware.errors import SemperError

from ..support.shapes import Shape

SCHEME = "web+semper"
MAX_FORM = 12
_ORIGIN = re.compile(r"^https://(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
                     r"|\[[0-9a-f:]{2,39}\])(?::[0-9]{1,5})?$")
OfferId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{22}$")]
FieldName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
FieldValue = Annotated[str, msgspec.Meta(max_length=240)]


class BadHandoff(SemperError):
    """A hand-off that is not a purchase request (bad input: exit 2, HTTP 400)."""

    exit_status = 2
    http_status = 400
    code = "bad_handoff"


class Handoff(Shape, frozen=True):
    """What a page may ask: this shop, this offer id, this form (values checked later against the signed
    offer's form spec, which the shop signs, not the page)."""

    shop: Annotated[str, msgspec.Meta(max_length=300)]
    offer: OfferId
    form: Annotated[dict[FieldName, FieldValue], msgspec.Meta(max_length=MAX_FORM)] = {}


def origin_of(url: str) -> str | None:
    """``url`` as an https origin (scheme://host[:port], lower case, no path), or None if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    origin = f"https://{host.lower()}" + (f":{port}" if port not in (None, 443) else "")
    return origin if _ORIGIN.match(origin) else None


def from_link(link: str) -> Handoff:
    """A ``web+semper:purchase?shop=...&offer=...&form.NAME=VALUE`` link as a request (BadHandoff if not one)."""
    scheme, sep, rest = link.partition(":")
    if scheme.lower() != SCHEME or not sep:
        raise BadHandoff(f"not a {SCHEME}: link")
    what, _, query = rest.partition("?")
    if what != "purchase":
        raise BadHandoff(f"a {SCHEME}: link asks for a purchase ({SCHEME}:purchase?shop=...&offer=...)")
    pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=2 + MAX_FORM)
    fields: dict[str, str] = {}
    form: dict[str, str] = {}
    for key, value in pairs:
        target, name = (form, key.removeprefix("form.")) if key.startswith("form.") else (fields, key)
        if name in target:
            raise BadHandoff(f"the link names {key!r} twice")
        target[name] = value
    try:
        return msgspec.convert({**fields, "form": form}, Handoff)
    except msgspec.ValidationError as e:
        raise BadHandoff(f"the {SCHEME}: link is not a purchase request: {e}") from None
