"""Session clocks: one monotonic time base shared by every track of a session.

`SessionClock` reads `time.monotonic()`; `FakeClock` moves only when a test tells it to, and wakes
its sleepers in deadline order, one at a time, so pacing tests are exact and fast.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """What tracks, sessions and the engine need from a clock (seconds, monotonic)."""

    def now_s(self) -> float: ...

    async def sleep_until(self, t_s: float) -> None: ...


class SessionClock:
    """The real clock: `time.monotonic()`; sleeping returns at once when `t_s` has passed."""

    def now_s(self) -> float:
        return time.monotonic()

    async def sleep_until(self, t_s: float) -> None:
        delay = t_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class FakeClock:
    """A clock for tests: time advances only through `advance()` / `advance_to()`.

    Sleepers wake in deadline order (ties in the order they went to sleep); after waking each one the
    clock lets the event loop run until it is quiet, so a woken coroutine can sleep again before the
    next deadline is served, exactly as it would on a real clock.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = float(start_s)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now_s(self) -> float:
        return self._now

    async def sleep_until(self, t_s: float) -> None:
        if t_s <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (t_s, next(self._order), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many coroutines are waiting on this clock."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, dt_s: float) -> None:
        await self.advance_to(self._now + dt_s)

    async def advance_to(self, t_s: float) -> None:
        """Move time to `t_s`, waking every sleeper whose deadline falls on the way, in order."""
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= t_s:
            deadline, _, future = heapq.heappop(self._sleepers)
            if future.done():  # its sleeper was cancelled
                continue
            self._now = max(self._now, deadline)
            future.set_result(None)
            await _settle()
        self._now = max(self._now, t_s)
        await _settle()

    def jump(self, dt_s: float) -> None:
        """Move time forward without waking anyone (a stalled event loop, seen by the next reader)."""
        self._now += dt_s


async def _settle(rounds: int = 20) -> None:
    """Let the event loop run the callbacks that are ready (a few rounds: chains of awaits)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
