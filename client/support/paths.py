"""Where semper keeps a user's files: ``$SEMPER_HOME``, else ``$XDG_DATA_HOME/semper``."""
from __future__ import annotations

import os
from pathlib import Path


def semper_home() -> Path:
    env = os.environ.get("SEMPER_HOME")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "semper"
