"""Opening the buyer's card and the seller's PSAM, wherever they are: a PC/SC reader or an image.

``--reader NAME`` talks through pcscd; ``--image PATH`` opens a simulated card in this process;
with neither, the readers are searched for a card carrying the applet. This is the one place that
makes that choice: the commands, the TINGUIN, the signers, the shop's PSAM and the demo all open
their cards through :func:`open_connection` (or the context managers on top of it), so a card is
found, refused and reported the same way everywhere.
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


def open_connection(aid: AID, reader: str | None = None, image: Path | None = None,
                    exclude: tuple[str, ...] = (), *, sync: bool = True, read_only: bool = False) -> Connection:
    """A connection to the card that carries ``aid``: the image when one is named, else the reader when
    one is named, else the first reader (not in ``exclude``) whose card answers a SELECT for ``aid``.
    The caller closes it. ``sync=False`` opens an image without an fsync per commit (faster, not
    power-safe); ``read_only`` for commands that only look: the image is then not changed at all, not
    even repaired. Both mean nothing for a card in a reader (it is what it is)."""
    if image is not None:
        return open_card(Path(image), sync=sync, read_only=read_only)
    return PcscConnection(reader or find_card(aid, exclude))


@contextmanager
def connection(aid: AID, reader: str | None = None, image: Path | None = None,
               exclude: tuple[str, ...] = (), *, sync: bool = True, read_only: bool = False
               ) -> Iterator[Connection]:
    """:func:`open_connection` for the length of a ``with`` block."""
    conn = open_connection(aid, reader, image, exclude, sync=sync, read_only=read_only)
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
