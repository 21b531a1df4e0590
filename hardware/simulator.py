"""The one door from the host side to the simulated card: create or open a card image in process.

Upper layers get a plain :class:`~hardware.transport.Connection`, the same as for a card behind
pcscd, so nothing above this module knows (or can know) that the card is simulated.
"""
from __future__ import annotations

from pathlib import Path

from . import errors
from .transport import InProcessConnection


class SimulatedCard(InProcessConnection):
    """An in-process connection that owns its card image and closes it."""

    def close(self) -> None:
        self.card.close()  # type: ignore[attr-defined]

    def __enter__(self) -> "SimulatedCard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_card(image: Path, applets: list[str], *, sync: bool = True) -> SimulatedCard:
    from card_applet_sim.os import CardOS
    from card_applet_sim.store import CardImageError
    try:
        return SimulatedCard(CardOS.create(image, applets, sync=sync), f"simulated:{image}")
    except CardImageError as e:
        raise errors.ReaderError(str(e)) from None


def open_card(image: Path, *, sync: bool = True) -> SimulatedCard:
    from card_applet_sim.os import CardOS
    from card_applet_sim.store import CardImageError
    try:
        return SimulatedCard(CardOS.open(image, sync=sync), f"simulated:{image}")
    except CardImageError as e:
        raise errors.ReaderError(str(e)) from None
