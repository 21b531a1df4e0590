"""The four workflows semper ships, as service documents (``documents/*.json``), read once.

They are run by the same interpreter as downloaded services, without a certificate: they come with
semper, as the blocks do (:class:`~.permits.Enforcer` with no permit).
"""
from __future__ import annotations

import functools
from importlib import resources

from .document import ServiceDocument, read

NAMES = ("mail-order", "information", "registration", "contract")


@functools.cache
def document(name: str) -> ServiceDocument:
    """The built-in document ``name`` (one of :data:`NAMES`), checked like any other."""
    if name not in NAMES:
        raise KeyError(name)
    data = resources.files(__package__).joinpath("documents", f"{name}.json").read_bytes()
    return read(data, f"the built-in service {name!r}")
