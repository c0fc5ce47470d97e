"""The Vapi client cuts the private key out of every reply it reads, buffered or streamed, so
the refusal judge, the logs and the console never need the key to redact it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from vapi_proxy.upstream.client import UpstreamClient
from vapi_proxy.upstream.replies import judge

KEY = "dummy-private-key-0b6c8d1e"


@pytest.fixture
async def echoing_vapi() -> AsyncIterator[str]:
    """Loopback server that refuses every request quoting the credential it was sent."""

    async def refuse(request: web.Request) -> web.Response:
        quoted = request.headers.get("Authorization", "")
        return web.json_response(
            {"message": f"Invalid key {quoted}", "error": "Not Found", "statusCode": 404},
            status=404,
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_reply_quoting_the_key_comes_back_redacted(echoing_vapi: str) -> None:
    client = UpstreamClient(echoing_vapi, lambda: KEY)
    await client.start()
    try:
        buffered = await client.request("GET", "/call/c1")
        async with client.stream("POST", "/chat", b"{}") as stream:
            streamed = await stream.read()
    finally:
        await client.aclose()
    for reply in (buffered, streamed):
        assert reply.status == 404
        assert KEY.encode() not in reply.body
        assert judge(reply, request_id="r").detail == "Invalid key Bearer [redacted]"
