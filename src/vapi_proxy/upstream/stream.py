"""One streamed reply from Vapi (SSE): its status, and its bytes as they arrive.

Handed out by `UpstreamClient.stream()`, which owns the connection (`upstream/wire.py`): leaving
its `async with` before the end of the body closes the connection, so Vapi sees the client leave
at once. Failures are mapped by `response.mapped_errors`, the same boundary as buffered requests
(and so reach the metrics): a silence longer than the idle timeout becomes a 504
`UpstreamError`, a broken connection (a reset socket included) a 502 one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from vapi_proxy.errors import UpstreamError
from vapi_proxy.upstream.response import Observer, UpstreamResponse, mapped_errors
from vapi_proxy.upstream.wire import Connection


class UpstreamStream:
    """Vapi's reply to a streaming request; iterate `chunks()` for the body as it arrives."""

    def __init__(
        self,
        conn: Connection,
        *,
        started: float,
        max_response_bytes: int,
        idle_timeout: float | None = None,
        endpoint: str = "",
        observer: Observer | None = None,
        redact: Callable[[bytes], bytes] = bytes,
    ) -> None:
        self._conn = conn
        self._redact = redact
        self._observer = observer
        self.endpoint = endpoint
        self._started = started
        self._max = max_response_bytes
        self._idle = idle_timeout
        self.status = conn.status
        headers = conn.headers
        self.content_type = headers.get(b"content-type", b"").decode("latin-1")
        retry_after = headers.get(b"retry-after")
        self.retry_after = None if retry_after is None else retry_after.decode("latin-1")
        self.elapsed_ms = (time.perf_counter() - started) * 1000

    @property
    def is_sse(self) -> bool:
        return self.content_type.split(";", 1)[0].strip().lower() == "text/event-stream"

    async def read(self) -> UpstreamResponse:
        """Read a (bounded) non-streamed body: an error, or JSON when Vapi did not stream."""
        conn, parts, size = self._conn, [], 0
        with mapped_errors(self.endpoint, self._started, self._observer, "body"):
            while chunk := await conn.chunk(self._idle):
                size += len(chunk)
                if size > self._max:
                    raise UpstreamError(
                        "Vapi's reply was larger than the proxy accepts.", maybe_sent=True
                    )
                parts.append(chunk)
        return UpstreamResponse(
            status=self.status,
            body=self._redact(b"".join(parts)),
            content_type=self.content_type,
            retry_after=self.retry_after,
            elapsed_ms=(time.perf_counter() - self._started) * 1000,
            endpoint=self.endpoint,
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        """Each chunk as soon as the socket delivers it (never re-framed or held back)."""
        conn, idle = self._conn, self._idle
        while True:
            with mapped_errors(self.endpoint, self._started, self._observer, "stream"):
                chunk = await conn.chunk(idle)
            if not chunk:
                return
            yield chunk

    @property
    def finished(self) -> bool:
        return self._conn.complete
