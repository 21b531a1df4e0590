"""The applets a card image can carry, by the name stored in the image."""
from __future__ import annotations

from ..applet import Applet
from .piv import PivApplet
from .psam import PsamApplet
from .purse import PurseApplet

REGISTRY: dict[str, type[Applet]] = {
    PurseApplet.NAME: PurseApplet,
    PsamApplet.NAME: PsamApplet,
    PivApplet.NAME: PivApplet,
}
