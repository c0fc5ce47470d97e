"""Scrub Vapi's reply down to what the client needs, plus what a profile chooses to expose.

The Web SDK reads only `id`, `webCallUrl`, `transport.callToken`,
`artifactPlan.videoRecordingEnabled` and `assistant.voice.provider` (docs/architecture.md, Vapi
facts). Everything else in a Call — notably `monitor.listenUrl`/`controlUrl`, which let anyone
listen to or steer the live call, the resolved prompt and `orgId` — stays on the server unless a
profile opts in.
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
            # dict first: replies are parsed JSON, and the ABC's check is slow (≈ 2 µs a reply).
            if not isinstance(node, (dict, Mapping)) or part not in node:
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


# --- chat replies and stream events --------------------------------------------------------

Tree = dict[str, "Tree | str | None"]
"""An allowlist as a tree of keys: `[]` stands for each list item; a leaf is either `SCALAR`
(only a string, number, boolean or null passes: an object Vapi might put there later does not)
or None (the value passes whole)."""

SCALAR = "scalar"
_DROP = object()
_PRIVATE_ROLES = frozenset({"system", "developer", "tool", "function"})

# The Chat object (`/chat`, and WebChat `{id, sessionId, output}` from `/chat/web`): what a
# client needs to show the answer and continue the chat. Never `orgId`, the transient
# `assistant`/`squad` (the prompt), `assistantOverrides` (server-owned variables), costs, or
# system/developer/tool messages; `assistantId` is replaced by the profile's name.
CHAT_FIELDS: tuple[str, ...] = (
    "id",
    "sessionId",
    "previousChatId",
    "createdAt",
    "updatedAt",
    "messages[].role",
    "output[].role",
)
# OpenAI Responses `ResponseObject` (`/chat/responses` and `/chat/web/responses`).
RESPONSE_FIELDS: tuple[str, ...] = (
    "id",
    "object",
    "created_at",
    "status",
    "error",
    "output[].id",
    "output[].type",
    "output[].role",
    "output[].status",
    "output[].content[].type",
    "output[].content[].text",
)
# Free-form content, passed whole: the client's own input echoed back, message content (a string
# or a list of parts), and Responses annotations (citations).
CHAT_WHOLE: tuple[str, ...] = (
    "input",
    "messages[].content",
    "messages[].message",
    "output[].content",
    "output[].message",
)
RESPONSE_WHOLE: tuple[str, ...] = ("output[].content[].annotations",)
# Stream events: `/chat` deltas (Spec `CreateChatStreamResponse`), and every Responses event
# (`response.output_text.delta`/`.done`, `response.completed` with its ResponseObject, `error`,
# and the same fields of any event type Vapi adds later).
CHAT_EVENT_FIELDS: tuple[str, ...] = ("id", "sessionId", "path", "delta")
RESPONSE_EVENT_FIELDS: tuple[str, ...] = (
    "type",
    "sequence_number",
    "item_id",
    "output_index",
    "content_index",
    "delta",
    "text",
    "code",
    "message",
    "param",
    *(f"response.{path}" for path in RESPONSE_FIELDS),
)


def allowlist(paths: Iterable[str], whole: Iterable[str] = ()) -> Tree:
    """Compile dotted paths (`output[].content`) into a tree, once at start-up: `paths` end in
    scalars, `whole` paths (free-form content, a profile's `expose`) pass whatever they hold."""
    root: Tree = {}
    for path, leaf in [*((p, SCALAR) for p in paths), *((p, None) for p in whole)]:
        parts = path.replace("[]", ".[]").split(".")
        node: Tree = root
        for part in parts[:-1]:
            child = node.get(part, SCALAR)
            if child is None:  # an ancestor already passes whole
                break
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        else:
            if leaf is None or parts[-1] not in node:
                node[parts[-1]] = leaf
    return root


def prune(value: Any, tree: Tree | str | None) -> Any:
    """`value` cut down to `tree`; unknown keys are dropped, as are list items that are
    messages of a private role (system prompt, developer, tool results)."""
    if tree is None:
        return value
    if isinstance(tree, str):  # SCALAR
        return value if value is None or isinstance(value, str | int | float | bool) else _DROP
    if isinstance(value, list):
        items = tree.get("[]", _DROP)
        if items is _DROP:
            return _DROP
        out = []
        for item in value:
            if isinstance(item, Mapping) and item.get("role") in _PRIVATE_ROLES:
                continue
            kept = prune(item, items)  # type: ignore[arg-type]
            if kept is not _DROP:
                out.append(kept)
        return out
    if not isinstance(value, Mapping):
        return _DROP
    pruned: dict[str, Any] = {}
    for key, sub in tree.items():
        if key != "[]" and key in value:
            kept = prune(value[key], sub)
            if kept is not _DROP:
                pruned[key] = kept
    return pruned


class ChatView:
    """What a client sees of one profile's chat replies and stream events: an allowlist, plus
    the profile's `expose` paths; the profile's name stands where Vapi names the assistant."""

    __slots__ = ("_chat", "_chat_event", "_response", "_response_event", "profile")

    def __init__(self, profile: str, expose: Iterable[str] = ()) -> None:
        extra = tuple(expose)
        self.profile = profile
        self._chat = allowlist(CHAT_FIELDS, (*CHAT_WHOLE, *extra))
        self._response = allowlist(RESPONSE_FIELDS, (*RESPONSE_WHOLE, *extra))
        self._chat_event = allowlist(CHAT_EVENT_FIELDS, extra)
        self._response_event = allowlist(
            RESPONSE_EVENT_FIELDS,
            (*(f"response.{p}" for p in RESPONSE_WHOLE), *extra, *(f"response.{p}" for p in extra)),
        )

    def reply(self, reply: Mapping[str, Any], *, responses: bool) -> dict[str, Any]:
        """A non-streamed reply: a Chat / WebChat object, or a ResponseObject."""
        out: dict[str, Any] = prune(reply, self._response if responses else self._chat)
        if any(key in reply for key in ("assistantId", "assistant", "squadId", "squad")):
            out["assistantId"] = self.profile
        return out

    def event(self, payload: Mapping[str, Any], *, responses: bool) -> dict[str, Any]:
        """One JSON stream event."""
        out: dict[str, Any] = prune(
            payload, self._response_event if responses else self._chat_event
        )
        return out
