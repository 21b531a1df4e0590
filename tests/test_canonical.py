"""The one signed byte form (client/support/canonical.py), shared by statements, payment messages,
exchange items and commerce documents (issue 13, item 6)."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semper.client.commerce import documents
from semper.client.commerce.errors import CommerceError
from semper.client.payment import wire
from semper.client.payment.errors import ProtocolError
from semper.client.support import cms
from semper.client.support.canonical import MAX_JSON_INT, NotCanonical, _plain, canonical
from semper.client.transfer import items
from semper.client.transfer.errors import MalformedItem

ENCODERS = [(documents.canonical, CommerceError), (wire.canonical, ProtocolError), (items.canonical, MalformedItem),
            (lambda v: cms.canonical_json({"type": "offer", "v": v}), cms.MalformedStatement),
            (canonical, NotCanonical)]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_every_layer_derives_the_same_bytes(value):
    try:
        expected = canonical(value)
    except NotCanonical:                       # lone surrogates: refused by every layer alike
        for encode, error in ENCODERS[:3]:
            with pytest.raises(error):
                encode(value)
        return
    for encode, _ in ENCODERS[:3]:
        assert encode(value) == expected
    assert cms.canonical_json({"type": "offer", "v": value}) == canonical({"type": "offer", "v": value})


@pytest.mark.parametrize("bad,words", [(math.nan, "floating-point"), (math.inf, "floating-point"), (1.5,
                                                                                                    "floating-point"),
                                       ("\ud800", "surrogate"), ({"k": ["ok", "\udfff"]}, "surrogate"),
                                       (2**60, "too large"), ({1: "x"}, "keys must be strings"),
                                       (b"\x00", "cannot go into signed JSON")])
@pytest.mark.parametrize("encode,error", ENCODERS)
def test_every_layer_refuses_the_same_values_with_its_own_error(encode, error, bad, words):
    """Before: documents.canonical took NaN (no canonical form) and a lone surrogate escaped as a 500."""
    with pytest.raises(error, match=words):
        encode(bad)


@settings(max_examples=500)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.text(alphabet=st.characters(exclude_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=8), inner, max_size=4),
    max_leaves=20))
def test_the_bytes_are_those_of_pythons_json_writer(value):
    """canonical() writes with msgspec (for speed, docs/performance.md); the bytes must stay exactly those
    statements signed before were made of: json.dumps with sorted keys, no spaces, UTF-8 unescaped."""
    assert canonical(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                          allow_nan=False).encode()


@pytest.mark.parametrize("text", [chr(i) for i in range(0x80)] + ["\u2028", "\u2029", "\ufeff", "\U0001f600", "é\x00"])
def test_every_escape_is_pythons(text):
    value = {text: [text], "k" + text: text}
    assert canonical(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _plain_by_definition(value):
    """What canonical._plain decides, written plainly (exact built-in types, integers within 2^53)."""
    if type(value) in (str, bool) or value is None:
        return True
    if type(value) is int:
        return abs(value) <= MAX_JSON_INT
    if type(value) is dict:
        return all(type(k) is str and _plain_by_definition(v) for k, v in value.items())
    if type(value) is list:
        return all(_plain_by_definition(v) for v in value)
    return False


class _Str(str):
    pass


class _Int(int):
    pass


_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([2**53 - 1, 2**53, -(2**53 - 1), -(2**53)])
    | st.floats() | st.text(max_size=5) | st.binary(max_size=3) | st.builds(_Str, st.text(max_size=3))
    | st.builds(_Int, st.integers(-5, 5)),
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 3) | st.builds(_Str, st.text(max_size=2)), inner,
                      max_size=4),
    max_leaves=20)


@settings(max_examples=1000)
@given(_anything)
def test_the_fast_check_decides_as_the_definition(value):
    """_plain (leaves decided inline, for speed) passes exactly what the plain definition passes; what it
    does not pass goes to the careful check, which refuses it or lets canonical() write it."""
    assert _plain(value) == _plain_by_definition(value)
