"""PIN entry: masked, handed to the card session's callback and kept nowhere; the PIN-pad path types nothing."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_tinguin_samples import PHRASE, card_source, run_app, settle

from semper.client.tinguin.app import TinguinApp
from semper.client.tinguin.model import PinOutcome, PinStatus
from semper.client.tinguin.screens import PAD_TEXT, PinScreen
from semper.client.tinguin.sources import CardAccess
from semper.client.tinguin.textshot import screen_text
from semper.client.tinguin.widgets import PinField
from semper.hardware import errors as hw
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card

pytestmark = pytest.mark.timeout(60)
SECRET = "918273"


def holders(objects: list[Any], secret: str) -> list[str]:
    """Attributes of ``objects`` (and of containers one level down) that hold the secret, as str or bytes."""
    raw = secret.encode()
    found = []

    def holds(value: Any) -> bool:
        if isinstance(value, str):
            return secret in value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return raw in bytes(value)
        return False
    for obj in objects:
        for name, value in (vars(obj) if hasattr(obj, "__dict__") else {}).items():
            values = list(value.values()) if isinstance(value, dict) else (
                list(value) if isinstance(value, (list, tuple, set)) else [value])
            if any(holds(v) for v in values):
                found.append(f"{type(obj).__name__}.{name}")
    return found


class Recorder:
    """A card stand-in: remembers what it was handed, answers like a card."""

    def __init__(self, *answers: Exception | None) -> None:
        self.received: list[bytes] = []
        self.answers = list(answers)

    def __call__(self, pin: bytes) -> None:
        self.received.append(bytes(pin))
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


def pin_session(deliver: Any, *keys: str, pad: Any = None, between: Any = None) -> tuple[PinOutcome, str, list[str]]:
    """Open a PinScreen, press ``keys``; (outcome, screen text before the last key, attributes still holding SECRET)."""
    app = TinguinApp(phrase=PHRASE, start=None)

    async def body(pilot: Any) -> tuple[PinOutcome, str, list[str]]:
        screen = PinScreen("pay 62.50 EUR to Teapot Shop", deliver, pad)
        future = app.open(screen)
        await settle(pilot)
        widgets = list(screen.walk_children(with_self=False))    # kept: the screen is gone when it dismisses
        await pilot.press(*keys[:-1])
        text = screen_text(app)
        if between is not None:
            await between(pilot, screen)
        if keys:
            await pilot.press(keys[-1])
        outcome = await asyncio.wait_for(future, 10)
        nodes = [app, screen, *widgets, *app.screen.walk_children(with_self=True)]
        return outcome, text, holders(nodes, SECRET)
    return run_app(app, body)


def test_the_pin_goes_to_the_callback_and_nowhere_else() -> None:
    card = Recorder()
    outcome, typed, leaks = pin_session(card, *SECRET, "enter")
    assert outcome == PinOutcome(PinStatus.VERIFIED) and card.received == [SECRET.encode()]
    assert "••••••" in typed and SECRET not in typed              # masked on screen
    assert leaks == []


def test_wrong_pin_clears_the_field_and_asks_again() -> None:
    card = Recorder(hw.WrongPinError(2), None)
    state: dict[str, Any] = {}

    async def after_wrong(pilot: Any, screen: PinScreen) -> None:
        await pilot.press("enter")                            # submit SECRET: the card says wrong
        for _ in range(100):
            await pilot.pause(0.01)
            if not screen.busy:
                break
        field = screen.query_one(PinField)
        state["value"], state["text"] = field.value, screen_text(pilot.app)
        state["leaks"] = holders([pilot.app, *screen.walk_children(with_self=True)], SECRET)
        await pilot.press("1", "2", "3", "4")
    outcome, _text, _ = pin_session(card, *SECRET, "enter", between=after_wrong)
    assert state["value"] == "" and state["leaks"] == []
    assert "wrong PIN: 2 tries left; try again or press escape" in state["text"]
    assert outcome.ok and card.received == [SECRET.encode(), b"1234"]


@pytest.mark.parametrize("answer, status", [(hw.WrongPinError(0), PinStatus.BLOCKED),
                                            (hw.PinBlockedError(), PinStatus.BLOCKED),
                                            (hw.CardRemovedError("the card was removed"), PinStatus.FAILED)])
def test_card_refusals_end_the_request(answer: Exception, status: PinStatus) -> None:
    outcome, _, _ = pin_session(Recorder(answer), *SECRET, "enter")
    assert outcome.status is status and outcome.message == str(answer)


def test_short_pins_and_letters_never_reach_the_card() -> None:
    card = Recorder()
    state: dict[str, str] = {}

    async def short(pilot: Any, screen: PinScreen) -> None:
        await pilot.press("enter")                            # "12" only (letters were refused)
        await pilot.pause()
        state["text"] = screen_text(pilot.app)
        await pilot.press("escape")
    outcome, typed, _ = pin_session(card, "1", "a", "2", "b", "x", between=short)
    assert outcome.status is PinStatus.CANCELLED and card.received == []
    assert "at least 4 digits; nothing was sent to the card" in state["text"]
    assert "••" in typed and "•••" not in typed


def test_escape_cancels_and_sends_nothing() -> None:
    card = Recorder()
    outcome, _, leaks = pin_session(card, *SECRET, "escape")
    assert outcome.status is PinStatus.CANCELLED and card.received == [] and leaks == []


def test_the_pin_cannot_be_copied_out_of_the_field() -> None:
    card = Recorder()

    async def copy(pilot: Any, screen: PinScreen) -> None:
        await pilot.press("shift+home", "ctrl+c", "ctrl+x")
        assert pilot.app.clipboard == ""
        assert screen.query_one(PinField).value == SECRET
    outcome, _, _ = pin_session(card, *SECRET, "enter", between=copy)
    assert outcome.ok


def test_pin_pad_reader_takes_the_pin_itself() -> None:
    import threading
    card = Recorder()
    pressed: list[str] = []
    release = threading.Event()
    seen: dict[str, Any] = {}

    def pad() -> None:                                        # the reader waits for the person's keys
        assert release.wait(5)
        pressed.append("pad")

    async def look(pilot: Any, screen: PinScreen) -> None:
        seen["text"], seen["fields"] = screen_text(pilot.app), len(screen.query(PinField))
        release.set()
    outcome, _, _ = pin_session(card, pad=pad, between=look)
    assert outcome.ok and pressed == ["pad"] and card.received == []
    assert PAD_TEXT in seen["text"] and "PIN (digits)" not in seen["text"] and seen["fields"] == 0

    def wrong() -> None:
        raise hw.WrongPinError(1)
    outcome, _, _ = pin_session(card, pad=wrong)
    assert outcome.status is PinStatus.FAILED and "1 try left" in outcome.message


def test_pin_reaches_the_simulated_card(buyer_image: Path) -> None:
    with open_card(buyer_image, sync=False) as conn:
        purse = PurseSession(conn)
        assert not purse.pin_verified()
        outcome, _, _ = pin_session(purse.verify_pin, "1", "1", "1", "1", "escape",
                                    between=lambda pilot, screen: pilot.press("enter"))
        assert outcome.status is PinStatus.CANCELLED and purse.info().pin_tries == 2    # the card counted it
        outcome, _, _ = pin_session(purse.verify_pin, "1", "2", "3", "4", "enter")
        assert outcome.ok and purse.pin_verified() and purse.info().pin_tries == 3


def test_check_pin_from_the_card_screens_uses_the_card(buyer_image: Path) -> None:
    app = TinguinApp(phrase=PHRASE, card=CardAccess(image=buyer_image))

    async def body(pilot: Any) -> tuple[str, int]:
        await settle(pilot)
        await pilot.press("v")
        await settle(pilot)
        assert isinstance(app.screen, PinScreen)
        text = screen_text(app)
        await pilot.press("1", "2", "3", "4", "enter")
        for _ in range(200):
            await pilot.pause(0.01)
            if not isinstance(app.screen, PinScreen):
                break
        await settle(pilot)
        return text, len(app.screen_stack)
    text, depth = run_app(app, body)
    assert "checking your card PIN (nothing is signed or paid)" in text and PHRASE in text and depth == 2


def test_static_source_counts_tries_like_a_card() -> None:
    src = card_source(pin=b"1234")
    with pytest.raises(hw.WrongPinError):
        src.verify_pin(b"0000")
    src.verify_pin(b"1234")
    assert src.received == [4, 4]
