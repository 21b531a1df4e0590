"""Where a simulated card's sealing key lives: outside its image, one 0600 file per card.

A real card keeps its keys in a chip that does not hand them out. The simulator's card is a file
that anyone with the user's rights can copy, so everything in it is sealed (encrypted and
authenticated) under a 32-byte key that the image does not contain: the image names its key by a
random 16-byte image id, and a key source turns that id into the key. The card must unseal itself
without asking anyone (a purchase needs no PIN), so the key source is a folder of key files the
card process can read: ``$SEMPER_CARD_KEYS``, else ``$SEMPER_HOME/card-keys``, else
``$XDG_DATA_HOME/semper/card-keys`` (the same rule as the host's ``semper_home``; this package reads
the environment itself because it may not import the host side). Copies of an image (backups, test
fixtures) keep working wherever the same folder is used; an image without its key cannot be opened.

What this buys and what it does not is written down in docs/threat-model.md (item 4).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

KEY_LEN = 32
ID_LEN = 16


class KeyUnavailable(Exception):
    """The key source has no usable key for an image id; the message says where it looked."""


class KeySource(Protocol):
    """Gives the sealing key of an image id; makes and keeps one for a new image."""

    def new_key(self, image_id: bytes) -> bytes: ...

    def key(self, image_id: bytes) -> bytes: ...


def default_key_folder() -> Path:
    env = os.environ.get("SEMPER_CARD_KEYS")
    if env:
        return Path(env)
    home = os.environ.get("SEMPER_HOME")
    if home:
        return Path(home) / "card-keys"
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "semper" / "card-keys"


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class KeyFolder:
    """One file ``<image id hex>.key`` per card, 32 random bytes, mode 0600, in a 0700 folder."""

    folder: Path

    @classmethod
    def default(cls) -> KeyFolder:
        return cls(default_key_folder())

    def path(self, image_id: bytes) -> Path:
        return self.folder / f"{image_id.hex()}.key"

    def new_key(self, image_id: bytes) -> bytes:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = os.urandom(KEY_LEN)
        p = self.path(image_id)
        # O_EXCL: never reuse or follow something already there; the mode applies from the first byte
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if os.write(fd, key) != KEY_LEN:
                raise OSError(f"could not write {p} (disk full?)")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            p.unlink(missing_ok=True)
            raise
        os.close(fd)
        _fsync_folder(self.folder)
        return key

    def key(self, image_id: bytes) -> bytes:
        p = self.path(image_id)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KeyUnavailable(
                f"its sealing key {p.name} is not in {self.folder}; a card cannot be opened without its key "
                "(if the card was made under another SEMPER_HOME, set SEMPER_CARD_KEYS to that home's "
                "card-keys folder)") from None
        except OSError as e:
            raise KeyUnavailable(f"its sealing key {p} cannot be read: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077:
                raise KeyUnavailable(f"its sealing key {p} is readable by others (mode "
                                     f"{stat.S_IMODE(st.st_mode):04o}); make it private with 'chmod 600 {p}' "
                                     "and consider the card's secrets exposed")
            data = os.read(fd, KEY_LEN + 1)
        finally:
            os.close(fd)
        if len(data) != KEY_LEN:
            raise KeyUnavailable(f"its sealing key {p} is damaged (not {KEY_LEN} bytes); restore it from a backup")
        return data
