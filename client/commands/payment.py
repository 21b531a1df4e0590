"""``semper payment modules``: the payment modules installed here, their models and properties."""
from __future__ import annotations

import argparse
from typing import Any

from . import emit, json_arg


def cmd_modules(args: argparse.Namespace) -> int:
    from ..payment.registry import discover
    out = []
    for f in discover():
        row: dict[str, Any] = {"name": f.name, "target": f.target}
        if f.cls is not None:
            row.update(model=f.cls.model.value, properties=f.cls.properties.as_dict())
        else:
            row["problem"] = f.problem
        out.append(row)

    def text() -> str:
        lines = []
        for r in out:
            if "problem" in r:
                lines.append(f"{r['name']:<12} NOT USABLE: {r['problem']}")
            else:
                props = ", ".join(k.replace("_", " ") for k, v in r["properties"].items() if v is True)
                lines.append(f"{r['name']:<12} {r['model']:<14} {props}  ({r['target']})")
        return "\n".join(lines)
    emit(args, out, text)
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser("payment", help="the payment manager")
    psub = p.add_subparsers(dest="payment_command", required=True)
    m = psub.add_parser("modules", help="list the installed payment modules (entry points)")
    json_arg(m)
    m.set_defaults(fn=cmd_modules)
