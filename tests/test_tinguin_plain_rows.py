"""The confirmation page's fast path for plain rows gives the very page of the character-by-character path.

Why: the buyer's client renders the page at every purchase, and rendering was about half of its CPU
(docs/performance.md, "The buyer's confirmation page"). :meth:`_Page._plain_row` puts a plain ASCII word
at once; what the user reads and signs (the text), and what the TINGUIN colours (the spans), must not
change by a character, for any text, indentation or word length (a word longer than a line, runs of
spaces, a row that ends in a space).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tinguin_samples import request

from semper.client.tinguin import confirmation

pytestmark = pytest.mark.timeout(120)

PLAIN = st.lists(st.sampled_from(list("abcXYZ019.,-:/()'\"") + [" ", " ", "  ", "word ", "x" * 75]),
                 max_size=60).map("".join)
ANY = st.lists(st.sampled_from(list("ab \\\t\n") + ["\u00e9", "\u043e", "\u202e", "\u4e00", "\u0301"]),
               max_size=120).map("".join)


def _both(page_of: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = page_of()
    with monkeypatch.context() as m:
        m.setattr(confirmation, "_plain", lambda row: False)          # the character-by-character path
        slow = page_of()
    return fast, slow


def _same(fast: Any, slow: Any) -> None:
    assert fast.text == slow.text
    assert fast.spans == slow.spans
    assert fast.size == slow.size == len(fast.text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(PLAIN, ANY), indent=st.sampled_from(["", "  ", "     "]), more=st.sampled_from([None, "      "]),
       col=st.integers(min_value=0, max_value=80))
def test_a_marked_piece_is_laid_out_as_character_by_character(monkeypatch: pytest.MonkeyPatch, text: str,
                                                              indent: str, more: str | None, col: int) -> None:
    def page_of() -> Any:
        page = confirmation._Page()
        page.put("x" * col)                   # wherever the line has got to
        page.line("Label ", confirmation.Theirs(text), " tail", confirmation.Theirs(text + " " + text),
                  indent=indent, more=more)
        return page
    _same(*_both(page_of, monkeypatch))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(description=PLAIN, label=PLAIN, value=st.one_of(PLAIN, ANY))
def test_a_whole_confirmation_is_the_same_page(monkeypatch: pytest.MonkeyPatch, description: str, label: str,
                                               value: str) -> None:
    base = request()
    items = tuple(dataclasses.replace(i, description=description or "x") for i in base.offer.items)
    req = dataclasses.replace(base, offer=dataclasses.replace(base.offer, items=items),
                              details=((label or "l", value),))
    _same(*_both(lambda: confirmation._page(req), monkeypatch))


def test_the_fast_path_is_taken_for_plain_rows_only() -> None:
    assert confirmation._plain("A bicycle, blue (size 56)")
    assert not confirmation._plain("back\\slash")               # shown doubled
    assert not confirmation._plain("tab\there")                 # shown as an escape
    assert not confirmation._plain("caf\u00e9")                  # not ASCII: its width and escapes are asked


def test_every_word_length_at_every_column(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each edge of the line (a word that ends on the last cell, one cell past it, a word as long as a line)
    at every column the line can be at: the same page both ways."""
    for width in (1, 2, 10, 40, 66, 67, 68, 69, 70, 75):
        for col in range(0, confirmation.WIDTH + 2):
            text = " ".join(["w" * width, "v" * (width // 2 + 1), "u" * width + " "])

            def page_of(col: int = col, text: str = text) -> Any:
                page = confirmation._Page()
                page.put("x" * col)
                page.line(confirmation.Theirs(text), indent="  ")
                return page
            _same(*_both(page_of, monkeypatch))


def test_render_is_the_styled_pages_text() -> None:
    """render() skips the colours; its text is still the styled page's, character for character."""
    req = request()
    assert confirmation.render(req) == confirmation.styled(req).plain == confirmation._page(req).text
    assert confirmation._page(req, spans=False).spans == []
