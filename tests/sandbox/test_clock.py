"""ManualClock: waiters wake exactly when advanced past their time, from any thread."""

from __future__ import annotations

import asyncio
import threading

from vapi_proxy.sandbox import ManualClock


async def test_sleep_until_wakes_only_when_due() -> None:
    clock = ManualClock(start=100.0)
    waiter = asyncio.ensure_future(clock.sleep_until(105.0))
    await asyncio.sleep(0)
    clock.advance(4.0)
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.advance(1.0)
    await asyncio.wait_for(waiter, timeout=1)
    assert clock.now() == 105.0


async def test_past_deadline_returns_at_once() -> None:
    clock = ManualClock(start=10.0)
    await asyncio.wait_for(clock.sleep_until(5.0), timeout=1)


async def test_advance_from_another_thread() -> None:
    clock = ManualClock()
    waiter = asyncio.ensure_future(clock.sleep_until(clock.now() + 1))
    await asyncio.sleep(0)
    thread = threading.Thread(target=clock.advance, args=(2.0,))
    thread.start()
    thread.join(timeout=5)
    await asyncio.wait_for(waiter, timeout=1)


def test_advance_after_the_loop_closed_is_harmless() -> None:
    clock = ManualClock()
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(clock.sleep_until(clock.now() + 1))
        loop.run_until_complete(asyncio.sleep(0))
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    finally:
        loop.close()
    clock.advance(5)  # must not raise "Event loop is closed"


async def test_pending_lists_the_times_waited_for() -> None:
    clock = ManualClock(start=0.0)
    late = asyncio.ensure_future(clock.sleep_until(5.0))
    soon = asyncio.ensure_future(clock.sleep_until(2.0))
    await asyncio.sleep(0)
    assert clock.pending() == [2.0, 5.0]
    clock.advance(2.0)
    await asyncio.wait_for(soon, timeout=1)
    assert clock.pending() == [5.0]
    late.cancel()  # a waiter that gave up is no longer waiting
    await asyncio.sleep(0)
    assert clock.pending() == []
