"""Fuzzing an exchange party's service (``POST /exchange``, ``client/exchange/wire.py``).

A real buyer party (its token key, the semper CA's TLS certificate, HTTPS on loopback) runs in an
event loop of its own thread, as it would inside an application. Hypothesis sends it random
methods, paths, content types and bodies, hostile JSON, messages of unknown kinds, bad sessions and
sessions it never opened, and negotiations with garbage in every field. Refused input must get a
4xx JSON error; input the mailbox takes (a transport acknowledgement, 202) must not leave anything
behind once the party has refused it: no queue, no task, no archive entry. Afterwards the same party
must still complete a real purchase.
"""
from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_exchange_support import (
    RunningTtp,
    World,
    buyer_managers,
    cards,
    make_party,
    purchase,
    seller_managers,
    start_ttp,
    world,
)
from test_fuzz_support import (
    CONTENT_TYPES,
    METHODS,
    RawHttps,
    assert_refusal,
    assert_sane,
    garbage_bodies,
    hostile_bodies,
    json_values,
    paths,
    protocol_level_refusals,
)

from semper.client.exchange import wire
from semper.client.exchange.party import Party

T = TypeVar("T")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
SETTLE_S = 10.0           # a refused negotiation ends within this (its refusal goes to a closed port)


class LoopThread:
    """An event loop in a thread of its own: the party lives there, the test talks to it over HTTPS."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-party", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture(scope="module")
def ttp(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTtp]:
    t = start_ttp(world, tmp_path_factory.mktemp("fuzz-x-ttp") / "ttp.db")
    yield t
    t.stop()


@pytest.fixture(scope="module")
def party(world: World, ttp: RunningTtp, loop: LoopThread, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Party]:
    folder = tmp_path_factory.mktemp("fuzz-party")

    async def start() -> Party:
        p = make_party(world, "buyer", folder, buyer_managers(world), ttp.url, step_timeout=2.0)
        return await p.start()
    p = loop.run(start())
    yield p

    async def stop() -> None:
        await p.stop()
        p.close()                    # the archive's database belongs to the loop's thread
    loop.run(stop())


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released): a reply_to that refuses at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def state(loop: LoopThread, p: Party) -> dict[str, Any]:
    """What a message may leave behind in the party: queues, runs, outcomes, archived exchanges."""
    async def read() -> dict[str, Any]:
        return {"queues": sorted(p.mailbox.queues), "tasks": len(p._tasks), "outcomes": sorted(p.outcomes),
                "archive": [(xid, n) for xid, n in p.archive.deals()]}
    return loop.run(read())


def settled(loop: LoopThread, p: Party, before: dict[str, Any]) -> dict[str, Any]:
    """The party's state once every run a message started has ended (bounded by SETTLE_S)."""
    async def wait() -> None:
        deadline = asyncio.get_running_loop().time() + SETTLE_S
        while (p._tasks or set(p.mailbox.queues) - set(before["queues"])) and \
                asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
    loop.run(wait(), SETTLE_S + 5)
    return state(loop, p)


def raw_for(world: World, p: Party) -> RawHttps:
    return RawHttps(p.url, world.root_pem)


def session() -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789abcdef", min_size=16, max_size=64)


# ---- stateless fuzzers -----------------------------------------------------------------------------------
@FUZZ
@given(method=st.sampled_from(METHODS), path=paths(("/exchange",)),
       ctype=st.sampled_from(CONTENT_TYPES + ("application/json",)), body=st.one_of(st.none(), garbage_bodies()))
def test_random_requests_leave_nothing(world: World, party: Party, loop: LoopThread, method: str, path: str,
                                       ctype: str, body: bytes | None) -> None:
    before = state(loop, party)
    a = raw_for(world, party).send(method, path, body, {"Content-Type": ctype} if ctype else {})
    assert_sane(a, method)
    assert a.status != 202
    assert settled(loop, party, before) == before


def test_hostile_json_and_bad_envelopes(world: World, party: Party, loop: LoopThread) -> None:
    raw = raw_for(world, party)
    before = state(loop, party)
    valid = {"session": "a" * 32, "kind": "negotiate", "body": {}}
    for data in hostile_bodies(valid).values():
        assert_refusal(raw.send("POST", "/exchange", data, {"Content-Type": "application/json"}), 400)
    for msg, status in (({**valid, "kind": "pay-me"}, 400), ({**valid, "kind": "NEGOTIATE"}, 400),
                        ({**valid, "session": "short"}, 400), ({**valid, "session": "s" * 65}, 400),
                        ({**valid, "body": []}, 400), ({**valid, "extra": 1}, 400),
                        ({**valid, "kind": "propose"}, 404), ({**valid, "kind": "item"}, 404),
                        ({**valid, "kind": "refuse"}, 404)):
        assert_refusal(raw.post_json("/exchange", msg), status)
    assert settled(loop, party, before) == before


@FUZZ
@given(sid=session(), reply_to=st.one_of(st.none(), json_values(3), st.sampled_from(
    ("http://127.0.0.1:1", "https://", "ftp://x", "https:///path", "", "javascript:alert(1)", "https://[",
     "https://[::1", "https://[zz]/"))))
def test_negotiations_nobody_can_be_answered_leave_nothing(world: World, party: Party, loop: LoopThread,
                                                          sid: str, reply_to: Any) -> None:
    """A negotiation without an https reply_to is dropped: not one queue may stay behind."""
    before = state(loop, party)
    body: dict[str, Any] = {} if reply_to is None else {"reply_to": reply_to}
    a = raw_for(world, party).post_json("/exchange", {"session": sid, "kind": "negotiate", "body": body})
    assert a.status in (202, 400), a.body
    assert settled(loop, party, before) == before


@FUZZ
@given(sid=session(), data=st.data())
def test_garbage_negotiations_are_refused_and_end(world: World, party: Party, loop: LoopThread,
                                                 sid: str, data: st.DataObject) -> None:
    """Garbage in every field of a negotiation that names a reply_to: refused, the run ends, no evidence."""
    fields = ("originator", "ttp", "offer", "want", "fair", "nonce", "attributes")
    body = {k: data.draw(json_values(3)) for k in data.draw(st.sets(st.sampled_from(fields)))}
    body["reply_to"] = f"https://127.0.0.1:{closed_port()}"
    before = state(loop, party)
    a = raw_for(world, party).post_json("/exchange", {"session": sid, "kind": "negotiate", "body": body})
    if a.status == 400:                                          # NaN, a lone surrogate: not JSON to begin with
        assert_refusal(a)
        assert settled(loop, party, before) == before
        return
    assert a.status == 202, a.body
    after = settled(loop, party, before)
    assert after["queues"] == before["queues"] and after["tasks"] == 0 and after["archive"] == before["archive"]
    assert party.outcomes[sid].status == "no-exchange"          # refused (its refusal found nobody to take it)
    again = raw_for(world, party).post_json("/exchange", {"session": sid, "kind": "propose", "body": {}})
    assert_refusal(again, 404)                                   # the run is over: later messages are refused


def test_a_flood_of_dropped_negotiations_does_not_lock_the_party_out(world: World, party: Party, loop: LoopThread,
                                                                    ttp: RunningTtp, tmp_path: Path,
                                                                    fresh_images: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """More dropped negotiations than the party keeps runs open (limit lowered to 16 for the test), then
    a real purchase: the party must still take it and complete."""
    monkeypatch.setattr(wire, "MAX_RUNS", 16)
    raw = raw_for(world, party)
    for i in range(40):
        a = raw.post_json("/exchange", {"session": f"{i:032x}", "kind": "negotiate", "body": {"reply_to": "x"}})
        assert a.status == 202, a.body
    protocol_level_refusals(raw, "/exchange")
    c = cards(world, tmp_path / "cards", fresh_images)
    deal = purchase(world, c)

    async def buy() -> tuple[Any, Any]:
        seller = make_party(world, "seller", tmp_path, seller_managers(world, c), ttp.url, step_timeout=5.0)
        await seller.start()
        try:
            party.plans.append(deal.plan)
            o = await seller.originate(party.url, deal.offer, deal.want, fair=deal.fair)
            r = await party.wait_outcome(o.session, 15)
            return o, r
        finally:
            await seller.stop()
            seller.close()
    balance = c.balance()
    o, r = loop.run(buy(), 60)
    assert (o.status, r.status) == ("completed", "completed"), (o.as_dict(), r.as_dict())
    assert c.balance() == balance - 500
    raw_again = raw.post_json("/exchange", {"session": r.session, "kind": "item", "body": {}})
    assert_refusal(raw_again, 404)
