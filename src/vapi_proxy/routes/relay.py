"""Relay a streamed (SSE) reply from Vapi to the client as it arrives.

Each chunk is written the moment it is read, unchanged (no re-framing, no buffering: the
`X-Accel-Buffering: no` and `Cache-Control: no-cache` headers ask proxies in front to do the
same). Ids are picked out of the events after they have been passed on, so watching them costs
the client nothing. A client that leaves closes the upstream stream at once; an upstream that
stalls past the idle timeout or breaks off ends the stream with an error event in the client's
own format, then the stream ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Literal

import orjson
from starlette.types import Receive, Send

from vapi_proxy.errors import UpstreamError, envelope

SseFormat = Literal["chat", "responses"]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_MAX_PENDING = 64 * 1024  # bytes of an unfinished event kept while looking for ids


class IdWatcher:
    """Finds the chat id (and session id) in SSE events as they pass.

    `/chat` events carry `{"id", "sessionId"?}` on every delta; `/chat/responses` events carry
    it only in the last one, `response.completed` (`response.id`; Vapi's spec has no
    `response.created`). Once found, the rest of the stream is not parsed at all.
    """

    __slots__ = ("_pending", "chat_id", "done", "session_id")

    def __init__(self) -> None:
        self._pending = b""
        self.chat_id: str | None = None
        self.session_id: str | None = None
        self.done = False

    def feed(self, chunk: bytes) -> bool:
        """Look at a chunk; True when the chat id was found in it."""
        if self.done:
            return False
        data = self._pending + chunk
        *events, rest = data.replace(b"\r\n", b"\n").split(b"\n\n")
        self._pending = rest if len(rest) <= _MAX_PENDING else b""
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and b'"id"' in line:
                    self._look(line[5:].strip())
                    if self.done:
                        return True
        return False

    def _look(self, raw: bytes) -> None:
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(payload, dict):
            return
        response = payload.get("response")
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            self.chat_id = response["id"]
        elif isinstance(payload.get("id"), str) and "type" not in payload:
            self.chat_id = payload["id"]
        session = payload.get("sessionId")
        if isinstance(session, str):
            self.session_id = session
        self.done = self.chat_id is not None


def error_event(fmt: SseFormat, error: UpstreamError, request_id: str, sequence: int) -> bytes:
    """The event that tells the client its stream failed, in the format it already parses."""
    if fmt == "responses":
        # OpenAI Responses `error` event (Vapi's spec lists the same shape).
        payload = {
            "type": "error",
            "code": "upstream_timeout" if error.status_code == 504 else "upstream_error",
            "message": str(error),
            "param": None,
            "sequence_number": sequence,
        }
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
    body = envelope(error.status_code, error.message, request_id)
    return b"data: " + orjson.dumps({"error": body}) + b"\n\n"


async def _client_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_until_client_leaves(work: Coroutine[Any, Any, None], receive: Receive) -> bool:
    """Run `work` (which answers the request) until it ends or the client disconnects, then
    cancel it, so whatever it holds open upstream is closed at once, whether the client left
    while Vapi was still to answer or mid-stream. True when the client left first; `work`'s
    own exception is raised."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_client_gone(receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)
    if task.cancelled():
        return True
    error = task.exception()
    if error is not None:
        raise error
    return False


class SseRelay:
    """Copies `chunks` to the client as SSE.

    `on_output` is called with the first bytes from upstream (before they are passed on);
    `on_id` is started (not awaited) as soon as the chat id is seen, so recording it never holds
    an event back; `finish(watcher, completed)` runs after the last byte from upstream (or when
    the relay is cancelled because the client left) and, when the client is still there, before
    its stream is closed, so a chat recorded there can be continued as soon as the client sees
    the end. Run it under `run_until_client_leaves`.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        fmt: SseFormat,
        request_id: str,
        on_id: Callable[[IdWatcher], Awaitable[None]],
        finish: Callable[[IdWatcher, bool], Awaitable[None]],
        headers: list[tuple[bytes, bytes]] | None = None,
        on_output: Callable[[], None] | None = None,
    ) -> None:
        self._chunks = chunks
        self._fmt = fmt
        self._request_id = request_id
        self._on_id = on_id
        self._finish = finish
        self._on_output = on_output
        self._headers = [*SSE_HEADERS, *(headers or [])]
        self._recorder: asyncio.Task[None] | None = None
        self.watcher = IdWatcher()
        self.completed = False

    async def run(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        try:
            await self._pump(send)
        finally:
            # Also on cancellation: the chat id seen so far is recorded and the turn settled.
            if self._recorder is not None:
                await asyncio.gather(self._recorder, return_exceptions=True)
            await self._finish(self.watcher, self.completed)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        watcher = self.watcher
        events = 0
        try:
            async for chunk in self._chunks:
                if events == 0 and self._on_output is not None:
                    self._on_output()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                events += chunk.count(b"\n\n")
                if watcher.feed(chunk):
                    self._recorder = asyncio.ensure_future(self._on_id(watcher))
            self.completed = True
        except UpstreamError as exc:
            event = error_event(self._fmt, exc, self._request_id, events)
            await send({"type": "http.response.body", "body": event, "more_body": True})
