"""The `webhooks:` settings: how Vapi's deliveries are verified, answered and forwarded.

Secrets are never written inline: each credential names environment variables (`secret_env`)
or files (`secret_file`) (`configbase.SecretSource`); they are read once when the config loads,
from the environment given to `parse_settings` (a missing one is a config error naming the
field), and kept as `SecretStr`. Several may be given at once for rotation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vapi_proxy.configbase import SecretSource, StrictModel

_PLACEHOLDERS = ("{body}", "{timestamp}", "{method}", "{url}", "{svix-id}")
_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d|24:00")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
REQUEST_TYPES = (
    "tool-calls",
    "transfer-destination-request",
    "handoff-destination-request",
    "knowledge-base-request",
    "call.endpointing.request",
    "campaign.predial",
)
"""Message types whose reply Vapi acts on (besides assistant-request, answered by the proxy)."""


class _SecretSource(SecretSource):
    """A verifier's credential: at least one secret must be named."""

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> Any:
        if not self.secret_env and not self.secret_file:
            raise ValueError("set secret_env or secret_file (secrets are never inline)")
        self._read(info)
        return self


class BearerVerifier(_SecretSource):
    """A static token in a header: Vapi's bearer credential, or legacy `X-Vapi-Secret`."""

    type: Literal["bearer"] = Field(description="Selects this credential type.")
    header: str = Field(
        default="Authorization",
        description="Header carrying the token (Vapi's `headerName`; `X-Vapi-Secret` for the "
        "legacy form).",
    )
    prefix: bool = Field(
        default=True,
        description="Expect `Bearer <token>` (Vapi's `bearerPrefixEnabled`); off: the bare token.",
    )
    send_in_headers: bool = Field(
        default=False,
        description="Put the first secret in `server.headers` of every call the proxy creates, "
        "so no Vapi credential is needed. The header then lives in the call's "
        "`assistantOverrides` at Vapi (replies to browsers are scrubbed of it).",
    )


class SecretHeaderVerifier(_SecretSource):
    """Legacy `X-Vapi-Secret: <secret>` (Vapi's old `server.secret`)."""

    type: Literal["x-vapi-secret"] = Field(description="Selects this credential type.")
    send_in_headers: bool = Field(
        default=False,
        description="Send the first secret as `server.headers.X-Vapi-Secret` on created calls.",
    )


class HmacVerifier(_SecretSource):
    """Vapi's HMAC credential (`HMACAuthenticationPlan`): the same fields, checked here."""

    type: Literal["hmac"] = Field(description="Selects this credential type.")
    algorithm: Literal["sha256", "sha512", "sha1"] = Field(
        default="sha256", description="Digest algorithm."
    )
    signature_header: str = Field(default="x-signature", description="Header with the signature.")
    timestamp_header: str = Field(default="x-timestamp", description="Header with the timestamp.")
    include_timestamp: bool = Field(
        default=True,
        description="Vapi sends a timestamp; require it and check it against `max_age_seconds`.",
    )
    payload_format: str = Field(
        default="{timestamp}.{body}",
        description="What is signed; placeholders {body} {timestamp} {method} {url} {svix-id} "
        "({url} is public_url + webhook_path, as configured at Vapi).",
    )
    signature_prefix: str = Field(
        default="", description="Text before the signature, e.g. `sha256=`."
    )
    signature_encoding: Literal["hex", "base64"] = Field(
        default="hex", description="How the signature is encoded."
    )
    secret_is_base64: bool = Field(
        default=False, description="Decode the secret from base64 before use."
    )
    message_id_header: str | None = Field(
        default=None,
        description="Svix-style message id header: fills {svix-id} and becomes the dedupe key.",
    )
    max_age_seconds: float = Field(
        default=300,
        gt=0,
        le=86400,
        description="Replay window: a timestamp further than this from now (either way) is "
        "refused. Seconds and milliseconds timestamps are both accepted (values above 1e11 are "
        "read as milliseconds).",
    )

    @field_validator("payload_format")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        rest = value
        for name in _PLACEHOLDERS:
            rest = rest.replace(name, "")
        if "{" in rest or "}" in rest:
            raise ValueError(f"unknown placeholder; known: {' '.join(_PLACEHOLDERS)}")
        return value


Verifier = Annotated[
    BearerVerifier | SecretHeaderVerifier | HmacVerifier, Field(discriminator="type")
]


class HoursWindow(StrictModel):
    """A weekly window, e.g. mon-fri 09:00-17:00; `start` after `end` wraps past midnight."""

    days: list[Day] = Field(
        default_factory=lambda: list(DAYS), description="Days the window opens on."
    )
    start: str = Field(default="00:00", description="Opening time, HH:MM.")
    end: str = Field(default="24:00", description="Closing time, HH:MM (exclusive).")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.fullmatch(value):
            raise ValueError("must be HH:MM (00:00-24:00)")
        return value


class PhoneMatch(StrictModel):
    """Conditions of one inbound rule; every condition given must hold (empty matches all)."""

    phone_number_ids: list[str] | None = Field(
        None, description="Vapi phone number ids called (`phoneNumber.id`)."
    )
    called_numbers: list[str] | None = Field(
        None, description="Numbers called, E.164 (`phoneNumber.number`)."
    )
    caller_numbers: list[str] | None = Field(
        None, description="Caller numbers admitted exactly (`customer.number`)."
    )
    caller_prefixes: list[str] | None = Field(
        None, description="Caller number prefixes admitted, e.g. `+49`."
    )
    hours: list[HoursWindow] | None = Field(
        None, description="Times of day (in `inbound.time_zone`) when the rule applies."
    )


class Destination(BaseModel):
    """A transfer without AI (Vapi `destination`: `{type: number, number}` or `{type: sip}`)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["number", "sip"] = Field(description="`number` or `sip`.")


class InboundAction(StrictModel):
    """What an inbound call gets: exactly one of profile, destination, error or forward."""

    profile: str | None = Field(None, description="Profile to start (same as web calls).")
    destination: dict[str, Any] | None = Field(
        None, description="Transfer without AI: `{type: number, number, callerId?, message?}`."
    )
    error: str | None = Field(None, description="Spoken refusal (non-empty).")
    forward: bool = Field(
        False, description="Ask `webhooks.respond.url` (the app) and relay its answer."
    )
    tenant: str | None = Field(
        None, description="Tenant of the caller's identity (for limits and usage)."
    )
    variables: dict[str, Any] = Field(
        default_factory=dict, description="Extra `variableValues` for calls from this rule."
    )

    @model_validator(mode="after")
    def _one(self) -> InboundAction:
        chosen = [
            n for n in ("profile", "destination", "error") if getattr(self, n) is not None
        ] + (["forward"] if self.forward else [])
        if len(chosen) != 1:
            raise ValueError(
                f"set exactly one of profile, destination, error, forward (got {chosen or 'none'})"
            )
        if self.error is not None and not self.error.strip():
            raise ValueError("error must be text Vapi can speak")
        if self.destination is not None:
            Destination.model_validate(self.destination)
        return self


class InboundRule(InboundAction):
    """One routing rule: `match` conditions and the action taken when they hold."""

    name: str = Field(description="Shown in logs and the ledger.")
    match: PhoneMatch = Field(default_factory=PhoneMatch, description="When the rule applies.")


class InboundSettings(StrictModel):
    """`assistant-request` answers for inbound phone calls (docs/webhooks.md)."""

    rules: list[InboundRule] = Field(
        default_factory=list, description="Tried in order; the first whose match holds wins."
    )
    default: InboundAction | None = Field(
        None, description="Action when no rule matches; unset: the spoken `error_message`."
    )
    deny_numbers: list[str] = Field(
        default_factory=list, description="Callers refused (with `denied_message`) before rules."
    )
    deny_prefixes: list[str] = Field(
        default_factory=list, description="Caller prefixes refused before rules."
    )
    denied_message: str = Field(
        default="Sorry, this number cannot take your call.",
        min_length=1,
        description="Spoken to denied callers.",
    )
    time_zone: str = Field(default="UTC", description="IANA zone for `hours` windows.")
    deadline_seconds: float = Field(
        default=3.0,
        gt=0,
        le=7,
        description="Answer within this (Vapi waits 7.5 s at most); past it the proxy answers "
        "`error_message`.",
    )
    error_message: str = Field(
        default="Sorry, we cannot take your call right now. Please try again later.",
        min_length=1,
        description="Spoken when nothing matches, something fails, or the deadline passes.",
    )
    limit_message: str = Field(
        default="Sorry, you have reached the limit of calls for now. Please try again later.",
        min_length=1,
        description="Spoken when the caller's limits refuse the call.",
    )

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class ForwardTarget(StrictModel):
    """One of the app's URLs that receives copies of verified events."""

    url: str = Field(description="The app's URL (http(s)).")
    types: list[str] = Field(
        default_factory=list, description="Message types forwarded; empty forwards all."
    )

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class ForwardSettings(SecretSource):
    """Copies of verified events to the app, signed, through a durable outbox."""

    targets: list[ForwardTarget] = Field(
        default_factory=list, description="Where events go; none: forwarding is off."
    )
    secret_env: list[str] = Field(
        default_factory=list,
        description="Environment variable(s) with the app's signing secret (the first signs).",
    )
    secret_file: list[Path] = Field(
        default_factory=list, description="File(s) with the app's signing secret."
    )
    timeout_seconds: float = Field(default=10, gt=0, le=120, description="Per delivery.")
    max_attempts: int = Field(
        default=12, ge=1, le=100, description="Deliveries tried before an event is parked."
    )
    retry_base_seconds: float = Field(
        default=1.0, gt=0, description="First retry delay; doubles per attempt (with jitter)."
    )
    retry_max_seconds: float = Field(default=600, gt=0, description="Longest retry delay.")
    poll_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often the outbox is checked for due events."
    )
    batch_size: int = Field(default=50, ge=1, le=1000, description="Events claimed per round.")

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> ForwardSettings:
        if self.targets and not (self.secret_env or self.secret_file):
            raise ValueError("forwarding needs secret_env or secret_file to sign deliveries")
        self._read(info)
        return self


class RespondSettings(StrictModel):
    """Where request-type messages (tool-calls, transfer-destination-request, …) are answered."""

    url: str | None = Field(
        None, description="The app's URL; it gets the delivery as sent, signed like forwards."
    )
    types: list[str] = Field(
        default_factory=lambda: list(REQUEST_TYPES),
        description="Request types relayed to `url` (also assistant-request rules with "
        "`forward: true`).",
    )
    deadline_seconds: float = Field(
        default=5.0, gt=0, le=60, description="Longest wait for the app's answer."
    )
    error_message: str = Field(
        default="The tool is unavailable right now.",
        min_length=1,
        description="Answered when the app fails or is late (per tool call for tool-calls).",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class WebhookSettings(StrictModel):
    """How the proxy receives Vapi's server messages (docs/webhooks.md)."""

    verify: list[Verifier] = Field(
        default_factory=list,
        description="Credentials a delivery may carry; one must verify. Empty: every delivery "
        "is refused unless `allow_unverified`.",
    )
    allow_unverified: bool = Field(
        default=False, description="Accept deliveries without verification (local tests only)."
    )
    vapi_credential_id: str | None = Field(
        None,
        description="Id of the Vapi credential (bearer or HMAC, created in Vapi's dashboard) "
        "put in `server.credentialId` of every call the proxy creates.",
    )
    server_timeout_seconds: int | None = Field(
        None, ge=1, le=300, description="`server.timeoutSeconds` sent to Vapi (Vapi: 20)."
    )
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest delivery accepted (end-of-call-reports carry transcripts).",
    )
    store_transcripts: bool = Field(
        default=False,
        description="Keep transcripts and messages of reports in the ledger (privacy: off).",
    )
    store_recording_urls: bool = Field(
        default=False, description="Keep recording and log URLs in the ledger (privacy: off)."
    )
    adopt_attributed_calls: bool = Field(
        default=True,
        description="Record an unknown call whose metadata carries this proxy's attribution "
        "(its creation's ledger write failed) instead of only flagging its events.",
    )
    inbound: InboundSettings = Field(
        default_factory=InboundSettings, description="assistant-request routing."
    )
    respond: RespondSettings = Field(
        default_factory=RespondSettings, description="Relaying request types to the app."
    )
    forward: ForwardSettings = Field(
        default_factory=ForwardSettings, description="Forwarding events to the app."
    )
