from __future__ import annotations

import asyncio
import time

from avatar.clock import FakeClock, SessionClock


async def test_session_clock_is_monotonic_and_sleeps_to_a_deadline() -> None:
    clock = SessionClock()
    start = clock.now_s()
    assert abs(start - time.monotonic()) < 0.01
    await clock.sleep_until(start + 0.05)
    assert clock.now_s() - start >= 0.049
    before = clock.now_s()
    await clock.sleep_until(before - 1.0)  # in the past: returns at once
    assert clock.now_s() - before < 0.01


async def test_fake_clock_moves_only_when_told_and_wakes_in_order() -> None:
    clock = FakeClock(start_s=10.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, t: float) -> None:
        await clock.sleep_until(t)
        woke.append((name, clock.now_s()))

    tasks = [asyncio.create_task(sleeper(n, t)) for n, t in (("c", 10.3), ("a", 10.1), ("b", 10.2), ("b2", 10.2))]
    await asyncio.sleep(0)
    assert clock.sleepers == 4
    await asyncio.sleep(0.01)
    assert woke == [] and clock.now_s() == 10.0
    await clock.advance(0.25)
    assert woke == [("a", 10.1), ("b", 10.2), ("b2", 10.2)]
    assert clock.now_s() == 10.25
    await clock.advance_to(11.0)
    assert woke[-1] == ("c", 10.3)
    await asyncio.gather(*tasks)


async def test_fake_clock_serves_sleepers_that_sleep_again_within_one_advance() -> None:
    clock = FakeClock()
    ticks: list[float] = []

    async def ticker() -> None:
        t = 0.0
        while True:
            t += 0.1
            await clock.sleep_until(t)
            ticks.append(round(clock.now_s(), 6))

    task = asyncio.create_task(ticker())
    await clock.advance(0.55)
    assert ticks == [0.1, 0.2, 0.3, 0.4, 0.5]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await clock.advance(1.0)  # the cancelled sleeper is skipped
    assert clock.sleepers == 0


async def test_fake_clock_jump_does_not_wake_anyone() -> None:
    clock = FakeClock()
    woke = asyncio.Event()

    async def sleeper() -> None:
        await clock.sleep_until(1.0)
        woke.set()

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0)
    clock.jump(5.0)
    await asyncio.sleep(0.01)
    assert not woke.is_set() and clock.now_s() == 5.0
    await clock.advance(0)
    assert woke.is_set()
    await task
