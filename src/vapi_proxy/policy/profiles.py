"""Profiles: the server-owned assistant configurations a client may start, by name.

A profile says what Vapi target a name maps to (a saved assistant, a transient assistant, a squad
or a workflow), which variables the client may set and how they are checked, what the server
adds on its own, and the caps it enforces whatever the client says.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from vapi_proxy.configbase import StrictModel
from vapi_proxy.policy.access import AccessRule
from vapi_proxy.policy.templates import validate_value

Scalar = str | int | float | bool

# Vapi's own bounds for AssistantOverrides.maxDurationSeconds (openapi.json).
MIN_DURATION_SECONDS = 10
MAX_DURATION_SECONDS = 43200

TARGET_FIELDS = ("assistant_id", "assistant", "squad_id", "squad", "workflow_id", "workflow")


class VariableSpec(StrictModel):
    """How one client-settable variable is checked before it reaches `variableValues`."""

    model_config = ConfigDict(frozen=True)

    type: Literal["string", "integer", "number", "boolean"] = Field(
        default="string", description="JSON type the value must have."
    )
    max_length: int = Field(
        default=200, ge=1, le=10_000, description="Longest accepted string, in characters."
    )
    min_length: int = Field(default=0, ge=0, description="Shortest accepted string.")
    pattern: str | None = Field(
        default=None, description="Regular expression the whole string must match."
    )
    enum: list[Scalar] | None = Field(
        default=None, description="The only values accepted (the type is inferred from them)."
    )
    minimum: float | None = Field(default=None, description="Smallest accepted number.")
    maximum: float | None = Field(default=None, description="Largest accepted number.")
    required: bool = Field(default=False, description="Refuse requests that do not set it.")
    default: Scalar | None = Field(
        default=None, description="Value used when the client does not set it."
    )

    @model_validator(mode="before")
    @classmethod
    def _infer_type_from_enum(cls, data: Any) -> Any:
        if isinstance(data, dict) and "enum" in data and "type" not in data:
            values = data["enum"] or []
            if values and all(isinstance(v, bool) for v in values):
                data = {**data, "type": "boolean"}
            elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                data = {**data, "type": "integer"}
            elif values and all(isinstance(v, int | float) for v in values):
                data = {**data, "type": "number"}
        return data

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return value


class FileRef(StrictModel):
    """A JSON or YAML file holding a transient assistant/squad/workflow, relative to the config."""

    file: str = Field(description="Path of the file, relative to the config file's folder.")


# Premium-rate and other high-cost ranges refused by default (toll fraud: a caller who can choose
# the number could make the operator pay for calls to a number the caller is paid by). Prefixes
# of E.164 numbers; a profile adds its own with `phone.denied_prefixes`.
DEFAULT_PREMIUM_PREFIXES: tuple[str, ...] = (
    "+1900",  # NANP premium-rate services
    "+1976",  # NANP pay-per-call (historic, still abused)
    "+44870",  # UK non-geographic, revenue-sharing
    "+44871",
    "+44872",
    "+44873",
    "+4470",  # UK "personal numbers", a classic fraud range
    "+449",  # UK premium rate (09)
    "+3381",  # France shared-cost
    "+3389",  # France premium rate (089)
    "+49137",  # Germany mass-calling / televoting
    "+49900",  # Germany premium rate
    "+3989",  # Italy premium rate (89x)
    "+34803",  # Spain premium rate
    "+34806",
    "+34807",
    "+3290",  # Belgium premium rate
    "+31900",  # Netherlands premium rate
    "+61190",  # Australia premium rate (190x)
    "+870",  # Inmarsat satellite
    "+871",
    "+872",
    "+873",
    "+874",
    "+881",  # Global Mobile Satellite Systems
    "+882",  # International Networks
    "+883",
    "+979",  # International Premium Rate Service
)

CustomerField = Literal["name", "email", "extension", "externalId"]


class PhoneRules(StrictModel):
    """Where a server-side phone call (`POST /call`) of this profile may ring."""

    model_config = ConfigDict(frozen=True)

    allowed_prefixes: list[str] = Field(
        default_factory=list,
        description="E.164 prefixes a callee's number must start with, e.g. `+1` or `+4420`; "
        "`+` admits every country. Required when `phone_number_id` is set.",
    )
    denied_prefixes: list[str] = Field(
        default_factory=list,
        description="E.164 prefixes refused on top of the default premium-rate denylist.",
    )
    default_denylist: bool = Field(
        default=True,
        description="Refuse the built-in premium-rate and satellite ranges (docs/api.md).",
    )
    customer_fields: list[CustomerField] = Field(
        default_factory=list,
        description="`customer` fields the client may set besides `number`.",
    )
    max_batch: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Most callees in one `customers[]` batch; 0 refuses batches.",
    )

    @field_validator("allowed_prefixes", "denied_prefixes")
    @classmethod
    def _e164_prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if not re.fullmatch(r"\+[0-9]{0,14}", prefix):
                raise ValueError(f"{prefix!r} is not an E.164 prefix like '+1' or '+4420'")
        return value


class Profile(StrictModel):
    """One named entry point: what `vapi.start('<name>')` may start, and under which rules."""

    description: str | None = Field(default=None, description="Free text for operators.")
    assistant_id: str | None = Field(default=None, description="A saved Vapi assistant's id.")
    assistant: dict[str, Any] | FileRef | None = Field(
        default=None, description="A transient assistant owned by the server (inline or file)."
    )
    squad_id: str | None = Field(default=None, description="A saved Vapi squad's id.")
    squad: dict[str, Any] | FileRef | None = Field(
        default=None, description="A transient squad (inline or file)."
    )
    workflow_id: str | None = Field(default=None, description="A saved Vapi workflow's id.")
    workflow: dict[str, Any] | FileRef | None = Field(
        default=None, description="A transient workflow (inline or file)."
    )
    client_variables: dict[str, VariableSpec] = Field(
        default_factory=dict,
        description="The only values the client may set, each checked; they become "
        "`assistantOverrides.variableValues`.",
    )
    variables: dict[str, Any] = Field(
        default_factory=dict,
        description="Server-owned `variableValues` (templates like {{identity.sub}} allowed). "
        "They win over nothing: a name may not be both client- and server-owned.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Server-owned `assistantOverrides` (anything Vapi accepts there).",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Server-owned call metadata (templates allowed); the proxy adds its own "
        "attribution under `vapiProxy`.",
    )
    max_duration_seconds: int = Field(
        default=600,
        ge=MIN_DURATION_SECONDS,
        le=MAX_DURATION_SECONDS,
        description="Enforced `maxDurationSeconds`, whatever the client says.",
    )
    expose: list[str] = Field(
        default_factory=list,
        description="Dotted paths of the Vapi reply the client may see beyond what the SDK needs.",
    )
    allow_reconnect: bool = Field(
        default=False,
        description="Let the client set `roomDeleteOnUserLeaveEnabled` (needed by "
        "`vapi.reconnect()`); off by default because a room that outlives its user keeps "
        "billing until the call's cap.",
    )
    access: AccessRule = Field(
        default_factory=AccessRule,
        description="Who may use this profile (anonymous callers, claims, roles, tenants).",
    )
    phone_number_id: str | None = Field(
        default=None,
        description="The Vapi phone number server-side calls (`POST /call`) of this profile ring "
        "from; unset: the profile makes no phone calls.",
    )
    phone: PhoneRules = Field(
        default_factory=PhoneRules,
        description="Destination rules for phone calls (allowlist, premium denylist, batches).",
    )

    @model_validator(mode="after")
    def _one_target(self) -> Profile:
        set_fields = [name for name in TARGET_FIELDS if getattr(self, name) is not None]
        if len(set_fields) != 1:
            shown = ", ".join(set_fields) if set_fields else "none"
            raise ValueError(
                f"a profile needs exactly one target of {', '.join(TARGET_FIELDS)} (found: {shown})"
            )
        overlap = sorted(set(self.client_variables) & set(self.variables))
        if overlap:
            raise ValueError(
                f"variables {overlap} are both client_variables and server-owned variables"
            )
        if self.phone_number_id is not None and not self.phone.allowed_prefixes:
            raise ValueError(
                "phone_number_id needs phone.allowed_prefixes (e.g. ['+1']; '+' for anywhere)"
            )
        validate_value(self.variables)
        validate_value(self.metadata)
        for key in ("variableValues", "maxDurationSeconds", "metadata"):
            if key in self.overrides:
                raise ValueError(
                    f"overrides.{key} is set by the proxy; use "
                    + {
                        "variableValues": "variables",
                        "maxDurationSeconds": "max_duration_seconds",
                        "metadata": "metadata",
                    }[key]
                    + " instead"
                )
        return self
