"""The one door from the host side to the simulated card: create or open a card image in process.

Upper layers get a plain :class:`~hardware.transport.Connection`, the same as for a card behind
pcscd, so nothing above this module knows (or can know) that the card is simulated.

A card image is sealed under a per-card key kept outside it (``card_applet_sim/keys.py``); the key
source is passed in here, by default the key folder the environment names (``$SEMPER_CARD_KEYS``,
else ``$SEMPER_HOME/card-keys``), the same one ``semper card serve`` uses.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from . import errors
from .transport import InProcessConnection

if TYPE_CHECKING:
    from semper.card_applet_sim.keys import KeySource
    from semper.card_applet_sim.os import CardOS


class SimulatedCard(InProcessConnection):
    """An in-process connection that owns its card image and closes it."""

    card: CardOS                                # what open_card gives it: the simulator's card OS

    def close(self) -> None:
        self.card.close()

    def notes(self) -> list[str]:
        """What opening the image found and a person should know (an interrupted write, an open mode)."""
        report = self.card.store.report
        read_only = self.card.store.read_only
        image = self.reader.removeprefix("simulated:")
        out = []
        if report.torn_bytes:
            out.append(f"{image} ends in an interrupted write ({report.torn_bytes} bytes); the card holds the state "
                       "before it" + ("; this command only looked and left the file as it is" if read_only else
                                      ", and the interrupted bytes were dropped"))
        if report.mode_tightened:
            out.append(f"{image} was readable by others; it is private now (0600)")
        if report.mode_open:
            out.append(f"{image} is readable by others; make it private: chmod 600 {image}")
        return out

    def __enter__(self) -> SimulatedCard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def card_key_folder() -> Path:
    """Where the sealing keys of simulated cards are kept by default (for messages and child processes)."""
    from semper.card_applet_sim.keys import default_key_folder
    return default_key_folder()


@contextmanager
def card_keys_in(folder: Path) -> Iterator[Path]:
    """Keep the sealing keys of the cards made inside the block in ``folder``.

    For throwaway worlds (benches, the demo, chaos runs): their cards' keys stay with them instead of
    piling up in the user's key folder. Sets ``SEMPER_CARD_KEYS`` for this process and the card and
    service processes it starts, and restores it afterwards.
    """
    folder = Path(folder) / "card-keys"
    before = os.environ.get("SEMPER_CARD_KEYS")
    os.environ["SEMPER_CARD_KEYS"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("SEMPER_CARD_KEYS", None)
        else:
            os.environ["SEMPER_CARD_KEYS"] = before


def create_card(image: Path, applets: list[str], *, sync: bool = True, keys: KeySource | None = None) -> SimulatedCard:
    from semper.card_applet_sim.os import CardOS
    from semper.card_applet_sim.store import CardImageError
    try:
        return SimulatedCard(CardOS.create(image, applets, sync=sync, keys=keys), f"simulated:{image}")
    except CardImageError as e:
        raise errors.ReaderError(str(e)) from None


def open_card(image: Path, *, sync: bool = True, keys: KeySource | None = None,
              read_only: bool = False) -> SimulatedCard:
    """Open a card image in process; ``read_only`` to look without changing the file (not even a repair)."""
    from semper.card_applet_sim.os import CardOS
    from semper.card_applet_sim.store import CardImageError
    try:
        return SimulatedCard(CardOS.open(image, sync=sync, keys=keys, read_only=read_only), f"simulated:{image}")
    except CardImageError as e:
        raise errors.ReaderError(str(e)) from None
