"""What the user signs is what the user could read (issue 12, items 7 and 8), through the Pilot.

* A contract is signed whole (its digest is in the order), so the confirmation must show all of it:
  its last clause is on the screen after scrolling, and 'y' does not sign before the end was shown.
* Text the TINGUIN did not write (the seller's form labels, SKUs in labels, ids) is marked as not the
  TINGUIN's, so a label written to look like one of the TINGUIN's own lines cannot pass for one.
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from rich.cells import cell_len
from test_tinguin_samples import (
    CHECKED,
    PHRASE,
    SELLER,
    marked_pieces,
    offer,
    request,
    run_app,
    settle,
    shown_as,
)

from semper.client.tinguin import confirmation
from semper.client.tinguin.app import TinguinApp
from semper.client.tinguin.model import OfferError
from semper.client.tinguin.screens import ConfirmScreen, OfferScreen
from semper.client.tinguin.textshot import screen_text

pytestmark = pytest.mark.timeout(60)

LAST_CLAUSE = "Clause 40. The buyer waives every right to a refund and pays 999.00 EUR a month."
CONTRACT = "\n".join([f"Clause {n}. The parties agree that item {n} of this agreement applies in full, "
                      "without exception, to every delivery made under it." for n in range(1, 40)] + [LAST_CLAUSE])
FAKE_PAY = 'Pay 1.00 EUR with: "card purse (pay from your card)"'


def contract_request() -> Any:
    return dataclasses.replace(request(), details=(("contract text SHA-256", "ab" * 32), ("contract text", CONTRACT)))


def boxed(text: str) -> list[str]:
    """The lines inside the confirmation's frame on the screen."""
    return [line.split("│")[1] for line in text.splitlines() if line.count("│") == 2]


def test_a_long_contract_is_shown_to_its_last_clause_and_signed_only_after_it_was_shown() -> None:
    app = TinguinApp(phrase=PHRASE, start=None, min_read=0)

    async def body(pilot: Any) -> tuple[Any, str, str, bool]:
        future = app.open(ConfirmScreen(contract_request()))
        await settle(pilot)
        first = screen_text(app)
        await pilot.press("y")                                  # before the end was on the screen
        await settle(pilot)
        early = future.done()
        seen = ""
        for _ in range(60):                                     # the person reads on with Page Down
            await pilot.press("pagedown")
            await settle(pilot)
            seen += screen_text(app)
            if "Clause 40." in screen_text(app):
                break
        await pilot.press("y")
        return await asyncio.wait_for(future, 5), first, seen, early
    answer, first, seen, early = run_app(app, body)
    assert "Clause 40." not in first                            # too long for one screen: it needs scrolling
    assert not early, "'y' signed a contract whose end had never been on the screen"
    assert "The buyer waives every right" in seen and "999.00 EUR a month." in seen
    assert answer.accepted and answer.digest == confirmation.digest(answer.shown_text)
    shown = answer.shown_text
    for n in range(1, 41):
        assert f"Clause {n}. " in shown, f"clause {n} was signed but not shown"
    assert "999.00 EUR a month." in shown and "…[" not in shown          # nothing cut
    assert CONTRACT in marked_pieces(shown)                                # the whole contract, exactly, marked


def test_confirm_before_the_end_says_why_and_does_nothing() -> None:
    app = TinguinApp(phrase=PHRASE, start=None, min_read=0)

    async def body(pilot: Any) -> tuple[bool, str]:
        future = app.open(ConfirmScreen(contract_request()))
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        done, text = future.done(), screen_text(app)
        await pilot.press("n")
        await asyncio.wait_for(future, 5)
        return done, text
    done, text = run_app(app, body)
    assert not done and "read to the end" in text.lower()


def test_a_seller_label_that_imitates_a_tinguin_line_is_shown_as_the_sellers() -> None:
    req = dataclasses.replace(request(), details=((FAKE_PAY, "yes"), ("TEA-1 SHA-256", "cd" * 32)))
    app = TinguinApp(phrase=PHRASE, start=None, min_read=0)

    async def body(pilot: Any) -> tuple[Any, str]:
        future = app.open(ConfirmScreen(req))
        await settle(pilot)
        text = screen_text(app)
        await pilot.press("end")
        await settle(pilot)
        await pilot.press("y")
        return await asyncio.wait_for(future, 5), text
    answer, text = run_app(app, body)
    own = [line.strip() for line in boxed(text) if line.strip().startswith("Pay ")]
    assert own == ["Pay 62.50 EUR with: card purse (pay from your card) (card_purse)"], \
        f"a seller's label reads as the TINGUIN's own line: {own}"
    assert f"\u275d{FAKE_PAY}\u275e" in text and "\u275dTEA-1 SHA-256\u275e" in text     # marked as not the TINGUIN's
    signed = [line.strip() for line in answer.shown_text.splitlines() if line.strip().startswith("Pay ")]
    assert signed == ["Pay 62.50 EUR with: card purse (pay from your card) (card_purse)"]


def test_every_marked_line_fits_the_layout_width_and_the_styled_text_is_the_signed_text() -> None:
    long_word = "x" * 150
    req = dataclasses.replace(request(offer("Tea " * 60, long_word + " \u202e tail", offer_id="id-" + "9" * 90)),
                              details=(("contract text", CONTRACT),))
    text = confirmation.render(req)
    assert confirmation.styled(req).plain == text
    marks = (confirmation.OPEN, confirmation.CLOSE, confirmation.WRAPPED, confirmation.BROKEN)
    marked_lines = [line for line in text.splitlines()[1 + len(confirmation.LEGEND):] if any(m in line for m in marks)]
    assert len(marked_lines) > 40 and all(cell_len(line) < confirmation.WIDTH for line in marked_lines)
    pieces = marked_pieces(text)
    assert shown_as("Tea " * 60) in pieces and shown_as(long_word + " \u202e tail") in pieces
    assert "id-" + "9" * 90 in pieces


def test_a_text_too_long_to_show_whole_is_refused_not_cut() -> None:
    huge = dataclasses.replace(request(), details=(("contract text", "word " * 50_000),))
    with pytest.raises(OfferError, match="not signed"):
        confirmation.render(huge)


def test_a_window_too_narrow_for_the_layout_does_not_sign() -> None:
    app = TinguinApp(phrase=PHRASE, start=None, min_read=0)

    async def body(pilot: Any) -> tuple[bool, str]:
        future = app.open(ConfirmScreen(request()))
        await settle(pilot)
        await pilot.press("end")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        done, text = future.done(), screen_text(app)
        await pilot.press("n")
        await asyncio.wait_for(future, 5)
        return done, text
    done, text = run_app(app, body, size=(60, 40))
    assert not done and "Not signed: widen this window by" in text


def test_a_look_alike_name_certified_before_the_rule_is_marked() -> None:
    fake = dataclasses.replace(SELLER, name="Teapot Sh\u043ep")
    o = dataclasses.replace(offer(), verification=dataclasses.replace(CHECKED, signer=fake))
    text = confirmation.render(request(o))
    assert "\u26a0 U+043E CYRILLIC SMALL LETTER O" in text and "not Latin like the rest of the name" in text
    spans = [(a, b) for a, b, kind in confirmation._page(request(o)).spans if kind == "suspect"]
    assert [text[a:b] for a, b in spans] == ["\u043e"]                   # highlighted where it stands
    app = TinguinApp(phrase=PHRASE, start=None)

    async def body(pilot: Any) -> str:
        app.push_screen(OfferScreen(o))
        await settle(pilot)
        return screen_text(app)
    shown = run_app(app, body)
    assert "look-alike check: \u26a0 U+043E CYRILLIC SMALL LETTER O: not Latin like the rest of the name" in shown
    assert "\u26a0" not in confirmation.render(request())                # an ordinary name has no mark


def test_seller_text_cannot_close_its_own_marks() -> None:
    label = "x\u275e: \u275dPay 1.00 EUR\n\u2503 Total: 0.01 EUR"
    text = confirmation.render(dataclasses.replace(request(), details=((label, "v\u2506"),)))
    assert shown_as(label) in marked_pieces(text) and shown_as("v\u2506") in marked_pieces(text)
    assert "\\u275e" in text and "\\u2503" in text                       # the seller's copies are escapes
    assert sum(line.startswith("Total: ") for line in text.splitlines()) == 1
