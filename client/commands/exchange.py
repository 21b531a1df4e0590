"""``semper exchange cells``: the paper's Figure 2, cell by cell, and how each is reached here."""
from __future__ import annotations

import argparse

from . import emit, json_arg


def cmd_cells(args: argparse.Namespace) -> int:
    from ..commerce.figure2 import CELLS
    rows = [{"cell": c.key, "title": c.title, "types": sorted(c.kinds), "transfer": c.transfer, "items": c.how}
            for c in CELLS.values()]

    def text() -> str:
        return "\n".join(f"{r['cell']:<27} {r['items']}" for r in rows)
    emit(args, rows, text)
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("exchange", help="transfers and fair exchanges between persons (the paper's Figure 2)")
    esub = p.add_subparsers(dest="exchange_command", required=True)
    c = esub.add_parser("cells", help="list Figure 2's cells: the items and the protocol each uses")
    json_arg(c)
    c.set_defaults(fn=cmd_cells)
