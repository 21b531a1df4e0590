"""The ``--db URL`` option of the commands that open a party's database (bank, CA, third party).

One definition so every command says the same about it and refuses a malformed URL the same way: as
bad input (one line, exit 2), before anything is opened. What the URL forms mean: docs/services.md
(Storage) and ``client/support/db.py``.
"""
from __future__ import annotations

import argparse

URL_FORMS = "sqlite:///PATH, a file path, or postgresql://USER@HOST/DB"


def storage_url(text: str) -> str:
    """argparse type: a storage URL that ``Dsn.parse`` accepts, returned unchanged."""
    from ..support.db import DatabaseError, Dsn
    try:
        Dsn.parse(text)
    except DatabaseError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_db_arg(p: argparse.ArgumentParser, where: str, flag: str = "--db", whose: str = "") -> None:
    """``--db URL``: the party's storage; ``where`` says where the SQLite default lives."""
    p.add_argument(flag, type=storage_url, metavar="URL",
                   help=f"{whose}storage URL: {URL_FORMS} (default: SQLite in {where})")
