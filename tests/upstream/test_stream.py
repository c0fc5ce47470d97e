"""The upstream boundary for streamed replies: a stream that breaks off after its headers is an
`UpstreamError` the relay turns into the client's error event, and it reaches the metrics like
a buffered request's failure does (one error counted, the request not timed twice)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from vapi_proxy.errors import UpstreamError
from vapi_proxy.upstream.client import UpstreamClient
from vapi_proxy.upstream.response import mapped_errors

Seen = list[tuple[str, float | None, str | None]]


@pytest.fixture
async def breaking_server() -> AsyncIterator[str]:
    """Loopback server whose `/chat` sends SSE headers and one event, then drops the socket."""

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"id": "c1"}\n\n')
        assert request.transport is not None
        request.transport.abort()
        return response

    app = web.Application()
    app.router.add_post("/chat", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_stream_that_breaks_off_is_an_upstream_error_the_metrics_count(
    breaking_server: str,
) -> None:
    seen: Seen = []
    client = UpstreamClient(
        breaking_server, lambda: "dummy-key", observer=lambda *a: seen.append(a)
    )

    async def relay() -> None:
        async with client.stream("POST", "/chat", b"{}", idle_timeout=5) as stream:
            assert stream.status == 200
            async for _ in stream.chunks():
                await asyncio.sleep(0)

    await client.start()
    try:
        with pytest.raises(UpstreamError) as raised:
            await relay()
    finally:
        await client.aclose()
    assert raised.value.status_code == 502 and raised.value.maybe_sent
    assert raised.value.message == "The connection to Vapi broke off mid-reply."
    # The headers were timed once; the break is counted as an error without a second timing.
    assert seen[0][0] == "/chat" and seen[0][1] is not None and seen[0][2] is None
    assert seen[1:] == [("/chat", None, "disconnect")]


@pytest.mark.parametrize(
    ("error", "phase", "status", "kind", "timed"),
    [
        (ConnectionResetError(104, "reset"), "stream", 502, "disconnect", False),
        (OSError(32, "broken pipe"), "body", 502, "disconnect", False),
        (ConnectionResetError(104, "reset"), "request", 502, "disconnect", True),
        (TimeoutError(), "stream", 504, "timeout", False),
        (TimeoutError(), "request", 504, "timeout", True),
    ],
)
def test_library_and_socket_errors_are_mapped_in_one_place(
    error: Exception, phase: str, status: int, kind: str, timed: bool
) -> None:
    seen: Seen = []

    def fail() -> None:
        with mapped_errors("/chat", 0.0, lambda *a: seen.append(a), phase):  # type: ignore[arg-type]
            raise error

    with pytest.raises(UpstreamError) as raised:
        fail()
    assert raised.value.status_code == status and raised.value.maybe_sent
    assert raised.value.__cause__ is error
    assert len(seen) == 1 and seen[0][0] == "/chat" and seen[0][2] == kind
    assert (seen[0][1] is not None) is timed
