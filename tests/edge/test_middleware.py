"""The edge's own bookkeeping: a request is counted before its client can read the reply."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from vapi_proxy.edge.middleware import CorsPolicy, EdgeMiddleware
from vapi_proxy.metrics import Metrics

LABELS = {"route": "unmatched", "method": "POST", "status": "401", "profile": ""}


async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_request_is_counted_before_its_response_leaves() -> None:
    # Counted only after the last byte was sent, a scrape made as soon as the client had its
    # reply could miss it (issue 13 §11: every event counts on every scrape).
    metrics = Metrics()
    edge = EdgeMiddleware(refuse, cors=CorsPolicy([], 600), access_log=False, metrics=metrics)
    at_start: list[float | None] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            at_start.append(metrics.registry.get_sample_value("vapi_proxy_requests_total", LABELS))

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/somewhere",
        "raw_path": b"/somewhere",
        "headers": [],
        "query_string": b"",
        "client": ("127.0.0.1", 5000),
    }
    asyncio.run(edge(scope, receive, send))
    assert at_start == [1.0]
    timed = metrics.registry.get_sample_value(
        "vapi_proxy_request_duration_seconds_count", {"route": "unmatched"}
    )
    assert timed == 1.0


def _run(edge: EdgeMiddleware, cancel_first: bool = False) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/call/web",
        "raw_path": b"/call/web",
        "headers": [],
        "query_string": b"",
        "client": ("127.0.0.1", 5000),
    }

    async def main() -> None:
        task = asyncio.ensure_future(edge(scope, receive, send))
        if cancel_first:
            await asyncio.sleep(0)  # the app is waiting now
            task.cancel()
        await task

    asyncio.run(main())
    return sent


def test_a_stray_cancellation_is_answered_with_the_envelope() -> None:
    # A library that leaks a CancelledError into a request nobody cancelled (aiohttp 3.9.0 did,
    # after a timeout) used to reach the server, which answered plain "Internal Server Error".
    async def leaks(scope: Scope, receive: Receive, send: Send) -> None:
        raise asyncio.CancelledError

    sent = _run(EdgeMiddleware(leaks, cors=CorsPolicy([], 600), access_log=False))
    assert sent[0]["status"] == 500
    body = orjson.loads(sent[1]["body"])
    assert body["statusCode"] == 500
    assert body["requestId"] in body["message"]


def test_a_real_cancellation_still_propagates() -> None:
    async def waits(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.Event().wait()

    edge = EdgeMiddleware(waits, cors=CorsPolicy([], 600), access_log=False)
    with pytest.raises(asyncio.CancelledError):
        _run(edge, cancel_first=True)
