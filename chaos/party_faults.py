"""A misbehaving exchange party: an :class:`~semper.client.exchange.run.Outbox` that stops, delays or
alters what the party sends.

Why here and not in ``client/exchange``: the product's parties send what their protocol says; the
faulty ones are made only by the tests, the benches and ``semper chaos``, which give a party this
outbox (``Party(outbox=Faults(...))`` or ``party.outbox = Faults(...)``). The protocol code is the
same in both cases: the fault enters at the one place every message passes last.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from semper.client.exchange.errors import PartyStopped
from semper.client.exchange.run import Outbox

Tamper = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Faults(Outbox):
    """Stop before sending a message kind (``"ttp"``: before going to the third party; ``"*"``: at
    the first chance), wait before sending a kind, or alter a message body before it is sent."""

    stop_before: str | None = None
    tamper: dict[str, Tamper] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)     # seconds to wait before sending a kind

    def stops_at(self, kind: str) -> bool:
        return self.stop_before in (kind, "*")

    async def release(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.stops_at(kind):
            what = "going to the third party" if kind == "ttp" else f"sending {kind}"
            raise PartyStopped(f"the party stops before {what}")
        if kind in self.delays:
            await asyncio.sleep(self.delays[kind])
        if kind in self.tamper:
            body = self.tamper[kind](json.loads(json.dumps(body)))
        return body
