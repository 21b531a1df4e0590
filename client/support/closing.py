"""Closing what a party opened, in one place."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable


def close_all(closers: Iterable[Callable[[], object]]) -> None:
    """Call each closer, the last opened first. Best effort: one that fails does not keep the others open
    (the process is ending, or the opening that needed them failed and its own error is the one to see)."""
    for close in reversed(list(closers)):
        with contextlib.suppress(Exception):
            close()
