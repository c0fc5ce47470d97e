"""Profiles compiled once at start-up, and the Vapi body every entry point builds from one.

A `CompiledProfile` holds what does not depend on the request (the target with its duration
cap, the overrides key, the reply allowlist); `build_call_body` adds the server-owned
variables, the client's checked values, attribution metadata (`METADATA_KEY`) and the webhook
server. Shared by web calls, phone calls, chat, `assistant-request` answers, `check` and the
runtime. Pure: no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import BadRequestError, NotFoundError
from vapi_proxy.policy.intake import ClientField
from vapi_proxy.policy.profiles import Profile
from vapi_proxy.policy.reply import compile_paths
from vapi_proxy.policy.templates import TemplateContext, render_value
from vapi_proxy.policy.variables import check_variable

METADATA_KEY = "vapiProxy"


@dataclass(frozen=True, slots=True)
class CompiledProfile:
    """A profile with everything that does not depend on the request prepared once."""

    name: str
    profile: Profile
    target: dict[str, Any]
    """`{"assistantId": ...}`, `{"assistant": {...}}`, ... with the duration cap applied."""
    overrides_key: str
    """Where Vapi takes overrides for this target (`assistantOverrides`, `squadOverrides`,
    `workflowOverrides`)."""
    static_overrides: dict[str, Any]
    max_duration_seconds: int
    """The enforced cap: the least of the profile's and a transient target's own."""
    templated: bool
    """Whether server-owned variables or metadata hold templates to render per request."""
    reply_paths: tuple[tuple[str, ...], ...] = ()
    """What a client sees of Vapi's Call object for this profile: the Web SDK's fields plus
    the profile's `expose` (policy/reply.py)."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """What the request adds beyond the body: who asks, its id, where webhooks go."""

    identity: Identity
    request_id: str
    webhook_server: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PlannedCall:
    profile: CompiledProfile
    body: dict[str, Any]


def _capped(target: dict[str, Any], cap: int) -> tuple[dict[str, Any], int]:
    own = target.get("maxDurationSeconds")
    if isinstance(own, int | float) and not isinstance(own, bool) and own < cap:
        cap = int(own)
    capped = copy.deepcopy(target)
    capped["maxDurationSeconds"] = cap
    return capped, cap


def compile_profile(name: str, profile: Profile) -> CompiledProfile:
    cap = profile.max_duration_seconds
    target: dict[str, Any]
    if profile.assistant_id is not None:
        target, key = {"assistantId": profile.assistant_id}, "assistantOverrides"
    elif isinstance(profile.assistant, dict):
        assistant, cap = _capped(profile.assistant, cap)
        target, key = {"assistant": assistant}, "assistantOverrides"
    elif profile.squad_id is not None:
        target, key = {"squadId": profile.squad_id}, "squadOverrides"
    elif isinstance(profile.squad, dict):
        target, key = {"squad": copy.deepcopy(profile.squad)}, "squadOverrides"
    elif profile.workflow_id is not None:
        target, key = {"workflowId": profile.workflow_id}, "workflowOverrides"
    elif isinstance(profile.workflow, dict):
        workflow, cap = _capped(profile.workflow, cap)
        target, key = {"workflow": workflow}, "workflowOverrides"
    else:  # Profile validation guarantees one target; this guards refactors.
        raise ValueError(f"profile {name!r} has no target")
    return CompiledProfile(
        name=name,
        profile=profile,
        target=target,
        overrides_key=key,
        static_overrides=copy.deepcopy(profile.overrides),
        max_duration_seconds=cap,
        templated=_has_placeholder(profile.variables) or _has_placeholder(profile.metadata),
        reply_paths=compile_paths(profile.expose),
    )


def compile_profiles(profiles: Mapping[str, Profile]) -> dict[str, CompiledProfile]:
    return {name: compile_profile(name, profile) for name, profile in profiles.items()}


def lookup_profile(profiles: Mapping[str, CompiledProfile], name: str) -> CompiledProfile:
    compiled = profiles.get(name)
    if compiled is None:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise NotFoundError(f"Unknown profile '{shown}'.")
    return compiled


def _has_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, dict):
        return any(_has_placeholder(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_placeholder(v) for v in value)
    return False


def check_client_values(
    compiled: CompiledProfile,
    variables: Sequence[ClientField],
    disallowed: Sequence[str],
    problems: list[str] | None = None,
) -> dict[str, Any]:
    """Check the client's variables against the profile's `client_variables` (shared by every
    entry point); raise one 400 naming every problem, including those passed in."""
    specs = compiled.profile.client_variables
    problems = [
        *(problems or []),
        *(
            f"Field '{path}' may not be set by the client for profile '{compiled.name}'."
            for path in disallowed
        ),
    ]
    values: dict[str, Any] = {}
    for item in variables:
        spec = specs.get(item.name)
        if spec is None:
            problems.append(
                f"Field '{item.path}' may not be set by the client for profile '{compiled.name}'."
            )
            continue
        problem = check_variable(item.path, spec, item.value)
        if problem is not None:
            problems.append(problem)
        elif item.name in values and values[item.name] != item.value:
            problems.append(f"'{item.name}' is set twice with different values.")
        else:
            values[item.name] = item.value
    for name, spec in specs.items():
        if name not in values:
            if spec.required:
                problems.append(f"'{name}' is required by profile '{compiled.name}'.")
            elif spec.default is not None:
                values[name] = spec.default
    if problems:
        raise BadRequestError(problems[0] if len(problems) == 1 else problems)
    return values


def server_values(
    compiled: CompiledProfile, ctx: CallContext
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The profile's server-owned `variableValues` and metadata, templates rendered."""
    profile = compiled.profile
    if compiled.templated:
        context = TemplateContext(ctx.identity, ctx.request_id, compiled.name)
        return render_value(profile.variables, context), render_value(profile.metadata, context)
    return profile.variables, profile.metadata


def build_call_body(
    compiled: CompiledProfile, client_values: Mapping[str, Any], ctx: CallContext
) -> dict[str, Any]:
    """Vapi's call body for a profile: its target plus the server-owned overrides, the client's
    checked variables, the duration cap, attribution metadata and the webhook server."""
    variables, metadata = server_values(compiled, ctx)
    body: dict[str, Any] = dict(compiled.target)
    variable_values = {**client_values, **variables}
    if compiled.overrides_key == "workflowOverrides":
        # Vapi's WorkflowOverrides holds only variableValues; a transient workflow carries the
        # cap itself, and a saved workflow's own cap applies (documented).
        if variable_values:
            body["workflowOverrides"] = {"variableValues": variable_values}
        return body
    overrides: dict[str, Any] = dict(compiled.static_overrides)
    if variable_values:
        overrides["variableValues"] = variable_values
    overrides["maxDurationSeconds"] = compiled.max_duration_seconds
    overrides["metadata"] = {
        **metadata,
        METADATA_KEY: {
            "profile": compiled.name,
            "requestId": ctx.request_id,
            "identity": ctx.identity.hashed,
        },
    }
    if ctx.webhook_server is not None:
        overrides["server"] = dict(ctx.webhook_server)
    body[compiled.overrides_key] = overrides
    return body
