"""The TINGUIN application: one Textual app for the user's own card and for deals.

Two ways in: ``semper ui`` opens it on the card screens (status, purse and log, archive, a PIN
check); a deal opens it through :mod:`client.tinguin.api`, where the commerce layer's workflow runs
in its own thread and every question it asks becomes a screen here, answered by a person or by a
scripted user pressing the same keys.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from .model import PinOutcome, ProgressStep
from .screens import ArchiveScreen, CardScreen, PinScreen, ProgressScreen, PurseScreen
from .sources import CardSource

T = TypeVar("T")

CSS = """
Screen { background: #0b132b; color: #e0e6ed; }
.buttons { height: auto; margin: 1 0 0 0; }
.buttons Button { margin: 0 2 0 0; }
#pin { width: 30; margin: 1 0; }
#pin-message { margin: 1 0 0 0; }
#confirmation-text { margin: 1 0 0 0; padding: 0 1; border: round #fca311; }
#confirm-message { height: 2; padding: 0 2; background: #14213d; }
"""


class TinguinApp(App[Any]):
    """The trusted window. ``phrase``: the user's personal phrase (None shows how to set one)."""

    CSS = CSS
    ENABLE_COMMAND_PALETTE = False           # nothing in the TINGUIN may be reached by typing a command name
    BINDINGS = [Binding("ctrl+q", "quit", "quit", priority=True)]

    def __init__(self, *, phrase: str | None, card: CardSource | None = None, archive: Path | None = None,
                 scripted: bool = False, start: str | None = "card", min_read: float = 0.6,
                 refresh: float = 0.0) -> None:
        super().__init__()
        self.animation_level = "none"     # scrolling lands at once: what is on the screen is what was scrolled to
        self.refresh_seconds = refresh    # the card screen re-reads readers and card this often (0: on demand)
        self.min_read = min_read          # seconds a confirmation is on screen before 'y' counts (no typed-ahead yes)
        self.phrase = phrase
        self.card = card
        self.archive = archive
        self.scripted = scripted
        self.start = start
        self.title = "SEMPER TINGUIN"
        self.ready_hook: Callable[[], None] | None = None       # run once the first screen is up (a deal's thread)

    def on_mount(self) -> None:
        if self.start is not None:
            self.action_show(self.start)
        else:
            self.push_screen(ProgressScreen())
        if self.ready_hook is not None:
            self.call_after_refresh(self.ready_hook)

    # ---- own-card navigation ----------------------------------------------------------------------
    _OWN = {"card": CardScreen, "purse": PurseScreen, "archive": ArchiveScreen}

    def action_show(self, name: str) -> None:
        if name not in self._OWN:
            return
        if not self.is_screen_installed(name):
            self.install_screen(self._OWN[name](), name)
        if len(self.screen_stack) <= 1:
            self.push_screen(name)
        else:
            self.switch_screen(name)

    def action_check_pin(self) -> None:
        """Hand a PIN to the card once (spends a try when wrong): 'is this still my PIN?'."""
        card = self.card
        if card is None or isinstance(self.screen, PinScreen):
            return
        pad = card.verify_pin_on_pad if card.has_pin_pad() else None

        def done(outcome: PinOutcome | None) -> None:
            if outcome is not None:
                self.notify(outcome.message or "the card accepted the PIN", markup=False,
                            severity="information" if outcome.ok else "error")
                reload = getattr(self.screen, "action_reload", None)     # the card screen's; others have none
                if reload is not None:
                    reload()
        self.push_screen(PinScreen("checking your card PIN (nothing is signed or paid)", card.verify_pin, pad),
                         done)

    # ---- deal screens (called on the app's loop by the TrustedUI implementations) -------------------
    def open(self, screen: Screen[T]) -> asyncio.Future[T]:
        """Push ``screen``; the future resolves with what it dismisses with."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(result: T | None) -> None:
            if not future.done():
                # a screen dismissed without a value resolves None: the caller's T then admits None
                future.set_result(cast(T, result))
        self.push_screen(screen, done)
        return future

    def progress_screen(self) -> ProgressScreen:
        for screen in reversed(self.screen_stack):
            if isinstance(screen, ProgressScreen):
                return screen
        screen = ProgressScreen()
        self.push_screen(screen)
        return screen

    def show_progress(self, step: ProgressStep) -> None:
        self.progress_screen().put(step)
