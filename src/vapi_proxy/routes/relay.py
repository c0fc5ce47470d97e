"""Relay a streamed (SSE) reply from Vapi to the client as it arrives.

Each event is written the moment its last byte is read (nothing is held back but the unfinished
event, and the `X-Accel-Buffering: no` and `Cache-Control: no-cache` headers ask proxies in front
to do the same). A JSON event is passed through the profile's allowlist (policy/reply.py) and
re-encoded as one `data:` line; other events (`data: [DONE]`, comments) pass unchanged. Ids are
picked out of the events as they pass. A client that leaves closes the upstream stream at once;
an upstream that stalls past the idle timeout or breaks off ends the stream with an error event
in the client's own format, then the stream ends.
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
Transform = Callable[[dict[str, Any]], dict[str, Any]]
"""Rewrites one JSON event's payload (the allowlist scrub) before it is passed on."""


class SseEvents:
    """Splits a byte stream into whole SSE events (RFC: a blank line ends one; `\n`, `\r\n` or
    `\r` end lines), holding back at most one unfinished event of up to `max_bytes`."""

    __slots__ = ("_max", "_pending")

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self._pending = b""
        self._max = max_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events completed by `chunk`, each without its terminating blank line."""
        data = self._pending + chunk
        # A `\r` at the very end may be the first half of a `\r\n` split across chunks.
        held = b"\r" if data.endswith(b"\r") else b""
        if held:
            data = data[:-1]
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, rest = data.split(b"\n\n")
        self._pending = rest + held
        if len(self._pending) > self._max:
            self._pending = b""
            raise UpstreamError("An event in Vapi's stream was larger than the proxy accepts.")
        return events

    def rest(self) -> bytes:
        """What is left unfinished when the stream ends (normalised), and forget it."""
        rest, self._pending = self._pending, b""
        return rest.replace(b"\r\n", b"\n").replace(b"\r", b"\n").strip(b"\n")


def _data_of(event: bytes) -> tuple[list[bytes], int, bytes | None]:
    """(the event's other lines, where its data went, its joined `data:` value or None)."""
    lines: list[bytes] = []
    data: list[bytes] = []
    at = -1
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
            if at < 0:
                at = len(lines)
        else:
            lines.append(line)
    return lines, at, (b"\n".join(data) if data else None)


def rewrite(event: bytes, transform: Transform | None) -> tuple[bytes, dict[str, Any] | None]:
    """One event, its JSON payload passed through `transform` (re-encoded as one `data:`
    line); events without JSON data (`data: [DONE]`, comments) pass unchanged, and JSON that is
    not an object (which no allowlist can describe) is not passed on. Returns the bytes to send
    (with the terminating blank line) and the original payload, if any."""
    lines, at, data = _data_of(event)
    if data is None:
        return event + b"\n\n", None
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return event + b"\n\n", None
    if transform is None:
        return event + b"\n\n", payload if isinstance(payload, dict) else None
    if not isinstance(payload, dict):
        return b"", None
    lines.insert(at, b"data: " + orjson.dumps(transform(payload)))
    return b"\n".join(lines) + b"\n\n", payload


class IdWatcher:
    """Finds the chat id (and session id) in SSE events as they pass.

    `/chat` events carry `{"id", "sessionId"?}` on every delta; `/chat/responses` events carry
    it only in the last one, `response.completed` (`response.id`; Vapi's spec has no
    `response.created`). Once found, nothing more is looked at.
    """

    __slots__ = ("_events", "chat_id", "done", "session_id")

    def __init__(self) -> None:
        self._events = SseEvents()
        self.chat_id: str | None = None
        self.session_id: str | None = None
        self.done = False

    def feed(self, chunk: bytes) -> bool:
        """Look at raw bytes (when not relaying event by event); True when the id was found."""
        if self.done:
            return False
        try:
            events = self._events.feed(chunk)
        except UpstreamError:
            return False
        for event in events:
            _, payload = rewrite(event, None)
            if payload is not None and self.see(payload):
                return True
        return False

    def see(self, payload: dict[str, Any]) -> bool:
        """Look at one event's payload; True when it brought the chat id."""
        if self.done:
            return False
        response = payload.get("response")
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            self.chat_id = response["id"]
        elif isinstance(payload.get("id"), str) and "type" not in payload:
            self.chat_id = payload["id"]
        session = payload.get("sessionId")
        if isinstance(session, str):
            self.session_id = session
        self.done = self.chat_id is not None
        return self.done


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


class _ClientWatch:
    """Cancels `task` when the client disconnects (at most once)."""

    __slots__ = ("left", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.left = False

    async def run(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.left = True
        self.task.cancel()


async def run_until_client_leaves(work: Coroutine[Any, Any, None], receive: Receive) -> bool:
    """Run `work` (which answers the request) until it ends or the client disconnects, then
    cancel it, so whatever it holds open upstream is closed at once, whether the client left
    while Vapi was still to answer or mid-stream. True when the client left first; `work`'s
    own exception is raised.

    `work` runs in the caller's own task, at once: only the watcher is a task of its own, and
    it starts while the request to Vapi is in flight, so nothing is scheduled (and no turn of
    the event loop is waited for) before that request leaves."""
    current = asyncio.current_task()
    if current is None:  # pragma: no cover - always called from a task
        raise RuntimeError("run_until_client_leaves() needs a running task")
    watch = _ClientWatch(current)
    watcher = asyncio.ensure_future(watch.run(receive))
    try:
        await work
    except asyncio.CancelledError:
        if not watch.left:
            raise  # cancelled from outside (the server stopping): not ours to swallow
    finally:
        watcher.cancel()
        if watch.left:
            current.uncancel()  # the watcher's own cancellation, handled here
    return watch.left


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
        transform: Transform | None = None,
        max_event_bytes: int = 1 << 20,
    ) -> None:
        self._chunks = chunks
        self._fmt = fmt
        self._request_id = request_id
        self._on_id = on_id
        self._finish = finish
        self._on_output = on_output
        self._transform = transform
        self._max_event = max_event_bytes
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
        splitter = SseEvents(self._max_event)
        events = 0
        try:
            async for chunk in self._chunks:
                if events == 0 and self._on_output is not None:
                    self._on_output()
                # Whole events are passed on the moment their last byte arrives; only an
                # unfinished one waits for the rest of itself.
                out = []
                found = False
                for event in splitter.feed(chunk):
                    data, payload = rewrite(event, self._transform)
                    if data:
                        out.append(data)
                    if payload is not None and watcher.see(payload):
                        found = True
                try:
                    if out:
                        body = b"".join(out)
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                        events += len(out)
                finally:
                    if found:  # started once the events that brought it are on their way
                        self._recorder = asyncio.ensure_future(self._on_id(watcher))
            last = splitter.rest()
            if last:  # Vapi ended without the final blank line: pass on what it sent
                data, payload = rewrite(last, self._transform)
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                if payload is not None and watcher.see(payload):
                    self._recorder = asyncio.ensure_future(self._on_id(watcher))
            self.completed = True
        except UpstreamError as exc:
            event = error_event(self._fmt, exc, self._request_id, events)
            await send({"type": "http.response.body", "body": event, "more_body": True})
