"""The current screen as plain text: what a person would read, for the scripted user and the tests.

Why not ``export_screenshot`` alone: an SVG is right for snapshots, but checking that a phrase or a
line is on screen (or that a fake status line is not) is clearer on the characters themselves.
This renders the same compositor output ``App.export_screenshot`` uses, without styles.
"""
from __future__ import annotations

import io

from rich.console import Console
from textual.app import App


def screen_text(app: App[object]) -> str:
    """The visible characters of ``app``'s current screen, one line per terminal row."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)
