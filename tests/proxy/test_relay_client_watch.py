"""`run_until_client_leaves`: the work runs in the request's own task, straight away (nothing is
scheduled before the request to Vapi leaves); a client that leaves cancels it; a cancellation
from outside and the work's own errors pass through."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message

from vapi_proxy.routes.relay import run_until_client_leaves


class Client:
    """An ASGI `receive` whose disconnect is sent when the test says so."""

    def __init__(self) -> None:
        self.leave = asyncio.Event()

    async def receive(self) -> Message:
        await self.leave.wait()
        return {"type": "http.disconnect"}


async def test_the_work_runs_in_the_callers_task_before_anything_else_is_scheduled() -> None:
    client = Client()
    seen: list[asyncio.Task[object] | None] = []

    async def work() -> None:
        # No await before this line: the work has started by the time the call returns control.
        seen.append(asyncio.current_task())

    caller = asyncio.current_task()
    assert await run_until_client_leaves(work(), client.receive) is False
    assert seen == [caller]


async def test_a_client_that_leaves_cancels_the_work_and_the_caller_carries_on() -> None:
    client = Client()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def leave_once_started() -> None:
        await started.wait()
        client.leave.set()

    leaving = asyncio.ensure_future(leave_once_started())
    assert await run_until_client_leaves(work(), client.receive) is True
    await leaving
    assert cancelled.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # the caller's task is not cancelled at its next await


async def test_a_cancellation_from_outside_is_not_taken_for_the_client_leaving() -> None:
    client = Client()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(60)

    async def serve() -> bool:
        return await run_until_client_leaves(work(), client.receive)

    serving = asyncio.ensure_future(serve())
    await started.wait()
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving


async def test_the_works_own_error_is_raised() -> None:
    client = Client()

    async def work() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await run_until_client_leaves(work(), client.receive)
