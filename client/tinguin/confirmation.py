"""The confirmation text: rendered from a ConfirmationRequest, shown verbatim, and digested for signing.

Why a pure function: what-you-see-is-what-you-sign. The TINGUIN shows exactly the string
:func:`render` returns (as plain text, no markup), and the buyer's signature on the order covers
:func:`digest` of it. A verifier holding the same verified offer and request re-renders the text
and compares digests (:func:`client.commerce.judge.judge_deal` does, with this very function), so
the evidence proves what the user was shown. The text therefore depends on nothing but the request
and the Unicode data of :mod:`client.support.names` (no clock, no terminal width, no locale), and
its layout is versioned by its first line.

Two rules make the text trustworthy to read (issue 12):

* **Everything is shown whole.** Nothing is cut: a contract, an item description, a label or an
  id appears to its last character, wrapped onto as many lines as it needs. The TINGUIN lets the
  user confirm only once the end of the text has been on the screen (:class:`ConfirmScreen`), and
  a text longer than :data:`MAX_CHARS` is not shown or signed at all (:class:`TextTooLong`).
* **Words the TINGUIN did not write are marked as such.** The seller's (item descriptions, ids,
  form labels with their SKUs), a certificate's (names) and the order form's values stand between
  ``❝`` and ``❞``; a long one continues on lines starting with ``┆`` (wrapped) or ``┃`` (its own line
  break). Those glyphs are the TINGUIN's: :func:`client.tinguin.literal.tokens` shows them as
  escapes when any other text contains them, so nothing outside the marks is anyone else's words,
  however it is phrased (``Pay 1.00 EUR with: ...`` as a form label stays inside its marks).
  Each piece is still made harmless character by character by ``literal.tokens`` (no controls,
  no bidi, escapes visible).

:func:`styled` gives the same characters as a Rich ``Text`` whose spans colour the marks, the marked
text, the escapes and the characters a certified name should not have (``⚠`` lines list them).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text

from semper.client.support import names
from semper.client.support.money import format_amount

from .literal import literal, tokens
from .literal import shows_as_itself as _plain  # a row laid out a word at a time (_Page._plain_row)
from .model import ConfirmationRequest, ExchangeRequest, OfferError, Party, VerifiedOffer

FORMAT_LINE = "SEMPER TINGUIN confirmation v2"
OPEN, CLOSE = "\u275d", "\u275e"            # ❝ ❞ around words the TINGUIN did not write
WRAPPED, BROKEN = "\u2506", "\u2503"        # ┆ the marked text goes on; ┃ the marked text's own next line
WARN = "\u26a0"                             # ⚠ a certified name has characters it should not have
WIDTH = 70                                  # cells: every line holding marked text is shorter (fits 80 columns)
MAX_CHARS = 200_000                         # a longer confirmation is refused, not cut
LEGEND = (f"Between {OPEN} and {CLOSE}: words this computer did not write, shown whole.",
          "They come from the seller, a certificate or the order form.",
          f"{WRAPPED} continues such words on the next line; {BROKEN} is a line break in them.")
_WHOLE = 10**9                              # "no limit" for literal(): nothing in the confirmation is cut

STYLES = {"mark": "bold #fca311", "theirs": "#8ecae6", "escape": "reverse", "suspect": "bold reverse #ff5d5d",
          "warn": "bold #ff5d5d"}


class TextTooLong(OfferError):
    """The confirmation would be longer than the TINGUIN shows: it is refused, never cut."""


@dataclass(frozen=True)
class Theirs:
    """Words the TINGUIN did not write; ``suspects``: indexes of characters to highlight (names)."""

    text: str
    suspects: frozenset[int] = frozenset()


class _Page:
    """The confirmation being written: its characters and, for :func:`styled`, what each span is."""

    def __init__(self, *, spans: bool = True) -> None:
        self.parts: list[str] = []
        self.spans: list[tuple[int, int, str]] = []
        self.keep_spans = spans                 # False: the text alone (render, digest), no colours to keep
        self.size = 0
        self.col = 0

    def put(self, text: str, kind: str = "") -> None:
        if kind and text and self.keep_spans:
            self.spans.append((self.size, self.size + len(text), kind))
        self.parts.append(text)
        self.size += len(text)
        # printable ASCII is one cell a character (what cell_len says of it, without asking it)
        self.col += len(text) if text.isascii() and text.isprintable() else cell_len(text)

    def end_line(self) -> None:
        self.put("\n")
        self.col = 0

    def line(self, *parts: str | Theirs, indent: str = "", more: str | None = None, kind: str = "") -> None:
        """One line of the TINGUIN's, with marked pieces in it; ``more`` indents their continuations."""
        self.put(indent)
        cont = more if more is not None else indent + "  "
        for part in parts:
            if isinstance(part, Theirs):
                self._theirs(part, cont)
            else:
                self.put(part, kind)
        self.end_line()

    def _go_on(self, cont: str, mark: str) -> None:
        self.end_line()
        self.put(cont)
        self.put(mark + " ", "mark")

    def _theirs(self, t: Theirs, cont: str) -> None:
        start = cell_len(cont) + 2                       # where a continuation line's text begins
        self.put(OPEN, "mark")
        index = 0
        for n, row in enumerate(t.text.split("\n")):
            if n:
                self._go_on(cont, BROKEN)
                index += 1
            if not t.suspects and _plain(row):
                self._plain_row(row, start, cont)
                index += len(row)
                continue
            for word in _words(row, index):
                width = sum(cell_len(p) for p, _, _ in word)
                if self.col + width > WIDTH - 1 and self.col > start and start + width <= WIDTH - 1:
                    self._go_on(cont, WRAPPED)           # the word fits on the next line: break before it
                for piece, escaped, i in word:
                    if self.col + cell_len(piece) > WIDTH - 1 and self.col > start:
                        self._go_on(cont, WRAPPED)       # a word longer than a line is broken inside
                    self.put(piece, "escape" if escaped else "suspect" if i in t.suspects else "theirs")
            index += len(row)
        self.put(CLOSE, "mark")

    def _plain_row(self, row: str, start: int, cont: str) -> None:
        """:meth:`_theirs` for a row of printable ASCII without a backslash and nothing to highlight (most
        of what sellers write): every character shows as itself in one cell, so a word that fits goes on
        the line at once. The characters, the lines and the spans (one per character) are exactly those of
        the character-by-character path; only the work is less (the buyer's client renders the page at
        every purchase, and it was about 40 % of the client's CPU: docs/performance.md, "The buyer's
        confirmation page")."""
        for word in _PLAIN_WORD.findall(row):
            width = len(word)
            if self.col + width > WIDTH - 1 and self.col > start and start + width <= WIDTH - 1:
                self._go_on(cont, WRAPPED)
            if self.col + width <= WIDTH - 1:
                if self.keep_spans:
                    at = self.size
                    self.spans.extend((at + k, at + k + 1, "theirs") for k in range(width))
                self.parts.append(word)
                self.size += width
                self.col += width
                continue
            for ch in word:                              # longer than the rest of the line: as the slow path
                if self.col + 1 > WIDTH - 1 and self.col > start:
                    self._go_on(cont, WRAPPED)
                self.put(ch, "theirs")

    @property
    def text(self) -> str:
        return "".join(self.parts)


_PLAIN_WORD = re.compile(r"[^ ]* |[^ ]+")     # as _words groups a plain row: each word ends after a space


def _words(row: str, offset: int) -> Iterator[list[tuple[str, bool, int]]]:
    """``row``'s characters as shown (``literal.tokens``), grouped into words that end after a space."""
    word: list[tuple[str, bool, int]] = []
    for i, (piece, escaped) in enumerate(tokens(row)):
        word.append((piece, escaped, offset + i))
        if piece == " " and not escaped:
            yield word
            word = []
    if word:
        yield word


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _name(text: str) -> Theirs:
    """A certified name, with the characters the CA would refuse now marked (names certified earlier)."""
    return Theirs(text, frozenset(s.index for s in names.suspects(text)))


def _party(page: _Page, party: Party, indent: str = "  ") -> None:
    """A certified party in words: name, organisation, country, and how to recognise the certificate."""
    extra: list[str | Theirs] = []
    for n, value in enumerate(x for x in (party.organisation, party.country) if x):
        extra += [", " if n else " (", _name(value)]
    page.line(_name(party.name), *extra, *([")"] if extra else []), indent=indent)
    for value in (party.name, party.organisation or ""):
        for s in names.suspects(value):
            page.line(f"{WARN} {s.code}", indent=indent + "  ", kind="warn")
            page.line(f"({s.reason})", indent=indent + "    ", kind="warn")
    page.line(f"certificate {literal(party.serial, _WHOLE)}", indent=indent)
    page.line("issued by ", Theirs(party.issuer), indent=indent + "  ")
    page.line(f"SHA-256 {party.fingerprint[:32]}…", indent=indent + "  ")


def _offer(page: _Page, offer: VerifiedOffer) -> None:
    """The verified offer: who signed it, what was checked, every item and the recomputed total."""
    v = offer.verification
    page.line("Seller, as named by its certificate (checked on this computer):")
    _party(page, v.signer)
    page.line("Offer ", Theirs(offer.offer_id))
    page.line(f"signed {_when(v.signing_time)}", indent="  ")
    page.line(f"({literal(v.time_source, _WHOLE)})", indent="    ")
    page.line("signature and certificate chain to ", Theirs(v.root), indent="  ")
    page.line("verified; revocation " + ("checked" if v.revocation_checked else "NOT checked (no CRL)"), indent="    ")
    page.line("offer statement SHA-256", indent="  ")
    page.line(v.statement_digest, indent="    ")
    if offer.valid_until is not None:
        page.line(f"offer valid until {_when(offer.valid_until)}", indent="  ")
    page.line("Items:")
    for n, item in enumerate(offer.items, 1):
        page.line(f"{n}. ", Theirs(item.description), indent="  ", more="     ")
        page.line(f"{item.quantity} x {format_amount(item.unit_price, offer.currency)} = "
                  f"{format_amount(item.total, offer.currency)}", indent="     ")
    page.line(f"Total: {format_amount(offer.total, offer.currency)}")


def _exchange_page(request: ExchangeRequest, spans: bool = True) -> _Page:
    """A person-to-person transfer or exchange: who, what each side gives, what keeps it fair."""
    page = _Page(spans=spans)
    page.line(FORMAT_LINE)
    for legend in LEGEND:
        page.line(legend)
    page.line(f"You are asked to {request.action.value}.")
    page.line(f"Exchange: {literal(request.cell, _WHOLE)}")
    page.line("Deal ", Theirs(request.deal_id))
    page.line("With, as named by its certificate (checked on this computer):")
    if request.peer is not None:
        _party(page, request.peer)
    else:
        page.line("any party certified under your CA roots that asks for exactly this", indent="  ")
    page.line("at ", Theirs(request.peer_address), indent="  ")
    for title, lines in (("You give:", request.give), ("You expect:", request.expect)):
        page.line(title)
        for label, value in lines or (("nothing", "(a transfer)"),):
            page.line(Theirs(label), ": ", Theirs(value), indent="  ", more="      ")
    page.line("What keeps it fair:")
    page.line(Theirs(request.fairness), indent="  ")
    if request.third_party is not None:
        page.line("Third party, as named by its certificate:")
        _party(page, request.third_party)
    if request.signer is not None:
        page.line("Signed by you as:")
        _party(page, request.signer)
    else:
        page.line("Signed by you: no identity certificate is used")
    page.line("End of the text to sign.")
    if page.size > MAX_CHARS:
        raise TextTooLong(f"the text to confirm is {page.size} characters long, more than the {MAX_CHARS} the "
                          "TINGUIN shows whole; it is not signed")
    return page


def _page(request: ConfirmationRequest | ExchangeRequest, spans: bool = True) -> _Page:
    if isinstance(request, ExchangeRequest):
        return _exchange_page(request, spans)
    offer = request.offer
    page = _Page(spans=spans)
    page.line(FORMAT_LINE)
    for legend in LEGEND:
        page.line(legend)
    page.line(f"You are asked to {request.action.value}.")
    page.line("Deal ", Theirs(request.deal_id))
    _offer(page, offer)
    page.line(f"Pay {format_amount(offer.total, offer.currency)} with: {literal(request.payment.label, _WHOLE)} "
              f"({literal(request.payment.module, _WHOLE)})")
    if request.details:
        page.line("Order details (signed with the order):")
        for label, value in request.details:
            page.line(Theirs(label), ": ", Theirs(value), indent="  ", more="      ")
    if request.signer is not None:
        page.line("Signed by you as:")
        _party(page, request.signer)
    else:
        page.line("Signed by you: no identity certificate is used (anonymous deal)")
    if request.attributes:
        page.line("Deal attributes: " + ", ".join(literal(a, _WHOLE) for a in request.attributes))
    page.line("End of the text to sign.")
    if page.size > MAX_CHARS:
        raise TextTooLong(f"the text to confirm is {page.size} characters long, more than the {MAX_CHARS} the "
                          "TINGUIN shows whole; it is not signed (ask the seller for a shorter offer or contract)")
    return page


def render(request: ConfirmationRequest | ExchangeRequest) -> str:
    """The exact confirmation text; same request, same text, on every machine with the same Unicode data."""
    return _page(request, spans=False).text


def styled(request: ConfirmationRequest | ExchangeRequest) -> Text:
    """:func:`render`'s characters (``.plain`` is equal) with the marks, marked words and warnings coloured."""
    page = _page(request)
    out = Text(page.text, end="", overflow="fold")
    for start, end, kind in page.spans:
        out.stylize(STYLES[kind], start, end)
    return out


def digest(text: str) -> bytes:
    """What the order signature covers: SHA-256 of the shown text in UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).digest()


__all__ = ["BROKEN", "CLOSE", "FORMAT_LINE", "MAX_CHARS", "OPEN", "WRAPPED", "TextTooLong", "Theirs", "digest",
           "render", "styled"]
