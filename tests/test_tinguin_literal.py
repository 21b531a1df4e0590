"""The sanitiser every piece of untrusted text goes through (client/tinguin/literal.py)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console

from semper.client.tinguin.literal import literal, literal_text


def test_plain_text_is_unchanged():
    assert literal("Blue teapot, 0.5 l (porcelain) — 12,50 €") == "Blue teapot, 0.5 l (porcelain) — 12,50 €"
    assert literal("Müller GmbH 東京") == "Müller GmbH 東京"


def test_markup_stays_literal_characters():
    for s in ("[bold red]VERIFIED[/]", "[link=https://evil.example]click[/link]", "[/]", "[@click=app.quit]x[/]"):
        assert literal(s) == s
        assert literal_text(s).plain == s


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),                       # CSI: clear screen, home
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),                  # OSC set title, BEL terminated
    ("\x1b]8;;https://x\x1b\\link\x1b]8;;\x1b\\", "\\x1b]8;;https://x\\x1b\\\\link\\x1b]8;;\\x1b\\\\"),  # OSC 8
    ("\x9b31m", "\\x9b31m"),                                     # C1 CSI
    ("a\x00b\x7fc", "a\\x00b\\x7fc"),
    ("paid\rVERIFIED", "paid\\rVERIFIED"),
    ("line1\nline2\r\n", "line1\\nline2\\r\\n"),
    ("tab\there", "tab\\there"),
    ("x\u2028y\u2029z", "x\\u2028y\\u2029z"),                    # line / paragraph separators
    ("abc\u202edcba", "abc\\u202edcba"),                         # right-to-left override
    ("\u2066i\u2069 \u200f\u061c", "\\u2066i\\u2069 \\u200f\\u061c"),  # isolates, RLM, ALM
    ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
    ("nb\u00a0sp\u3000", "nb\\xa0sp\\u3000"),                    # unusual spaces
    ("\ue000private", "\\ue000private"),
    ("back\\slash", "back\\\\slash"),                            # a typed "\x1b" cannot pass for an escape
    ("lone\ud800surrogate", "lone\\ud800surrogate"),
])
def test_controls_and_invisibles_are_shown_as_escapes(raw, shown):
    assert literal(raw) == shown


def test_tinguin_chrome_glyphs_are_escaped():
    fake = "🔒 ✔ VERIFIED ▌ semper ┃ ██ ⚠"
    out = literal(fake)
    for glyph in "🔒✔▌┃█⚠":
        assert glyph not in out
    assert "\\U0001f512" in out and "\\u2714" in out and "VERIFIED" in out


def test_combining_mark_runs_are_cut():
    assert literal("e\u0301") == "e\u0301"                      # an accent is fine
    zalgo = "Z" + "\u0336" * 10
    out = literal(zalgo)
    assert out.startswith("Z\u0336\u0336\\u0336") and out.count("\\u0336") == 8


def test_length_limit_has_an_explicit_marker():
    out = literal("x" * 500, limit=40)
    assert cell_len(out) <= 40 and out.endswith("…[" + str(500 - out.index("…")) + " more]")
    assert literal("x" * 40, limit=40) == "x" * 40
    wide = literal("東" * 100, limit=30)                          # 2 cells each
    assert cell_len(wide) <= 30 and "more]" in wide
    escaped = literal("\x1b" * 100, limit=30)                    # escapes count at their shown width
    assert cell_len(escaped) <= 30 and "\\x1b" in escaped and escaped.endswith("more]")
    with pytest.raises(ValueError):
        literal("abc", limit=5)


def test_refuses_non_text():
    with pytest.raises(TypeError):
        literal(b"\x1b[31m")


def test_styled_text_marks_escapes_and_equals_literal():
    t = literal_text("a\x1bb" + "y" * 200, limit=30)
    assert t.plain == literal("a\x1bb" + "y" * 200, limit=30)
    styles = {str(span.style) for span in t.spans}
    assert "reverse" in styles and "italic" in styles


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=("Cs",)), max_size=300),
       st.integers(min_value=12, max_value=200))
def test_any_input_renders_as_one_safe_line(text, limit):
    out = literal(text, limit)
    assert out == literal_text(text, limit).plain
    assert cell_len(out) <= limit
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)
    assert "\u2028" not in out and "\u2029" not in out and "\u202e" not in out
    # and it renders on exactly one terminal line when there is room
    console = Console(width=limit + 1, file=None, force_terminal=True, color_system=None, record=True,
                      legacy_windows=False)
    with console.capture() as cap:
        console.print(literal_text(text, limit), end="", soft_wrap=False, crop=True)
    assert "\n" not in cap.get().rstrip("\n")
