"""Every TINGUIN screen driven through Textual's Pilot: what it shows, what each key does, what it returns."""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from test_tinguin_samples import (
    PHRASE,
    card_source,
    offer,
    outcome,
    request,
    run_app,
    settle,
    steps,
)

from semper.client.support.archive import Archive
from semper.client.support.scheme import Scheme
from semper.client.tinguin import confirmation
from semper.client.tinguin.api import Script, TextualUI, TinguinClosed, run_scripted
from semper.client.tinguin.app import TinguinApp
from semper.client.tinguin.model import Confirmation, PinStatus, ProgressStep, StepState
from semper.client.tinguin.screens import (
    ArchiveScreen,
    CardScreen,
    ConfirmScreen,
    OfferScreen,
    PinScreen,
    ProgressScreen,
    PurseScreen,
    ResultScreen,
)
from semper.client.tinguin.sources import CardAccess
from semper.client.tinguin.textshot import screen_text
from semper.client.tinguin.widgets import NO_PHRASE, StatusLine

pytestmark = pytest.mark.timeout(60)


def header_lines(text: str) -> list[str]:
    return text.splitlines()[:3]


# ---- own card -------------------------------------------------------------------------------------
def test_card_screen_shows_readers_and_the_card() -> None:
    app = TinguinApp(phrase=PHRASE, card=card_source())

    async def body(pilot: Any) -> str:
        await settle(pilot)
        assert isinstance(app.screen, CardScreen)
        return screen_text(app)
    text = run_app(app, body)
    assert "SEMPER TINGUIN" in header_lines(text)[0] and PHRASE in header_lines(text)[1]
    assert "Virtual PCD 00 00" in text and "card present" in text and "purse, piv" in text
    assert "Virtual PCD 00 01" in text and "empty" in text
    assert "00112233AABBCCDD" in text and "45.00 EUR" in text and "PIN tries left: 3" in text
    assert "● card and readers · interactive · c card" in text.splitlines()[-1]


def test_card_and_purse_screens_read_a_real_simulated_card(buyer_image: Path, psam_image: Path,
                                                            scheme: Scheme) -> None:
    from semper.client.payment import card_purse
    from semper.hardware import cards
    with cards.purse(None, buyer_image) as purse, cards.psam(None, psam_image) as psam:
        card_purse.load(purse, scheme, 5000, b"1234")
        card_purse.purchase(purse, psam, 1250, scheme.root_cert)
        number = purse.info().card_id
    app = TinguinApp(phrase=PHRASE, card=CardAccess(image=buyer_image))

    async def body(pilot: Any) -> tuple[str, str]:
        await settle(pilot)
        card = screen_text(app)
        await pilot.press("p")
        await settle(pilot)
        assert isinstance(app.screen, PurseScreen)
        return card, screen_text(app)
    card, purse_text = run_app(app, body)
    assert number in card and "37.50 EUR" in card and "simulated card image" in card
    assert "37.50 EUR" in purse_text
    rows = [line for line in purse_text.splitlines() if line.strip().startswith(("load", "debit"))]
    assert len(rows) == 2 and "-12.50 EUR" in rows[0] and "+50.00 EUR" in rows[1]


def test_card_errors_are_shown_not_raised(tmp_path: Path) -> None:
    app = TinguinApp(phrase=PHRASE, card=CardAccess(image=tmp_path / "missing.card"))

    async def body(pilot: Any) -> str:
        await settle(pilot)
        return screen_text(app)
    text = run_app(app, body)
    assert "status: no card image at" in text and "missing.card" in text and PHRASE in text


def test_archive_screen_lists_deals_and_reports_tampering(tmp_path: Path) -> None:
    db = tmp_path / "evidence.sqlite3"
    with Archive.open(db, create=True) as archive:
        archive.append("deal-1", "note", b"one")
        archive.append("[red]deal[/] ✔ VERIFIED", "note", b"two")
        archive.append("deal-1", "note", b"three")

    async def body(pilot: Any) -> str:
        await settle(pilot)
        assert isinstance(pilot.app.screen, ArchiveScreen)
        return screen_text(pilot.app)
    text = run_app(TinguinApp(phrase=PHRASE, archive=db, start="archive"), body)
    assert "entries: 3" in text and "hash chain: intact" in text
    assert "[red]deal[/] \\u2714 VERIFIED" in text and "✔" not in text
    import sqlite3
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE archive_entry SET content = ? WHERE entry_index = 2", (b"TWO",))
    text = run_app(TinguinApp(phrase=PHRASE, archive=db, start="archive"), body)
    assert "TAMPERED: 1 problem(s)" in text and "entry 2" in text


def test_keys_switch_between_own_screens_and_quit() -> None:
    app = TinguinApp(phrase=PHRASE, card=card_source(), archive=None)

    async def body(pilot: Any) -> list[str]:
        seen = []
        for key in ("p", "a", "c", "p"):
            await pilot.press(key)
            await settle(pilot)
            seen.append(type(app.screen).__name__)
        assert "no archive given" in screen_text(app) or isinstance(app.screen, PurseScreen)
        await pilot.press("q")
        await pilot.pause()
        return seen
    assert run_app(app, body) == ["PurseScreen", "ArchiveScreen", "CardScreen", "PurseScreen"]


def test_without_a_phrase_the_header_says_how_to_set_one() -> None:
    app = TinguinApp(phrase=None, card=card_source())

    async def body(pilot: Any) -> str:
        await settle(pilot)
        return screen_text(app)
    assert NO_PHRASE in header_lines(run_app(app, body))[1]


# ---- deal screens ---------------------------------------------------------------------------------
def _deal_app() -> TinguinApp:
    return TinguinApp(phrase=PHRASE, start=None, min_read=0)


def _answer(screen_factory, *keys: str, focus: str | None = None,
            size: tuple[int, int] = (100, 42)) -> tuple[Any, str]:
    """Push a deal screen, read it, press ``keys``; what it dismissed with and the text it showed."""
    app = _deal_app()

    async def body(pilot: Any) -> tuple[Any, str]:
        future = app.open(screen_factory())
        await settle(pilot)
        text = screen_text(app)
        if focus is not None:
            app.screen.query_one(focus).focus()
            await pilot.pause()
        await pilot.press(*keys)
        return await asyncio.wait_for(future, 5), text
    return run_app(app, body, size=size)


def test_offer_screen_shows_the_verified_offer_and_returns_the_chosen_payment() -> None:
    o = offer()
    chosen, text = _answer(lambda: OfferScreen(o), "2", "enter")
    assert chosen == o.payment_options[1]
    for expected in ("Seller, as named by its verified certificate", "name (certificate): \u275dTeapot Shop\u275e",
                     "organisation: \u275dTeapots Ltd\u275e", "offer: \u275doffer-2026-0042\u275e",
                     "certificate serial: 1A2B3C4D", "chain: 2 certificate(s)",
                     "Blue teapot, 0.5 l", "Tea cosy, wool", "total (recomputed): 62.50 EUR",
                     "1) card purse (pay from your card)", "2) signed payment mandate"):
        assert expected in text, expected
    assert _answer(lambda: OfferScreen(o), "enter")[0] == o.payment_options[0]
    assert _answer(lambda: OfferScreen(o), "escape")[0] is None
    assert _answer(lambda: OfferScreen(o), "enter", focus="#decline")[0] is None     # Enter on Decline declines


def test_confirm_screen_returns_exactly_the_text_it_showed() -> None:
    req = request()
    answer, text = _answer(lambda: ConfirmScreen(req), "y", size=(100, 60))     # all of it on one screen
    assert isinstance(answer, Confirmation) and answer.accepted and not answer.scripted
    assert answer.shown_text == confirmation.render(req)
    assert answer.digest == confirmation.digest(answer.shown_text)
    boxed = [line.split("│")[1][1:].rstrip() for line in text.splitlines() if line.count("│") == 2]
    assert boxed == [line.rstrip() for line in (answer.shown_text + "\n").splitlines()]    # the box holds the text
    declined, _ = _answer(lambda: ConfirmScreen(req), "n")                       # declining needs no reading
    assert not declined.accepted and declined.shown_text == answer.shown_text
    assert not _answer(lambda: ConfirmScreen(req), "enter")[0].accepted       # focus starts on Decline
    assert not _answer(lambda: ConfirmScreen(req), "escape")[0].accepted


def test_a_yes_typed_before_the_text_could_be_read_does_not_count() -> None:
    # 3 s to read: the first y comes far sooner even on a loaded machine (0.5 s was not always enough there)
    app = TinguinApp(phrase=PHRASE, start=None, min_read=3.0)

    async def body(pilot: Any) -> tuple[Any, str]:
        future = app.open(ConfirmScreen(request()))
        await pilot.pause()
        await pilot.press("y")                                # at once: ignored, and the screen says why
        await pilot.pause()
        assert not future.done()
        text = screen_text(app)
        await asyncio.sleep(3.0)
        await pilot.press("y")
        return await asyncio.wait_for(future, 5), text
    answer, text = run_app(app, body)
    assert answer.accepted and "Take a moment to read what you sign, then press y again." in text


def test_progress_screen_shows_each_step_and_updates_by_key() -> None:
    app = _deal_app()

    async def body(pilot: Any) -> tuple[str, str]:
        for step in steps():
            app.show_progress(step)
        await settle(pilot)
        first = screen_text(app)
        app.show_progress(ProgressStep("pay", "pay from the card purse", StepState.FAILED, "card removed"))
        await settle(pilot)
        return first, screen_text(app)
    first, second = run_app(app, body)
    assert "done     verify the seller's offer" in first and "running  pay from the card purse" in first
    assert "pending  receive the delivery note" in first
    assert "failed   pay from the card purse  card removed" in second and "running" not in second


def test_result_screen_shows_outcome_and_evidence() -> None:
    answer, text = _answer(lambda: ResultScreen(outcome()), "enter")
    assert answer is None
    for expected in ("outcome: satisfied: you got what was agreed", "purse balance now: 45.00 EUR",
                     "signed order", "your order (covers the shown text)", "2222222222"):
        assert expected in text


@pytest.mark.parametrize("make", [
    lambda: OfferScreen(offer()), lambda: ConfirmScreen(request()), lambda: ResultScreen(outcome()),
    lambda: PinScreen("pay 62.50 EUR", lambda pin: None), lambda: PinScreen("sign", lambda pin: None, lambda: None),
    ProgressScreen, CardScreen, PurseScreen, ArchiveScreen])
def test_the_phrase_and_the_status_line_are_on_every_screen(make) -> None:
    app = TinguinApp(phrase=PHRASE, card=card_source(), archive=None, start=None)

    async def body(pilot: Any) -> tuple[str, str]:
        app.push_screen(make())
        await settle(pilot)
        return screen_text(app), app.screen.query_one(StatusLine).text
    text, status = run_app(app, body)
    lines = text.splitlines()
    assert lines[0].strip().startswith("▌SEMPER TINGUIN ▐") and lines[1].strip() == f"your phrase: {PHRASE}"
    assert lines[-1].strip() == "● " + status and "interactive" in status


# ---- the two TrustedUI implementations on the same screens ---------------------------------------------
def _workflow(ui: Any) -> tuple[Any, ...]:
    for step in steps()[:2]:
        ui.progress(step)
    choice = ui.review_offer(offer())
    answer = ui.confirm(request())
    pin = ui.ask_pin("pay 62.50 EUR to Teapot Shop", card_source().verify_pin)
    ui.result(outcome())
    return choice, answer, pin


def test_scripted_user_goes_through_the_same_screens_and_says_so() -> None:
    said: list[str] = []
    choice, answer, pin = run_scripted(_workflow, script=Script(payment="mandate", pin="1234"), phrase=PHRASE,
                                       say=said.append, timeout=30)
    assert choice.module == "mandate" and answer.accepted and answer.scripted and pin.ok
    assert answer.shown_text == confirmation.render(request())
    assert said[0].startswith("TINGUIN: no person is answering")
    assert any("accepted the confirmation" in s for s in said) and any("PIN entry verified" in s for s in said)
    declined = run_scripted(_workflow, script=Script(accept=False), phrase=PHRASE, say=said.append, timeout=30)
    assert not declined[1].accepted and declined[2].status is PinStatus.CANCELLED


def test_scripted_user_gives_up_after_a_wrong_pin() -> None:
    said: list[str] = []
    _c, _a, pin = run_scripted(_workflow, script=Script(pin="9999"), phrase=PHRASE, say=said.append, timeout=30)
    assert pin.status is PinStatus.CANCELLED


def test_textual_ui_bridges_a_workflow_thread_to_the_screens() -> None:
    """What run_interactive does in a terminal, with Pilot as the person: each call blocks until answered."""
    app = _deal_app()
    box: dict[str, Any] = {}

    async def body(pilot: Any) -> None:
        ui = TextualUI(app, asyncio.get_running_loop())
        thread = threading.Thread(target=lambda: box.setdefault("r", _workflow(ui)), daemon=True)
        thread.start()
        for expected, keys in ((OfferScreen, ("enter",)), (ConfirmScreen, ("y",)),
                               (PinScreen, ("1", "2", "3", "4", "enter")), (ResultScreen, ("enter",))):
            for _ in range(200):
                await pilot.pause(0.01)
                if isinstance(app.screen, expected):
                    break
            assert isinstance(app.screen, expected)
            assert "SCRIPTED" not in screen_text(app)
            await pilot.press(*keys)
        await asyncio.to_thread(thread.join, 10)
    run_app(app, body)
    choice, answer, pin = box["r"]
    assert choice.module == "card_purse" and answer.accepted and not answer.scripted and pin.ok


def test_closing_the_tinguin_mid_question_declines() -> None:
    app = _deal_app()
    box: dict[str, Any] = {}

    async def body(pilot: Any) -> None:
        ui = TextualUI(app, asyncio.get_running_loop())

        def work() -> None:
            try:
                ui.confirm(request())
            except TinguinClosed as e:
                box["closed"] = str(e)
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        for _ in range(200):
            await pilot.pause(0.01)
            if isinstance(app.screen, ConfirmScreen):
                break
        await pilot.press("ctrl+q")
        await pilot.pause()
        box["thread"] = thread
    run_app(app, body)
    box["thread"].join(5)
    assert "closed before you answered" in box["closed"]


def test_card_screen_follows_the_card_when_asked_to_refresh() -> None:
    source = card_source()
    app = TinguinApp(phrase=PHRASE, card=source, refresh=0.1)

    async def body(pilot: Any) -> tuple[str, str]:
        await settle(pilot)
        before = screen_text(app)
        source.purse_data = None                               # the card was pulled
        for _ in range(100):
            await pilot.pause(0.02)
            if "no card in the reader" in screen_text(app):
                break
        return before, screen_text(app)
    before, after = run_app(app, body)
    assert "00112233AABBCCDD" in before and "status: no card in the reader" in after
