"""Finding payment modules at run time: Python entry points in the group ``semper.payment_modules``.

Why entry points: a payment system written outside semper attaches by installing a package that
declares ``[project.entry-points."semper.payment_modules"] NAME = "pkg.mod:ModuleClass"``; no file
of semper changes (paper 3.6: "service modules can be dynamically attached to managers"). A module
that fails to import or does not have the interface is reported with the reason, not fatal:
one broken plug-in must not take the others down.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import ClassVar, Protocol, cast

from .model import ExchangeProperties, Model

GROUP = "semper.payment_modules"


class ModuleClass(Protocol):
    """What ``check`` makes sure an installed module class has (the rest of its interface is checked by name)."""
    name: ClassVar[str]
    model: ClassVar[Model]
    properties: ClassVar[ExchangeProperties]


@dataclass(frozen=True)
class Found:
    name: str
    target: str              # "package.module:Class"
    cls: type[ModuleClass] | None
    problem: str = ""


def discover(group: str = GROUP) -> list[Found]:
    """Every module installed in ``group``, loaded and checked (problems reported, not raised)."""
    out: list[Found] = []
    seen: set[str] = set()
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        if ep.name in seen:
            out.append(Found(ep.name, ep.value, None, "another installed package already uses this name"))
            continue
        seen.add(ep.name)
        try:
            cls = ep.load()
        except Exception as e:          # a plug-in's import error must not stop the others
            out.append(Found(ep.name, ep.value, None, f"cannot be imported: {type(e).__name__}: {e}"))
            continue
        problem = check(cls, ep.name)
        out.append(Found(ep.name, ep.value, None if problem else cast("type[ModuleClass]", cls), problem))
    return out


def check(cls: object, name: str) -> str:
    """Why ``cls`` is not a usable module class ('' when it is)."""
    if not isinstance(cls, type):
        return "the entry point does not name a class"
    if getattr(cls, "name", None) != name:
        return f"the class says its name is {getattr(cls, 'name', None)!r}, the entry point {name!r}"
    if not isinstance(getattr(cls, "model", None), Model):
        return "the class has no model (Model.CASH_LIKE or Model.ACCOUNT_BASED)"
    if not isinstance(getattr(cls, "properties", None), ExchangeProperties):
        return "the class has no exchange properties (ExchangeProperties)"
    missing = [m for m in ("instruments", "acceptance", "payer_flow", "payee_flow", "refund", "status")
               if not callable(getattr(cls, m, None))]
    return f"the class lacks {', '.join(missing)}" if missing else ""
