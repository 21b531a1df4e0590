"""Showing untrusted text literally: the one place where seller-supplied text is made harmless.

Why one function: every string the TINGUIN did not write itself (item descriptions, offer and deal
ids, names in certificates, archive entry kinds, error details from a counterparty) passes through
:func:`literal` before it reaches the screen, so there is exactly one thing to get right and test.
What it guarantees, whatever the input:

* **no markup**: the result is meant to be shown as plain text (a Rich ``Text``, never parsed as
  console markup); ``[bold red]VERIFIED[/]`` stays those characters;
* **one line**: newlines, carriage returns, tabs, line/paragraph separators become visible
  escapes (``\\n``), so seller text can never start a line of its own and paint a fake status line;
* **no terminal control**: C0 and C1 control characters, DEL and every escape sequence they could
  start (CSI, OSC, BEL ...) are shown as ``\\x1b`` and the like, never sent to the terminal;
* **no invisible tricks**: Unicode format characters (bidi overrides and isolates, zero-width
  joiners, soft hyphens, BOM), unusual spaces, private-use and unassigned code points, and long
  runs of combining marks are shown as ``\\u202e`` escapes;
* **no TINGUIN chrome**: the glyphs the TINGUIN draws its frame and status marks with (box drawing,
  blocks, geometric shapes, check marks, the lock) are escaped too, so no seller line can look like
  part of the real frame or status area; among them the marks the confirmation puts around words
  the TINGUIN did not write (``❝`` ``❞``, ``┆`` ``┃``, ``⚠``), so those words can never close their
  own marks and go on as the TINGUIN's;
* **bounded**: at most ``limit`` terminal cells, cut with an explicit ``…[N more]`` marker;
* **unambiguous**: a backslash is shown as ``\\\\``, so an escape in the output always means the
  character was there, and a seller cannot pass off ``\\x1b`` typed as text for something else.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Iterator

from rich.cells import cell_len
from rich.text import Text

#: default width for one field of seller text, in terminal cells
DEFAULT_LIMIT = 120

#: glyphs the TINGUIN itself draws with (frame, status marks); never shown from untrusted text
_RESERVED_RANGES = (
    (0x2500, 0x27BF),     # box drawing, block elements, geometric shapes, misc symbols, dingbats (✔ ✘ ⚠)
    (0x2B00, 0x2BFF),     # misc symbols and arrows (⬤ ⭘ ...)
    (0x1F510, 0x1F513),   # locks 🔐 🔑 🔒 🔓
    (0x1F6E1, 0x1F6E1),   # shield 🛡
    (0x2705, 0x2705),     # ✅ (already in the dingbats range; kept explicit)
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_MAX_COMBINING = 2          # marks allowed on one base character (more: "zalgo" text painting over lines)


def _reserved(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _RESERVED_RANGES)


def _escape(ch: str) -> str:
    cp = ord(ch)
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def tokens(text: str) -> Iterator[tuple[str, bool]]:
    """``(piece, escaped)`` for each character of ``text``: the piece to show, and whether it is an escape."""
    combining = 0
    for ch in text:
        if ch in _NAMED:
            combining = 0
            yield _NAMED[ch], ch != "\\"
            continue
        cat = unicodedata.category(ch)
        cp = ord(ch)
        if cat in ("Mn", "Me"):
            combining += 1
            if combining > _MAX_COMBINING:
                yield _escape(ch), True
                continue
            yield ch, False
            continue
        combining = 0
        if cat in _ESCAPED_CATEGORIES or (cat == "Zs" and ch != " ") or _reserved(cp):
            yield _escape(ch), True
        else:
            yield ch, False


def _marker(rest: int) -> str:
    return f"…[{rest} more]"


def shows_as_itself(text: str) -> bool:
    """Printable ASCII without a backslash: every character shows as itself in one cell, exactly what
    :func:`tokens` would say character by character (checked at C speed; most fields, and the confirmation
    page's plain rows)."""
    return text.isascii() and text.isprintable() and "\\" not in text


def _plain(text: str, limit: int) -> bool:
    """:func:`shows_as_itself`, and it fits in ``limit`` cells."""
    return len(text) <= limit and shows_as_itself(text)


def _cut(text: str, limit: int) -> tuple[list[tuple[str, bool]], int]:
    """The tokens that fit in ``limit`` cells, and how many characters of ``text`` were left out."""
    if limit < 12:
        raise ValueError("a literal field needs at least 12 cells (room for the cut marker)")
    if _plain(text, limit):
        return [(text, False)], 0
    pieces = list(tokens(text))
    widths = [cell_len(p) for p, _ in pieces]
    if sum(widths) <= limit:
        return pieces, 0
    kept: list[tuple[str, bool]] = []
    used = 0
    for i, (piece, w) in enumerate(zip(pieces, widths, strict=True)):
        rest = len(pieces) - i
        if used + w + cell_len(_marker(rest - 1)) > limit:
            return kept, rest
        kept.append(piece)
        used += w
    return kept, 0                                           # pragma: no cover - the sum check returns first


def literal(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` made safe to show as one plain line of at most ``limit`` cells (see the module doc)."""
    if not isinstance(text, str):
        raise TypeError(f"literal() shows text, not {type(text).__name__}; convert it deliberately first")
    kept, rest = _cut(text, limit)
    return "".join(p for p, _ in kept) + (_marker(rest) if rest else "")


def literal_text(text: str, limit: int = DEFAULT_LIMIT, *, style: str = "",
                 escape_style: str = "reverse", marker_style: str = "italic") -> Text:
    """The same characters as :func:`literal`, as a Rich ``Text`` with the escapes and the cut marked.

    Styling only highlights what :func:`literal` already made visible; ``.plain`` equals
    ``literal(text, limit)`` exactly (the tests hold it to that).
    """
    if not isinstance(text, str):
        raise TypeError(f"literal_text() shows text, not {type(text).__name__}; convert it deliberately first")
    kept, rest = _cut(text, limit)
    out = Text(style=style, no_wrap=False, end="")
    for piece, escaped in kept:
        out.append(piece, escape_style if escaped else None)
    if rest:
        out.append(_marker(rest), marker_style)
    return out


__all__ = ["DEFAULT_LIMIT", "literal", "literal_text", "shows_as_itself", "tokens"]
