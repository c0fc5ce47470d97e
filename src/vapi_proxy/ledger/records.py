"""What the ledger stores and returns: call records, events from Vapi's webhooks, usage rows,
idempotency results and outbox entries — plain values, no I/O."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

# Vapi's call statuses in the order a call moves through them.
STATUS_RANK = {
    "scheduled": 0,
    "queued": 1,
    "ringing": 2,
    "in-progress": 3,
    "forwarding": 4,
    "ended": 5,
}
FINAL_TYPES = {"end-of-call-report"}
PAYLOAD_LIMIT = 16_384  # bytes of raw event kept; transcripts and messages are trimmed first
_TRIM_KEYS = (
    "transcript",
    "messages",
    "messagesOpenAIFormatted",
    "artifact",
    "recordingUrl",
    "stereoRecordingUrl",
    "call",
    "assistant",
    "customer",
    "phoneNumber",
)


def utc_now() -> datetime:
    return datetime.now(UTC)


_DECIMAL = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
MAX_AMOUNT = 1e9
"""No call lasts a billion seconds or costs a billion dollars; past this a value would overflow
the limits store's integer columns (micro-dollars, milliseconds)."""


def _amount(value: Any) -> float | None:
    """A duration or cost from Vapi's message: a finite number in [0, MAX_AMOUNT] (or such a
    number written as plain decimal text), else None. `float()` read `"nan"`, `"inf"` and
    `"-5"`, which then broke or reversed the budget settlement, and raised on anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        value = float(value)
    if not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and 0 <= number <= MAX_AMOUNT else None


def _parse_time(value: Any) -> datetime | None:
    if value in (None, "") or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        # Vapi's `timestamp` is epoch milliseconds.
        try:
            return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
        except (OverflowError, OSError, ValueError):
            return None  # out of datetime's range, or not finite
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class CallRecord:
    id: str
    kind: str
    identity_key: str
    identity_hash: str
    auth_method: str
    tenant: str | None
    profile: str
    request_id: str | None
    created_at: datetime
    status: str
    started_at: datetime | None
    ended_at: datetime | None
    ended_reason: str | None
    duration_seconds: float | None
    cost_usd: float | None
    max_duration_seconds: float | None
    reservation_id: str | None
    summary: str | None
    analysis: Any
    updated_at: datetime
    session_id: str | None = None
    control_url: str | None = None
    """Vapi's `monitor.controlUrl`: server-side only (the console ends calls with it)."""


CALL_FIELDS = [f.name for f in fields(CallRecord)]


def record_from_row(row: Any) -> CallRecord:
    m = row._mapping
    return CallRecord(**{name: m[name] for name in CALL_FIELDS})


class _Message:
    """`LedgerEvent.from_vapi`'s default payload: the message itself."""


_MESSAGE = _Message()


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One webhook message, reduced to what the ledger uses."""

    type: str
    call_id: str | None
    dedupe_key: str
    status: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    ended_reason: str | None = None
    duration_seconds: float | None = None
    cost_usd: float | None = None
    summary: str | None = None
    analysis: Any = None
    payload: Mapping[str, Any] | None = None
    control_url: str | None = None

    @classmethod
    def from_vapi(
        cls,
        message: Mapping[str, Any],
        *,
        dedupe_key: str | None = None,
        payload: Mapping[str, Any] | _Message | None = _MESSAGE,
    ) -> LedgerEvent:
        """From Vapi's webhook `message` object (status-update, end-of-call-report, …).
        `payload`: what to store of it (default: the message itself)."""
        mtype = str(message.get("type", "unknown"))
        call = message.get("call") or {}
        call_id = call.get("id") if isinstance(call, Mapping) else None
        call_id = call_id or message.get("callId") or message.get("chatId")
        status = message.get("status")
        if mtype in FINAL_TYPES:
            status = "ended"
        analysis = message.get("analysis")
        summary = message.get("summary")
        if summary is None and isinstance(analysis, Mapping):
            summary = analysis.get("summary")
        duration = message.get("durationSeconds")
        if dedupe_key is None:
            stamp = message.get("timestamp")
            if stamp is not None:
                dedupe_key = f"{mtype}:{call_id}:{status or ''}:{stamp}"
            else:
                digest = hashlib.sha256(orjson.dumps(message, option=orjson.OPT_SORT_KEYS))
                dedupe_key = f"{mtype}:{call_id}:{digest.hexdigest()[:32]}"
        return cls(
            type=mtype,
            call_id=str(call_id) if call_id else None,
            dedupe_key=dedupe_key[:256],
            status=str(status) if status else None,
            started_at=_parse_time(message.get("startedAt")),
            ended_at=_parse_time(message.get("endedAt")),
            ended_reason=message.get("endedReason"),
            duration_seconds=_amount(duration),
            cost_usd=_amount(message.get("cost")),
            summary=summary if isinstance(summary, str) else None,
            analysis=analysis,
            payload=message if isinstance(payload, _Message) else payload,
            control_url=_control_url(call),
        )


def _control_url(call: Any) -> str | None:
    """`call.monitor.controlUrl` of a webhook message, when it is an http(s) URL."""
    monitor = call.get("monitor") if isinstance(call, Mapping) else None
    url = monitor.get("controlUrl") if isinstance(monitor, Mapping) else None
    if isinstance(url, str) and url.startswith(("https://", "http://")) and len(url) <= 2048:
        return url
    return None


def payload_json(payload: Mapping[str, Any] | None) -> bytes:
    """The event as stored: JSON (orjson's, serialised once), kept small by dropping bulky
    fields (transcripts, nested call objects) if needed. `None` is JSON `null`, as
    SQLAlchemy's JSON column stores it."""
    if payload is None:
        return b"null"
    raw = orjson.dumps(payload, default=str)
    if len(raw) <= PAYLOAD_LIMIT:
        return raw
    slim = {k: v for k, v in payload.items() if k not in _TRIM_KEYS}
    slim["_trimmed"] = sorted(k for k in payload if k in _TRIM_KEYS)
    raw = orjson.dumps(slim, default=str)
    if len(raw) <= PAYLOAD_LIMIT:
        return raw
    return orjson.dumps({"_trimmed": "all", "type": payload.get("type"), "bytes": len(raw)})


def trim_payload(payload: Mapping[str, Any] | None) -> Any:
    """`payload_json` as a value (what a JSON column reads back)."""
    return None if payload is None else orjson.loads(payload_json(payload))


@dataclass(frozen=True, slots=True)
class EventOutcome:
    known: bool
    """The event names a call in the ledger."""
    duplicate: bool
    """Seen before (same dedupe key): nothing was changed."""
    call: CallRecord | None
    ended_now: bool = False
    """This event moved the call to `ended` (time to settle its limits)."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One delivery to make: the app's URL and the exact bytes to send."""

    event_id: str
    target: str
    type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A claimed outbox row; `attempts` counts this one."""

    id: int
    event_id: str
    target: str
    type: str
    body: bytes
    attempts: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class UsageRow:
    identity_key: str
    tenant: str | None
    kind: str
    calls: int
    ended: int
    minutes: float
    cost_usd: float


@dataclass(frozen=True, slots=True)
class IdempotencyResult:
    state: Literal["claimed", "in_progress", "completed", "mismatch"]
    """`claimed`: you are first, do the work then `idempotency_complete`. `in_progress`: another
    request holds the key. `completed`: replay `response_*`. `mismatch`: same key, other body."""
    response_status: int | None = None
    response_body: bytes | None = None


@dataclass(frozen=True, slots=True)
class LedgerHealth:
    ok: bool
    backend: str
    detail: str | None = None
