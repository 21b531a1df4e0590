"""Writing a secret file (a key, a PIN, a bearer secret) so that it is never readable by others.

Writing with the default mode and tightening it afterwards leaves a window in which the file is
readable under umask 022, and ``open(..., O_CREAT)`` keeps the mode of a file that is already there.
So the content goes into a new temporary file in the same folder, created by ``tempfile.mkstemp``
(``O_CREAT | O_EXCL``, mode 0600, whatever the umask), synced, and renamed over the target; the
folder is synced so the rename survives power loss.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_secret(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data``, mode 0600 from the first byte, atomically."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
