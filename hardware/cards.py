"""Opening the buyer's card and the seller's PSAM, wherever they are: a PC/SC reader or an image.

``--reader NAME`` talks through pcscd; ``--image PATH`` opens a simulated card in this process;
with neither, the readers are searched for a card carrying the applet.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .iso7816 import AID
from .psam import PsamSession
from .purse import PurseSession
from .readers import find_card
from .simulator import open_card
from .transport import Connection, PcscConnection


@contextmanager
def connection(aid: AID, reader: str | None = None, image: Path | None = None,
               exclude: tuple[str, ...] = (), *, read_only: bool = False) -> Iterator[Connection]:
    """``read_only``: for commands that only look; an image is then not changed at all (a card in a
    reader is what it is)."""
    if image is not None:
        conn: Connection = open_card(image, read_only=read_only)
    else:
        conn = PcscConnection(reader or find_card(aid, exclude))
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def purse(reader: str | None = None, image: Path | None = None, *, read_only: bool = False
          ) -> Iterator[PurseSession]:
    with connection(AID.PURSE, reader, image, read_only=read_only) as conn:
        yield PurseSession(conn)


@contextmanager
def psam(reader: str | None = None, image: Path | None = None) -> Iterator[PsamSession]:
    with connection(AID.PSAM, reader, image) as conn:
        yield PsamSession(conn)
