"""The request log behind `GET /__sandbox/requests`: a bounded ring buffer, keys redacted.

The bearer value is replaced by which credential it was (`private-key`, `public-key`, a JWT...),
so tests can check a proxy used the right key without the key ever being stored.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class RequestRecorder:
    def __init__(self, *, enabled: bool, size: int) -> None:
        self.enabled = enabled
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)

    def record(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: Any,
        caller: str | None,
        at: float,
    ) -> None:
        if not self.enabled:
            return
        shown = dict(headers)
        if "authorization" in shown:
            shown["authorization"] = f"Bearer [redacted: {caller or 'invalid'}]"
        self._entries.append(
            {
                "method": method,
                "path": path,
                "query": query,
                "headers": shown,
                "auth": caller,
                "body": body,
                "at": at,
            }
        )

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
