"""One streamed reply from Vapi (SSE): its status, and its bytes as they arrive.

Handed out by `UpstreamClient.stream()`, which owns the connection: leaving its `async with`
before the end of the body closes the connection, so Vapi sees the client leave at once. Library
errors are mapped by `response.mapped_errors`, the same boundary as buffered requests (and so
reach the metrics): a silence longer than the idle timeout becomes a 504 `UpstreamError`, a
broken connection (a reset socket included) a 502 one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import aiohttp

from vapi_proxy.errors import UpstreamError
from vapi_proxy.upstream.response import Observer, UpstreamResponse, mapped_errors


class UpstreamStream:
    """Vapi's reply to a streaming request; iterate `chunks()` for the body as it arrives."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        started: float,
        max_response_bytes: int,
        endpoint: str = "",
        observer: Observer | None = None,
        redact: Callable[[bytes], bytes] = bytes,
    ) -> None:
        self._response = response
        self._redact = redact
        self._observer = observer
        self.endpoint = endpoint
        self._started = started
        self._max = max_response_bytes
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "")
        self.retry_after = response.headers.get("Retry-After")
        self.elapsed_ms = (time.perf_counter() - started) * 1000

    @property
    def is_sse(self) -> bool:
        return self.content_type.split(";", 1)[0].strip().lower() == "text/event-stream"

    async def read(self) -> UpstreamResponse:
        """Read a (bounded) non-streamed body: an error, or JSON when Vapi did not stream."""
        with mapped_errors(self.endpoint, self._started, self._observer, "body"):
            data = await self._response.content.read(self._max + 1)
        if len(data) > self._max:
            raise UpstreamError("Vapi's reply was larger than the proxy accepts.", maybe_sent=True)
        return UpstreamResponse(
            status=self.status,
            body=self._redact(data),
            content_type=self.content_type,
            retry_after=self.retry_after,
            elapsed_ms=(time.perf_counter() - self._started) * 1000,
            endpoint=self.endpoint,
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        """Each chunk as soon as the socket delivers it (never re-framed or held back)."""
        content = self._response.content
        while True:
            with mapped_errors(self.endpoint, self._started, self._observer, "stream"):
                chunk = await content.readany()
            if not chunk:
                return
            yield chunk

    @property
    def finished(self) -> bool:
        return self._response.content.at_eof()
