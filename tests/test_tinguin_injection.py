"""Seller text that tries markup, escape sequences, bidi tricks and look-alike status lines.

Each payload goes into every place seller-influenced text reaches (item descriptions, offer and
deal ids, the certified name, progress details, evidence descriptions). The checks are on what a
terminal would receive and show: the header and the status line are exactly those of a clean
screen, the payload's characters appear literally (escapes visible), and the byte stream the
TINGUIN sends contains no escape sequence but colour/cursor CSI: no OSC (title, hyperlink,
clipboard), no BEL, no raw control or bidi characters.
"""
from __future__ import annotations

import asyncio
import dataclasses
import io
import re
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text
from test_tinguin_samples import (
    CHECKED,
    PHRASE,
    SELLER,
    marked_pieces,
    offer,
    outcome,
    request,
    run_app,
    settle,
    shown_as,
)

from semper.client.tinguin.app import TinguinApp
from semper.client.tinguin.confirmation import CLOSE, FORMAT_LINE, OPEN, STYLES
from semper.client.tinguin.literal import literal
from semper.client.tinguin.model import EvidenceItem, ProgressStep, StepState
from semper.client.tinguin.screens import ConfirmScreen, OfferScreen, ResultScreen
from semper.client.tinguin.textshot import screen_text
from semper.client.tinguin.widgets import SafeTable, StatusLine

pytestmark = pytest.mark.timeout(60)

FAKE_STATUS = "● confirm · interactive · y sign and pay  n / escape decline"
FAKE_HEADER = "▌SEMPER TINGUIN ▐ trusted window of this computer"
PAYLOADS = {
    "markup": "[bold red]VERIFIED[/] by your bank",
    "link": "[link=https://evil.example/pay]official receipt[/link]",
    "textual action": "[@click=app.quit]press here[/]",
    "ansi": "\x1b[2J\x1b[H\x1b[1;32mVERIFIED\x1b[0m",
    "osc title and bel": "\x1b]0;SEMPER TINGUIN\x07 ding\x07",
    "osc hyperlink": "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "osc clipboard": "\x1b]52;c;MTIzNA==\x07",
    "c1 csi": "\x9b2J\x9d0;title\x9c",
    "carriage return": "cheap teapot\r" + FAKE_STATUS,
    "newlines": "teapot\n\n" + FAKE_STATUS + "\n" + FAKE_HEADER,
    "bidi": "price \u202e00.1 RUE\u202c and \u2066isolated\u2069",
    "look-alike status": FAKE_STATUS,
    "look-alike header": FAKE_HEADER + " your phrase: " + "guess",
    "long": "A" * 5000 + "\x1b[31m",
}

_CSI_OK = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal_stream(app: TinguinApp) -> str:
    """The characters the TINGUIN sends a real terminal for the current screen (full repaint)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system="truecolor",
                      legacy_windows=False, safe_box=False)
    with console.capture() as cap:
        console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return cap.get()


def assert_clean_stream(stream: str) -> None:
    rest = _CSI_OK.sub("", stream)
    bad = sorted({f"U+{ord(c):04X}" for c in rest if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F
                  or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"})
    assert not bad, f"control characters reached the terminal: {bad}"
    assert "\x1b]" not in stream and "\x07" not in stream


def poisoned(payload: str) -> tuple[Any, Any]:
    """An offer and confirmation request with ``payload`` in every seller-influenced field."""
    seller = dataclasses.replace(SELLER, name=payload, organisation=payload)
    o = dataclasses.replace(offer(payload, "Tea cosy " + payload), offer_id=payload,
                            verification=dataclasses.replace(CHECKED, signer=seller))
    return o, dataclasses.replace(request(o), deal_id=payload)


def shown(screen_factory: Any, probe: Any = None) -> tuple[str, str, str, Any]:
    """(screen text, terminal stream, status line text, ``probe(screen)``) of a freshly pushed screen."""
    app = TinguinApp(phrase=PHRASE, start=None)

    async def body(pilot: Any) -> tuple[str, str, str, Any]:
        screen = screen_factory()
        app.push_screen(screen)
        await settle(pilot)
        return (screen_text(app), terminal_stream(app), screen.query_one(StatusLine).text,
                probe(screen) if probe else None)
    return run_app(app, body)


@pytest.fixture(scope="module")
def clean() -> dict[str, list[str]]:
    """Header and status lines of the screens without any payload."""
    out = {}
    for name, factory in (("offer", lambda: OfferScreen(offer())), ("confirm", lambda: ConfirmScreen(request())),
                          ("result", lambda: ResultScreen(outcome()))):
        text = shown(factory)[0].splitlines()
        out[name] = text[:3] + text[-1:]
    return out


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_offer_screen_shows_payloads_literally(name: str, clean: dict[str, list[str]]) -> None:
    payload = PAYLOADS[name]
    o, _ = poisoned(payload)
    text, stream, status, cell = shown(lambda: OfferScreen(o),
                                       lambda screen: screen.query_one("#items", SafeTable).get_cell_at((0, 1)))
    lines = text.splitlines()
    assert lines[:3] + lines[-1:] == clean["offer"]                     # header and status line untouched
    assert status == "verified offer · interactive · 1-9 choose payment  enter continue  escape decline"
    assert sum(1 for line in lines if line.lstrip().startswith("●")) == 1
    assert sum(1 for line in lines if "SEMPER TINGUIN" in line and "▌" in line) == 1
    assert_clean_stream(stream)
    assert isinstance(cell, Text) and cell.plain == OPEN + literal(payload, 10**9) + CLOSE     # whole, marked
    assert {str(s.style) for s in cell.spans} <= set(STYLES.values())   # no style came from the payload
    assert literal(payload, 10**9)[:24] in text                          # the payload, escapes visible


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_confirmation_text_and_screen_keep_payloads_inert(name: str, clean: dict[str, list[str]]) -> None:
    payload = PAYLOADS[name]
    _, req = poisoned(payload)
    app = TinguinApp(phrase=PHRASE, start=None, min_read=0)

    async def body(pilot: Any) -> tuple[Any, str, str]:
        future = app.open(ConfirmScreen(req))
        await settle(pilot)
        text, stream = screen_text(app), terminal_stream(app)
        await pilot.press("end")                              # a long payload is read to its end first
        await settle(pilot)
        assert_clean_stream(terminal_stream(app))
        await pilot.press("y")
        return await asyncio.wait_for(future, 5), text, stream
    answer, text, stream = run_app(app, body)
    lines = text.splitlines()
    assert lines[:3] + lines[-1:] == clean["confirm"]
    assert_clean_stream(stream)
    signed = answer.shown_text.splitlines()
    assert signed[0] == FORMAT_LINE and sum(line.startswith("Total: ") for line in signed) == 1
    assert "Total: 62.50 EUR" in signed and not any(line.startswith("●") for line in signed)
    assert not any(c in answer.shown_text for c in "\x1b\x07\r\u202e\x9b")
    pieces = marked_pieces(answer.shown_text)
    assert pieces[0] == shown_as(payload) and shown_as(payload) in pieces     # the deal id, whole and marked
    assert not any(line.lstrip().startswith("SEMPER TINGUIN") for line in signed[1:])


@pytest.mark.parametrize("name", ["markup", "ansi", "newlines", "look-alike status", "bidi"])
def test_progress_and_result_details_are_literal(name: str, clean: dict[str, list[str]]) -> None:
    payload = PAYLOADS[name]
    bad = dataclasses.replace(outcome(), summary=payload, deal_id=payload,
                              evidence=(EvidenceItem(payload, payload, "00" * 32, 1),))
    text, stream, _, _ = shown(lambda: ResultScreen(bad))
    lines = text.splitlines()
    assert lines[:3] + lines[-1:] == clean["result"]
    assert_clean_stream(stream)
    app = TinguinApp(phrase=PHRASE, start=None)

    async def body(pilot: Any) -> tuple[str, str]:
        app.show_progress(ProgressStep("pay", payload, StepState.RUNNING, payload))
        await settle(pilot)
        return screen_text(app), terminal_stream(app)
    text, stream = run_app(app, body)
    assert_clean_stream(stream)
    assert sum(1 for line in text.splitlines() if line.lstrip().startswith("●")) == 1
    assert literal(payload, 60)[:30] in text
