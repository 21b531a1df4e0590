"""The card boundary, checked on the source (issue 13, item 3): above ``hardware/`` nothing builds an APDU
or opens a card its own way, and inside it every applet session speaks through the same SELECT and the
same named instruction bytes.

Why on the source: a hand-written SELECT or a second "image or reader?" choice works the day it is
written; it is the next change (a new applet, a new way to find a card, a status word to map) that it
silently misses. ``semper readers``, the TINGUIN's reader screen, ``semper buy``, the shop's PSAM and the
demo used to each carry their own copy.
"""
from __future__ import annotations

import ast
from pathlib import Path

from test_layout import REPO, imports, modules

# What only the hardware layer may use: building APDUs, raw connections, the simulated card's door, the
# reader search. Above it a card is opened through semper.hardware.cards and spoken to through sessions.
HARDWARE_ONLY = {
    "semper.hardware.iso7816.Apdu", "semper.hardware.transport.ApduSession",
    "semper.hardware.transport.PcscConnection", "semper.hardware.transport.InProcessConnection",
    "semper.hardware.simulator.open_card", "semper.hardware.readers.find_card",
}
# making a new card image is personalisation's job, not a way of opening a card
ALLOWED = {("semper.client.support.personalisation", "semper.hardware.simulator.create_card")}


def test_nothing_above_hardware_builds_apdus_or_opens_cards_its_own_way() -> None:
    wrong = []
    for name, path in modules().items():
        if not name.startswith("semper.client."):
            continue
        for line, target in imports(name, path):
            if target in HARDWARE_ONLY and (name, target) not in ALLOWED:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {target}")
    assert not wrong, "open cards through semper.hardware.cards, talk to them through sessions:\n" + "\n".join(wrong)


def _apdu_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), str(path))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Apdu"]


def test_applet_sessions_use_the_named_instructions_and_the_one_select() -> None:
    """Every APDU the hardware layer builds names its instruction (``INS.X``), and SELECT is built in one
    place, ``ApduSession.select``."""
    unnamed, selects = [], []
    for path in sorted((REPO / "hardware").glob("*.py")):
        for call in _apdu_calls(path):
            ins = call.args[1] if len(call.args) > 1 else None
            if not (isinstance(ins, ast.Attribute) and isinstance(ins.value, ast.Name) and ins.value.id == "INS"):
                if not (isinstance(ins, ast.Attribute) and ins.attr == "ins"):     # a rebuilt command keeps its own
                    unnamed.append(f"{path.name}:{call.lineno}")
            elif ins.attr == "SELECT":
                selects.append(f"{path.name}:{call.lineno}")
    assert not unnamed, f"APDUs with an unnamed instruction byte: {unnamed}"
    assert len(selects) == 1 and selects[0].startswith("transport.py:"), selects
