"""Scrub Vapi's reply down to what the client needs, plus what a profile chooses to expose.

The Web SDK reads only `id`, `webCallUrl`, `transport.callToken`,
`artifactPlan.videoRecordingEnabled` and `assistant.voice.provider` (WEB-SDK.md). Everything else
in a Call — notably `monitor.listenUrl`/`controlUrl`, which let anyone listen to or steer the live
call, the resolved prompt and `orgId` — stays on the server unless a profile opts in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SDK_FIELDS: tuple[str, ...] = (
    "id",
    "webCallUrl",
    "transport.callToken",
    "artifactPlan.videoRecordingEnabled",
    "assistant.voice.provider",
    "status",
    "type",
    "createdAt",
)


def _split(paths: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(path.split(".")) for path in paths)


SDK_PATHS = _split(SDK_FIELDS)


def compile_paths(expose: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """The SDK's paths plus a profile's `expose` list, split once at start-up."""
    extra = [p for p in expose if p not in SDK_FIELDS]
    return SDK_PATHS + _split(extra)


def scrub(reply: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """Copy only the given dotted paths of `reply` (missing ones are skipped)."""
    out: dict[str, Any] = {}
    for parts in paths:
        node: Any = reply
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            target = out
            for part in parts[:-1]:
                child = target.get(part)
                if not isinstance(child, dict):
                    child = {}
                    target[part] = child
                target = child
            target[parts[-1]] = node
    return out
