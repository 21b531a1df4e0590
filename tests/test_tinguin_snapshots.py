"""Snapshots of the TINGUIN's main screens: ``App.export_screenshot()`` SVG compared with tests/snapshots/.

pytest-textual-snapshot pins syrupy 4.8, which needs pytest < 9, and this project runs pytest 9;
so the snapshots are plain files: the SVG (what a person sees, colours included) and the screen's
text beside it (for a readable diff when the SVG changes). A change to a screen fails here until
the snapshots are regenerated on purpose and reviewed:

    SEMPER_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest -q tests/test_tinguin_snapshots.py

(a Textual upgrade that changes rendering needs the same).
"""
from __future__ import annotations

import difflib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_tinguin_samples import (
    PHRASE,
    archive_view,
    card_source,
    offer,
    outcome,
    request,
    run_app,
    steps,
)
from textual.screen import Screen

from semper.client.tinguin.app import TinguinApp
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
from semper.client.tinguin.textshot import screen_text

pytestmark = pytest.mark.timeout(60)
SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("SEMPER_UPDATE_SNAPSHOTS") == "1"


class FixedArchiveScreen(ArchiveScreen):
    """The archive screen with a fixed archive (a real one has a random id and paths)."""

    def fetch(self) -> Any:
        return archive_view()


def _progress() -> ProgressScreen:
    screen = ProgressScreen()
    for step in steps():
        screen.put(step)
    return screen


PAD_RELEASE = threading.Event()          # the PIN pad "waits for the person" until the snapshot is taken


SCREENS: dict[str, Callable[[], Screen[Any]]] = {
    "card": CardScreen,
    "purse": PurseScreen,
    "archive": FixedArchiveScreen,
    "offer": lambda: OfferScreen(offer()),
    "confirm": lambda: ConfirmScreen(request()),
    "pin": lambda: PinScreen("pay 62.50 EUR to Teapot Shop", lambda pin: None),
    "pin_pad": lambda: PinScreen("pay 62.50 EUR to Teapot Shop", lambda pin: None, lambda: PAD_RELEASE.wait(10)),
    "progress": _progress,
    "result": lambda: ResultScreen(outcome()),
}


def capture(make: Callable[[], Screen[Any]]) -> tuple[str, str]:
    app = TinguinApp(phrase=PHRASE, card=card_source(), start=None)

    async def body(pilot: Any) -> tuple[str, str]:
        app.push_screen(make())
        await pilot.pause()
        loading = [w for w in app.workers if w.group == "load"]     # not the PIN pad's (it waits for a person)
        if loading:
            await app.workers.wait_for_complete(loading)
        await pilot.pause()
        await pilot.pause()
        try:
            return app.export_screenshot(title="SEMPER TINGUIN"), screen_text(app)
        finally:
            PAD_RELEASE.set()
    PAD_RELEASE.clear()
    return run_app(app, body, size=(100, 40))


@pytest.mark.parametrize("name", list(SCREENS))
def test_screen_matches_its_snapshot(name: str, tmp_path: Path) -> None:
    svg, text = capture(SCREENS[name])
    svg_file, text_file = SNAPSHOTS / f"tinguin_{name}.svg", SNAPSHOTS / f"tinguin_{name}.txt"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        svg_file.write_text(svg, encoding="utf-8")
        text_file.write_text(text, encoding="utf-8")
    if not svg_file.exists():
        pytest.fail(f"no snapshot {svg_file.name}: generate it with SEMPER_UPDATE_SNAPSHOTS=1 and review it")
    assert PHRASE in text.splitlines()[1]
    if svg != svg_file.read_text(encoding="utf-8"):
        (tmp_path / svg_file.name).write_text(svg, encoding="utf-8")
        diff = "\n".join(difflib.unified_diff(text_file.read_text(encoding="utf-8").splitlines(), text.splitlines(),
                                              "snapshot", "now", lineterm=""))
        pytest.fail(f"the {name} screen differs from {svg_file} (new SVG in {tmp_path / svg_file.name}); text diff:\n"
                    f"{diff or '(same characters: colours or layout changed)'}\nIf the change is intended, run "
                    "SEMPER_UPDATE_SNAPSHOTS=1 and review the new files")
