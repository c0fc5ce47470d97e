"""Time for the simulator: the wall clock, or a manual one tests move by hand.

Call status is derived from `now()` when read; webhook drivers and the pauses between streamed
chat deltas wait with `sleep_until`, so a `ManualClock` drives them without real sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""

    async def sleep_until(self, when: float) -> None:
        """Return once `now() >= when`."""


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        delay = when - time.time()
        if delay > 0:
            await asyncio.sleep(delay)


class ManualClock:
    """A clock that only moves on `advance()`; safe to advance from another thread."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._waiters: list[tuple[float, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def pending(self) -> list[float]:
        """The times someone is waiting for, soonest first: what a test advances to."""
        with self._lock:
            return sorted(when for when, _, fut in self._waiters if not fut.done())

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            due = [w for w in self._waiters if w[0] <= self._now]
            self._waiters = [w for w in self._waiters if w[0] > self._now]
        for _, loop, fut in due:
            if fut.done() or loop.is_closed():
                continue  # the waiter gave up (cancelled) or its server has stopped
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # the loop closed between the check and the call
                continue

    async def sleep_until(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if when <= self._now:
                return
            self._waiters.append((when, loop, fut))
        await fut


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
