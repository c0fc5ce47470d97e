"""Intake: read the client's context where the official Web SDK puts it.

`vapi.start('name')` arrives as `{"assistantId": "name"}`; `vapi.start({assistantType: 'name',
firstName: 'Ann'})` as `{"assistant": {...}}`; variables as `assistantOverrides.variableValues`;
squads and workflows follow the same string/object rule (docs/architecture.md, Vapi facts).
The result is a small typed request: the profile name and the client-set values with the path
each came from, so the policy can name any refused field exactly. No decisions about what is
allowed are made here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from vapi_proxy.errors import BadRequestError

# Where `start()` puts a profile name as a string, and the object slot beside it.
_ID_SLOTS = (("assistantId", "assistant"), ("squadId", "squad"), ("workflowId", "workflow"))
_OVERRIDE_SLOTS = ("assistantOverrides", "squadOverrides", "workflowOverrides")
NAME_KEYS = ("assistantType", "profile")
_TOP_LEVEL = frozenset(
    {slot for pair in _ID_SLOTS for slot in pair} | set(_OVERRIDE_SLOTS) | set(NAME_KEYS)
)


@dataclass(frozen=True, slots=True)
class ClientField:
    """One value the client tried to set, and where it sat in the body."""

    path: str
    name: str
    value: Any


@dataclass(slots=True)
class WebCallIntake:
    profile: str
    variables: list[ClientField] = field(default_factory=list)
    """Candidate client variables: `*Overrides.variableValues` entries and extra keys of the
    `assistant`/`squad`/`workflow` object (the SDK's way of passing context)."""
    disallowed: list[str] = field(default_factory=list)
    """Paths of fields that are never client-settable (e.g. `assistantOverrides.model`)."""
    room_delete_on_user_leave: bool | None = None


def _name_from(value: Any, path: str, names: list[tuple[str, str]]) -> None:
    if isinstance(value, str):
        names.append((path, value))
    elif value is not None:
        raise BadRequestError(f"'{path}' must be a string naming a profile.")


@dataclass(slots=True)
class ClientContext:
    """What every entry point reads the same way: profile names, variables, refused paths."""

    names: list[tuple[str, str]] = field(default_factory=list)
    """(path, name) for every place the body named a profile."""
    variables: list[ClientField] = field(default_factory=list)
    disallowed: list[str] = field(default_factory=list)


def read_context(
    body: Any, ignored: Collection[str], extra_keys: Collection[str] = ()
) -> ClientContext:
    """Read profile names, candidate variables and refused top-level keys from a JSON body.

    `extra_keys` are top-level keys the caller's entry point reads itself (e.g. `customer` for
    phone calls, `input` for chats); every other unknown key is reported as disallowed.
    """
    if not isinstance(body, Mapping):
        raise BadRequestError("The request body must be a JSON object.")
    ctx = ClientContext()
    names, variables, disallowed = ctx.names, ctx.variables, ctx.disallowed

    for key in body:
        if key not in _TOP_LEVEL and key not in ignored and key not in extra_keys:
            disallowed.append(key)

    for name_key in NAME_KEYS:
        _name_from(body.get(name_key), name_key, names)

    for id_slot, object_slot in _ID_SLOTS:
        _name_from(body.get(id_slot), id_slot, names)
        obj = body.get(object_slot)
        if obj is None:
            continue
        if isinstance(obj, str):
            # A string where the SDK would send an object: treat it as a name too.
            names.append((object_slot, obj))
            continue
        if not isinstance(obj, Mapping):
            raise BadRequestError(f"'{object_slot}' must be an object or null.")
        for key, value in obj.items():
            path = f"{object_slot}.{key}"
            if key in NAME_KEYS:
                _name_from(value, path, names)
            elif key in ignored:
                continue
            else:
                variables.append(ClientField(path, key, value))

    for slot in _OVERRIDE_SLOTS:
        overrides = body.get(slot)
        if overrides is None:
            continue
        if not isinstance(overrides, Mapping):
            raise BadRequestError(f"'{slot}' must be an object or null.")
        for key, value in overrides.items():
            if key != "variableValues":
                disallowed.append(f"{slot}.{key}")
                continue
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise BadRequestError(f"'{slot}.variableValues' must be an object.")
            for var, var_value in value.items():
                variables.append(ClientField(f"{slot}.variableValues.{var}", var, var_value))
    return ctx


def one_profile(names: list[tuple[str, str]]) -> str | None:
    """The single profile the body names; None if it names none; 400 if it names several."""
    distinct = {name for _, name in names}
    if len(distinct) > 1:
        shown = ", ".join(f"{path}={name!r}" for path, name in names)
        raise BadRequestError(f"The request names more than one profile ({shown}).")
    return names[0][1] if names else None


def read_web_call(body: Any, ignored: Collection[str] = ("userId",)) -> WebCallIntake:
    """Turn a `/call/web` body into a `WebCallIntake`, or refuse malformed input (400)."""
    ctx = read_context(body, ignored, ("roomDeleteOnUserLeaveEnabled",))
    room = body.get("roomDeleteOnUserLeaveEnabled")
    if room is not None and not isinstance(room, bool):
        raise BadRequestError("'roomDeleteOnUserLeaveEnabled' must be true or false.")
    profile = one_profile(ctx.names)
    if profile is None:
        raise BadRequestError(
            "Name a profile: vapi.start('<profile>') or vapi.start({assistantType: '<profile>'})."
        )
    return WebCallIntake(
        profile=profile,
        variables=ctx.variables,
        disallowed=ctx.disallowed,
        room_delete_on_user_leave=room,
    )
