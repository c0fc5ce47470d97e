"""What Vapi answered, and the one place the connection's failures (wire.py) become the proxy's
`UpstreamError`s, for buffered and streamed requests alike (each told to the metrics observer)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from vapi_proxy.errors import UpstreamError
from vapi_proxy.upstream.wire import ConnectFailedError

Observer = Callable[[str, float | None, str | None], None]
"""Told (endpoint template, seconds or None, error kind or None): the metrics. `None` seconds is
a failure after the request was timed (a stream breaking off), counted but not timed again."""


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str
    retry_after: str | None
    elapsed_ms: float
    endpoint: str = ""
    """Vapi's endpoint as a template (`/call/{id}`): says which request this answers."""


_ID_SEGMENT = re.compile(r"/[^/]*\d[^/]*(?=/|$)")


def endpoint_label(path: str) -> str:
    """`/call/0193…` → `/call/{id}`: ids never become metric labels."""
    label = _FIXED_LABELS.get(path)
    if label is None:
        label = _ID_SEGMENT.sub("/{id}", path.split("?", 1)[0])
    return label


_FIXED_LABELS = {
    path: _ID_SEGMENT.sub("/{id}", path)
    for path in (
        "/call",
        "/call/web",
        "/chat",
        "/chat/responses",
        "/chat/web",
        "/chat/web/responses",
    )
}
"""The paths without ids that every creation uses, labelled once (no regex per request)."""


def status_kind(status: int) -> str | None:
    """The error kind a reply's status counts as (None for a success)."""
    if status < 400:
        return None
    if status in (401, 403):
        return "key_rejected"
    if status == 429:
        return "status_429"
    return "status_4xx" if status < 500 else "status_5xx"


Phase = Literal["request", "body", "stream"]
"""Where a request failed: before its reply was observed (`request`: timed), reading a body
after the headers were observed (`body`), or relaying a stream (`stream`: the reply broke off)."""


class mapped_errors:  # lower case: used like the function it replaced
    """The connection's (and the socket's) errors become the proxy's 502/504, each observed once.

    A class rather than a generator-based context manager: it is entered twice per request."""

    __slots__ = ("endpoint", "observer", "phase", "started")

    def __init__(
        self, endpoint: str, started: float, observer: Observer | None, phase: Phase = "request"
    ) -> None:
        self.endpoint = endpoint
        self.started = started
        self.observer = observer
        self.phase = phase

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        if exc is None:
            return False
        mid_stream = self.phase == "stream"
        if isinstance(exc, ConnectFailedError):
            self._observe("connect")
            raise UpstreamError("Could not reach Vapi. Try again later.") from exc
        if isinstance(exc, TimeoutError):
            self._observe("timeout")
            message = (
                "Vapi stopped sending the reply (timed out)."
                if mid_stream
                else "Vapi did not answer in time. Try again later."
            )
            raise UpstreamError(message, status_code=504, maybe_sent=True) from exc
        if isinstance(exc, OSError):
            # A reset socket (ConnectionResetError) or a reply that broke the protocol.
            self._observe("disconnect")
            message = (
                "The connection to Vapi broke off mid-reply."
                if mid_stream
                else "The connection to Vapi failed. Try again later."
            )
            raise UpstreamError(message, maybe_sent=True) from exc
        return False

    def _observe(self, kind: str) -> None:
        if self.observer is not None:
            seconds = time.perf_counter() - self.started if self.phase == "request" else None
            self.observer(self.endpoint, seconds, kind)
