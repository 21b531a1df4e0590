"""A party's folder configuration (``config.json``), read the one way every party reads it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semper.hardware.errors import SemperError


def read_config(path: Path, missing: str, error: type[SemperError]) -> dict[str, Any]:
    """The JSON object in ``path``. A missing file raises ``error(missing)`` (the folder holds no such
    party: ``missing`` says how to make one); an unreadable or malformed one says what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(missing) from None
    except (OSError, ValueError) as e:
        raise error(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path} is not a JSON object")
    return data
