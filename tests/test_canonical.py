"""The one signed byte form (client/support/canonical.py), shared by statements, payment messages,
exchange items and commerce documents (issue 13, item 6)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from semper.client.commerce import documents
from semper.client.commerce.errors import CommerceError
from semper.client.payment import wire
from semper.client.payment.errors import ProtocolError
from semper.client.support import cms
from semper.client.support.canonical import NotCanonical, canonical
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
