"""Decide a chat turn (`/chat`, `/chat/responses`, `/chat/web`, `/chat/web/responses`).

Pure. The profile supplies the assistant (named like calls: `assistantId: "<profile>"`); the
client sends `input`, optionally `stream`, `previousChatId` or `sessionId`, and the variables the
profile allows. Who may continue a chat or session is decided by the route from the ledger and
handed in as `Continuation`; this module only checks that the profile agrees with it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from vapi_proxy.errors import BadRequestError
from vapi_proxy.policy.access import check_access
from vapi_proxy.policy.compiled import (
    CallContext,
    CompiledProfile,
    check_client_values,
    lookup_profile,
    server_values,
)
from vapi_proxy.policy.intake import ClientField, one_profile, read_context

MAX_INPUT_CHARS = 32_000
"""Longest accepted `input` (all message contents together), in characters."""
MAX_INPUT_MESSAGES = 200
_ROLES = frozenset({"user", "assistant"})
_ID_MAX = 128


@dataclass(slots=True)
class ChatIntake:
    profile: str | None
    input: str | list[dict[str, str]]
    stream: bool
    previous_chat_id: str | None = None
    session_id: str | None = None
    session_end: bool | None = None
    variables: list[ClientField] = field(default_factory=list)
    disallowed: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Continuation:
    """The ledger's record of the chat or session being continued (already owned by the
    caller: the route answers 404 otherwise)."""

    profile: str


@dataclass(frozen=True, slots=True)
class PlannedChat:
    profile: CompiledProfile
    body: dict[str, Any]
    stream: bool


def _input(value: Any) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        if not value or len(value) > MAX_INPUT_CHARS:
            raise BadRequestError(f"'input' must be 1 to {MAX_INPUT_CHARS} characters.")
        return value
    if not isinstance(value, list) or not value or len(value) > MAX_INPUT_MESSAGES:
        raise BadRequestError(
            f"'input' must be a string or an array of 1 to {MAX_INPUT_MESSAGES} messages."
        )
    messages: list[dict[str, str]] = []
    total = 0
    for index, item in enumerate(value):
        path = f"input[{index}]"
        if not isinstance(item, Mapping):
            raise BadRequestError(f"'{path}' must be an object with 'role' and 'content'.")
        role = item.get("role", "user")
        # Vapi's spec names the text `message`; the documented clients send `content`.
        key = "content" if "content" in item else "message"
        content = item.get(key)
        extra = sorted(set(item) - {"role", key, "type"})
        if extra:
            raise BadRequestError(f"Field '{path}.{extra[0]}' may not be set by the client.")
        if role not in _ROLES:
            # A client-written system prompt would override the profile's assistant.
            raise BadRequestError(f"'{path}.role' must be 'user' or 'assistant'.")
        if not isinstance(content, str):
            raise BadRequestError(f"'{path}.content' must be a string.")
        total += len(content)
        messages.append({"role": role, key: content})
    if total > MAX_INPUT_CHARS:
        raise BadRequestError(f"'input' must hold at most {MAX_INPUT_CHARS} characters.")
    return messages


def _chat_id(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > _ID_MAX:
        raise BadRequestError(f"'{key}' must be an id string.")
    return value


def read_chat(
    body: Any,
    ignored: Collection[str] = ("userId",),
    *,
    web: bool = False,
    responses: bool = False,
) -> ChatIntake:
    """Turn a chat body into a `ChatIntake`, or refuse malformed input (400).

    `/chat/responses` streams unless told not to, `/chat` does not (Vapi facts §2.7). The widget
    endpoints take `sessionId` but no `previousChatId`. The OpenAI SDK's `model` is dropped: the
    profile decides the assistant.
    """
    keys = {"input", "stream", "sessionId"}
    keys |= {"sessionEnd"} if web else {"previousChatId"}
    dropped = {"model"} if responses else set()
    ctx = read_context(body, {*ignored, *dropped}, keys)
    previous = None if web else _chat_id(body, "previousChatId")
    session = _chat_id(body, "sessionId")
    if previous is not None and session is not None:
        raise BadRequestError("Send either 'previousChatId' or 'sessionId', not both.")
    stream = body.get("stream", responses)
    if stream is None:
        stream = responses
    if not isinstance(stream, bool):
        raise BadRequestError("'stream' must be true or false.")
    session_end = body.get("sessionEnd") if web else None
    if session_end is not None and not isinstance(session_end, bool):
        raise BadRequestError("'sessionEnd' must be true or false.")
    if "input" not in body:
        raise BadRequestError("'input' is required.")
    profile = one_profile(ctx.names)
    if profile is None and previous is None and session is None:
        raise BadRequestError("Name a profile: send assistantId='<profile>'.")
    return ChatIntake(
        profile=profile,
        input=_input(body["input"]),
        stream=stream,
        previous_chat_id=previous,
        session_id=session,
        session_end=session_end,
        variables=ctx.variables,
        disallowed=ctx.disallowed,
    )


def chat_target(compiled: CompiledProfile) -> dict[str, Any]:
    """The profile's target as a chat takes it: an assistant or a squad, never a workflow."""
    target = compiled.target
    if "workflowId" in target or "workflow" in target:
        raise BadRequestError(f"The profile '{compiled.name}' is a workflow and cannot chat.")
    return dict(target)


def plan_chat(
    profiles: Mapping[str, CompiledProfile],
    intake: ChatIntake,
    ctx: CallContext,
    continuation: Continuation | None = None,
) -> PlannedChat:
    """Check the turn against its profile and build Vapi's chat body.

    The profile comes from the body or, when the body names none, from the chat or session
    being continued; naming a different one than the continued chat's is refused (400).
    """
    name = intake.profile
    if continuation is not None:
        if name is not None and name != continuation.profile:
            raise BadRequestError(
                f"This chat belongs to profile '{continuation.profile}', not '{name}'."
            )
        name = continuation.profile
    if name is None:  # read_chat guarantees a name or a continuation
        raise BadRequestError("Name a profile: send assistantId='<profile>'.")
    compiled = lookup_profile(profiles, name)
    check_access(compiled.profile.access, ctx.identity, compiled.name)
    client_values = check_client_values(compiled, intake.variables, intake.disallowed)
    body = chat_target(compiled)
    variables, _ = server_values(compiled, ctx)
    variable_values = {**client_values, **variables}
    # In chat, Vapi honours only `variableValues` among the overrides (Vapi facts §2.7).
    if variable_values and compiled.overrides_key == "assistantOverrides":
        body["assistantOverrides"] = {"variableValues": variable_values}
    body["input"] = intake.input
    body["stream"] = intake.stream
    if intake.previous_chat_id is not None:
        body["previousChatId"] = intake.previous_chat_id
    if intake.session_id is not None:
        body["sessionId"] = intake.session_id
    if intake.session_end is not None:
        body["sessionEnd"] = intake.session_end
    return PlannedChat(profile=compiled, body=body, stream=intake.stream)
