"""The buyer's exchange party, run in a background event loop so the (synchronous) workflow can use it.

Why: the exchange layer is asyncio (its mailbox is an HTTPS server); the workflow runs in the
TINGUIN's worker thread and blocks on each step. This wraps one :class:`~client.exchange.party.Party`
in a thread of its own with bounded starts, waits and stops. The buyer *responds* in fair exchanges
(the seller's item is generatable, so the seller originates): :meth:`expect` registers what the
buyer will exchange, :meth:`wait` returns the outcome of the run that follows.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..exchange.outcome import Outcome
from ..exchange.party import Party, ResponsePlan
from .errors import ServiceUnavailable

T = TypeVar("T")


class ExchangeClient:
    """``make_party`` is called in the party's own thread: its archive connection lives there."""

    def __init__(self, make_party: Callable[[], Party], *, start_timeout: float = 15.0) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="semper-exchange", daemon=True)
        self.thread.start()

        async def start() -> Party:
            party = make_party()
            return await party.start()
        self.party: Party = self._run(start(), start_timeout)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return self.party.url

    def expect(self, plan: ResponsePlan) -> set[str]:
        """Offer ``plan`` to the next matching negotiation; returns the sessions known before it."""
        async def add() -> set[str]:
            self.party.plans.append(plan)
            return set(self.party.outcomes) | set(self.party.mailbox.queues)
        return self._run(add(), 5.0)

    def withdraw(self, plan: ResponsePlan) -> None:
        async def remove() -> None:
            if plan in self.party.plans:
                self.party.plans.remove(plan)
        self._run(remove(), 5.0)

    def originate(self, peer_url: str, offer: Any, want: Any, timeout: float, **kw: Any) -> Outcome:
        """Run one exchange as its originator (``Party.originate``), bounded by ``timeout``."""
        return self._run(self.party.originate(peer_url, offer, want, **kw), timeout)

    def evidence(self, xid: str) -> list[tuple[str, bytes]]:
        """The party's archived evidence of one exchange (read in the party's thread: its archive lives there)."""
        async def read() -> list[tuple[str, bytes]]:
            return self.party.evidence(xid)
        return self._run(read(), 10.0)

    def wait(self, known: set[str], timeout: float) -> Outcome | None:
        """The outcome of the first run that started after ``expect`` (None when none ended in time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = [s for s in list(self.party.outcomes) if s not in known]
            if new:
                return self.party.outcomes[new[0]]
            time.sleep(0.005)
        return None

    def recover(self, timeout: float = 60.0) -> list[Outcome]:
        """Ask again for every exchange left open: the outcome of an exchange that ended ``pending``
        (the third party could not be reached) is settled by going to the third party now. Its
        decisions are kept, so asking again is always safe (found by ``semper chaos``: without this
        the buyer's client had no way to finish a paid exchange once the third party was back)."""
        return self._run(self.party.recover(), timeout)

    def close(self, timeout: float = 10.0) -> None:
        async def stop() -> None:
            await self.party.stop()
            self.party.close()
        try:
            self._run(stop(), timeout)
        except Exception as e:            # still stop the loop
            raise ServiceUnavailable(f"the exchange party did not stop cleanly: {e}") from None
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
