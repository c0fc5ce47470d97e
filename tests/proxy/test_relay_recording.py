"""The relay records a turn's chat id without holding back the events that carry it: the
recording starts once they are sent, and still starts when sending them failed (the client
left), so the id that arrived is the one recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.types import Message

from vapi_proxy.routes.relay import IdWatcher, SseRelay

EVENT = b'data: {"id":"c1","path":"chat.output[0].content","delta":"Hi"}\n\n'


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _relay(order: list[str], recorded: list[str | None]) -> SseRelay:
    async def on_id(watcher: IdWatcher) -> None:
        order.append("recorded")
        recorded.append(watcher.chat_id)

    async def finish(watcher: IdWatcher, completed: bool) -> None:
        order.append("finished")

    return SseRelay(
        _chunks(EVENT, b"data: [DONE]\n\n"),
        fmt="chat",
        request_id="req-1",
        on_id=on_id,
        finish=finish,
    )


async def test_the_id_is_recorded_after_the_event_that_brought_it_is_sent() -> None:
    order: list[str] = []
    recorded: list[str | None] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            await asyncio.sleep(0)  # a send that yields (flow control) lets other tasks run
            order.append("sent")

    await _relay(order, recorded).run(send)
    assert order.index("sent") < order.index("recorded") < order.index("finished")
    assert recorded == ["c1"]


async def test_the_id_is_still_recorded_when_sending_its_event_fails() -> None:
    order: list[str] = []
    recorded: list[str | None] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            raise OSError("the client is gone")

    with pytest.raises(OSError, match="gone"):
        await _relay(order, recorded).run(send)
    assert recorded == ["c1"]
    assert order == ["recorded", "finished"]
