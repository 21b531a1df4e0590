"""Where the shop's card payment steps run (``shop_http.LoopSteps``): on the event loop while slow steps
stay within their allowance, in the worker pool for a while once they spend it.

Why it matters both ways: a step on the loop holds every request of its worker, so steps that are slow
for good (a PSAM on a real smartcard, a device restarting, a proof cleared at the acquirer) must leave the
loop, and whoever makes steps slow may hold it for at most the allowance in each window; but a step that
is slow once (a cold worker's first orders, a garbage collection) must not send the next few hundred
steps to the pool, where each costs the shop more CPU (docs/performance.md)."""
from __future__ import annotations

from semper.client.servers.shop_http import (
    ADMIT_WAIT,
    LOOP_STEP_BUDGET,
    POOL_AT_LEAST,
    ROOM_RETRY_MAX,
    SLOW_ALLOWANCE,
    SLOW_WINDOW,
    LoopSteps,
    room_retry_delays,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quick_steps_and_spaced_hiccups_stay_on_the_loop() -> None:
    clock = Clock()
    steps = LoopSteps(clock)
    hiccup = 0.056                              # the one the bench met among a cold worker's first orders
    for _ in range(100):
        assert steps.took(LOOP_STEP_BUDGET / 10) == 0.0
        clock.now += 0.01
    for _ in range(20):                         # one hiccup per window, far below the allowance
        assert steps.took(hiccup) == 0.0 and steps.on_loop()
        clock.now += SLOW_WINDOW
    assert steps.on_loop()


def test_slow_steps_that_spend_the_allowance_send_the_next_ones_to_the_pool_for_a_while() -> None:
    clock = Clock()
    steps = LoopSteps(clock)
    slow = LOOP_STEP_BUDGET * 2                 # a PSAM on a real card: every step this slow
    held, pause = 0.0, 0.0
    while not pause:
        pause = steps.took(slow)
        held += slow
        clock.now += 0.01
    assert SLOW_ALLOWANCE < held <= SLOW_ALLOWANCE + slow
    assert pause == max(POOL_AT_LEAST, 10 * slow) and not steps.on_loop()
    clock.now += pause
    assert steps.on_loop()                      # then one is tried on the loop again
    assert steps.took(slow) == 0.0              # the allowance starts afresh


def test_one_step_longer_than_the_allowance_goes_to_the_pool_at_once() -> None:
    clock = Clock()
    steps = LoopSteps(clock)
    assert steps.took(15.0) == 150.0 and not steps.on_loop()   # a PSAM device restarting


def test_whoever_makes_steps_slow_holds_the_loop_at_most_the_allowance_in_a_window() -> None:
    """An attacker who can make card steps slow (just under the budget's double, spaced to dodge a
    count) still gets at most the allowance of loop time in any window, plus the step that spends it."""
    clock = Clock()
    steps = LoopSteps(clock)
    ended: list[tuple[float, float]] = []       # (when, how long) of the slow steps that ran on the loop
    for _ in range(2000):
        if steps.on_loop():
            took = LOOP_STEP_BUDGET * 1.9
            clock.now += took
            steps.took(took)
            ended.append((clock.now, took))
        clock.now += 0.2
    for when, _ in ended:
        inside = sum(t for w, t in ended if when - SLOW_WINDOW < w <= when)
        assert inside <= SLOW_ALLOWANCE + LOOP_STEP_BUDGET * 1.9, (when, inside)
    assert ended, "no step ran on the loop at all"


def test_a_payment_waiting_for_room_asks_less_and_less_often() -> None:
    """Each attempt of a payment waiting for PSAM room is event-loop work (about 40 µs): at one every 5 ms,
    a few hundred waiting requests took the whole loop (review of 2026-12-07). Backing off, one waiting
    request asks at most about a hundred times in its 10 s, and still soon after room frees."""
    delays = room_retry_delays()
    waited, attempts, first = 0.0, 1, []
    while waited < ADMIT_WAIT:
        d = next(delays)
        if len(first) < 4:
            first.append(d)
        waited += d
        attempts += 1
    assert sum(first) <= 0.08, first             # the first four retries within 80 ms
    assert attempts <= ADMIT_WAIT / ROOM_RETRY_MAX + 10, attempts
    assert max(next(delays) for _ in range(50)) == ROOM_RETRY_MAX
