"""Calls as the simulator stores them: a creation snapshot plus a timeline read from the clock.

Status is never advanced by timers: `CallRecord.view(now)` derives `status`, `startedAt`,
`endedAt`, `endedReason` and `cost` from the creation time, so thousands of calls cost no tasks.
The creation snapshot is kept as JSON bytes: benchmarks store many calls, and bytes are invisible
to the cyclic garbage collector where nested dicts would make every collection slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from .settings import LifecycleSettings

DEFAULT_MAX_DURATION = 600.0  # Vapi's maxDurationSeconds default (Vapi facts §2.8)
_COST_SPLIT = {"transport": 0.1, "stt": 0.2, "llm": 0.3, "tts": 0.2, "vapi": 0.2}


def iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds, the way Vapi writes timestamps."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True, eq=False)
class CallRecord:
    """One call: what was created, and when each transition happens."""

    id: str
    created: float
    snapshot: bytes  # the Call object at creation (status queued), orjson-encoded
    timeline: list[tuple[float, str]]
    natural_end: float
    natural_reason: str
    cost_per_minute: float
    assistant_id: str | None = None
    phone_number_id: str | None = None
    customer: dict[str, Any] | None = None
    assistant: dict[str, Any] | None = None
    phone_number: dict[str, Any] | None = None
    server: dict[str, Any] | None = None
    forced_end: float | None = None
    forced_reason: str | None = None
    driver_wakeup: Any = field(default=None)  # asyncio.Event of the webhook driver, if any

    @property
    def end(self) -> tuple[float, str]:
        if self.forced_end is not None and self.forced_end < self.natural_end:
            return self.forced_end, self.forced_reason or "customer-ended-call"
        return self.natural_end, self.natural_reason

    def transitions(self) -> list[tuple[float, str, str | None]]:
        """(time, status, endedReason) for every transition after `queued`, ended last."""
        end_at, reason = self.end
        steps: list[tuple[float, str, str | None]] = [
            (t, s, None) for t, s in self.timeline if s != "queued" and t < end_at
        ]
        steps.append((end_at, "ended", reason))
        return steps

    def status_at(self, now: float) -> str:
        end_at, _ = self.end
        if now >= end_at:
            return "ended"
        status = "queued"
        for t, s in self.timeline:
            if t <= now:
                status = s
        return status

    def started_at(self) -> float | None:
        end_at, _ = self.end
        for t, s in self.timeline:
            if s == "in-progress" and t < end_at:
                return t
        return None

    def cost(self) -> float:
        started = self.started_at()
        if started is None:
            return 0.0
        return round((self.end[0] - started) / 60.0 * self.cost_per_minute, 6)

    def cost_breakdown(self) -> dict[str, Any]:
        total = self.cost()
        parts = {k: round(total * share, 6) for k, share in _COST_SPLIT.items()}
        return {**parts, "total": total, "llmPromptTokens": 0, "llmCompletionTokens": 0}

    def view(self, now: float) -> dict[str, Any]:
        """The `Call` object as `GET /call/{id}` shows it at `now`."""
        status = self.status_at(now)
        out: dict[str, Any] = orjson.loads(self.snapshot)
        out["status"] = status
        started = self.started_at()
        if started is not None and now >= started:
            out["startedAt"] = iso(started)
        if status == "ended":
            end_at, reason = self.end
            out["endedAt"] = iso(end_at)
            out["endedReason"] = reason
            out["cost"] = self.cost()
            out["costBreakdown"] = self.cost_breakdown()
            out["updatedAt"] = iso(end_at)
        elif status != "queued":
            out["updatedAt"] = iso(max(t for t, _ in self.timeline if t <= now))
        return out


def plan_timeline(
    created: float, lifecycle: LifecycleSettings, *, phone: bool, max_duration: float
) -> tuple[list[tuple[float, str]], float, str]:
    """Transitions, natural end time and reason for a call created at `created`."""
    timeline = [(created, "queued")]
    if phone:
        ringing = min(lifecycle.ringing_after, lifecycle.in_progress_after)
        timeline.append((created + ringing, "ringing"))
    started = created + lifecycle.in_progress_after
    timeline.append((started, "in-progress"))
    if lifecycle.duration >= max_duration:
        return timeline, started + max_duration, "exceeded-max-duration"
    return timeline, started + lifecycle.duration, "customer-ended-call"


class CallStore:
    """Calls by id, insertion-ordered, bounded: the oldest are forgotten past `limit`."""

    def __init__(self, limit: int) -> None:
        self._calls: dict[str, CallRecord] = {}
        self._limit = limit

    def add(self, call: CallRecord) -> None:
        self._calls[call.id] = call
        if len(self._calls) > self._limit:
            del self._calls[next(iter(self._calls))]

    def get(self, call_id: str) -> CallRecord | None:
        return self._calls.get(call_id)

    def newest_first(self) -> Iterator[CallRecord]:
        return reversed(list(self._calls.values()))

    def __len__(self) -> int:
        return len(self._calls)
