"""What of a webhook message the ledger keeps: an allowlist, so new Vapi fields stay out.

By default no transcript, message list, recording or log URL, customer or phone number is
stored; the summary fields of an end-of-call-report (`analysis`, cost, times, reason) are.
`store_transcripts` / `store_recording_urls` opt in to the rest of `artifact`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TOP = frozenset(
    {
        "type",
        "status",
        "endedReason",
        "timestamp",
        "cost",
        "costBreakdown",
        "costs",
        "startedAt",
        "endedAt",
        "durationSeconds",
        "durationMs",
        "durationMinutes",
        "analysis",
    }
)
_CALL = frozenset(
    {"id", "type", "status", "assistantId", "squadId", "workflowId", "phoneNumberId", "orgId"}
)
_TRANSCRIPT = ("transcript", "messages", "messagesOpenAIFormatted")
_RECORDING = (
    "recordingUrl",
    "stereoRecordingUrl",
    "videoRecordingUrl",
    "recording",
    "logUrl",
    "pcapUrl",
)


def ledger_payload(
    message: Mapping[str, Any], *, transcripts: bool = False, recording_urls: bool = False
) -> dict[str, Any]:
    """The part of `message` worth keeping with the event."""
    kept: dict[str, Any] = {k: v for k, v in message.items() if k in _TOP}
    call = message.get("call")
    if isinstance(call, Mapping):
        kept["call"] = {k: v for k, v in call.items() if k in _CALL}
    artifact = message.get("artifact")
    if isinstance(artifact, Mapping) and (transcripts or recording_urls):
        names = (_TRANSCRIPT if transcripts else ()) + (_RECORDING if recording_urls else ())
        slim = {k: artifact[k] for k in names if k in artifact}
        if slim:
            kept["artifact"] = slim
    if transcripts:
        for name in _TRANSCRIPT:
            if name in message:
                kept[name] = message[name]
    return kept
