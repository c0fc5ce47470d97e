"""Configuration of the Vapi simulator: one pydantic model, loadable from YAML.

Every field carries a description; `docs/sandbox.md` documents the same names and a test checks
that none is missing there.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr


def _key() -> SecretStr:
    # Vapi keys are UUID strings (Vapi facts §3); fresh ones per run, never a fixed default.
    return SecretStr(str(uuid.uuid4()))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TokenRestrictions(_Model):
    """Restrictions of a public key or public JWT (Vapi `TokenRestrictions`)."""

    enabled: bool = Field(True, description="A disabled key is refused with 401.")
    allowedOrigins: list[str] | None = Field(
        None, description="`Origin` header values allowed; absent means any origin."
    )
    allowedAssistantIds: list[str] | None = Field(
        None, description="assistantIds allowed; absent means any. Setting it forbids transients."
    )
    allowTransientAssistant: bool = Field(
        True, description="Whether a transient `assistant` object may be sent (default true)."
    )


class ServerConfig(_Model):
    """A webhook target, the shape of Vapi's `Server` object (Vapi facts §4.3)."""

    url: str = Field(description='Where `POST {"message": ...}` deliveries go.')
    timeoutSeconds: float = Field(20, ge=1, le=300, description="Delivery timeout (Vapi: 20 s).")
    credentialId: str | None = Field(None, description="Id of an entry in `credentials`.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers sent with every delivery."
    )
    secret: SecretStr | None = Field(
        None, description="Legacy inline secret, sent as `X-Vapi-Secret` (undocumented by Vapi)."
    )


class BearerCredential(_Model):
    """Vapi `BearerAuthenticationPlan`: a static token in a header."""

    id: str = Field(description="The id a `server.credentialId` refers to.")
    type: Literal["bearer"] = Field(description="Discriminator.")
    token: SecretStr = Field(description="The token value.")
    headerName: str = Field("Authorization", description="Header carrying the token.")
    bearerPrefixEnabled: bool = Field(True, description="Prefix the value with `Bearer `.")


class HmacCredential(_Model):
    """Vapi `HMACAuthenticationPlan`: a signature over timestamp and body."""

    id: str = Field(description="The id a `server.credentialId` refers to.")
    type: Literal["hmac"] = Field(description="Discriminator.")
    secretKey: SecretStr = Field(description="The HMAC key.")
    algorithm: Literal["sha256", "sha512", "sha1"] = Field("sha256", description="Digest.")
    signatureHeader: str = Field("x-signature", description="Header carrying the signature.")
    timestampHeader: str = Field("x-timestamp", description="Header carrying the timestamp.")
    includeTimestamp: bool = Field(True, description="Send the timestamp header.")
    payloadFormat: str = Field(
        "{timestamp}.{body}",
        description="What is signed; placeholders {body} {timestamp} {method} {url} {svix-id}.",
    )
    signaturePrefix: str = Field("", description="Prepended to the signature, e.g. `sha256=`.")
    signatureEncoding: Literal["hex", "base64"] = Field("hex", description="Signature encoding.")
    secretIsBase64: bool = Field(False, description="Decode `secretKey` from base64 first.")
    messageIdHeader: str | None = Field(None, description="Svix-style message id header name.")
    timestampUnit: Literal["s", "ms"] = Field(
        "s", description="Unit of the timestamp (unverified in Vapi's docs; seconds by default)."
    )


Credential = Annotated[BearerCredential | HmacCredential, Field(discriminator="type")]


class SeededAssistant(BaseModel):
    """A saved assistant; any other Vapi assistant fields (model, voice, server...) are kept."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="The assistantId clients use.")
    name: str | None = Field(None, description="Display name.")


class SeededSquad(BaseModel):
    """A saved squad (`GET /squad/{id}`); any other Vapi squad fields are kept."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="The squadId clients use.")
    name: str | None = Field(None, description="Display name.")
    members: list[dict[str, Any]] = Field(
        default_factory=list, description="The squad's members, as Vapi's `SquadMemberDTO`s."
    )


class SeededWorkflow(BaseModel):
    """A saved workflow (`GET /workflow/{id}`); any other Vapi workflow fields are kept."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="The workflowId clients use.")
    name: str = Field("Workflow", description="Display name (required in Vapi's `Workflow`).")
    nodes: list[dict[str, Any]] = Field(default_factory=list, description="The workflow's nodes.")
    edges: list[dict[str, Any]] = Field(default_factory=list, description="The workflow's edges.")


class SeededPhoneNumber(_Model):
    """A phone number of the simulated org, usable as `phoneNumberId`."""

    id: str = Field(description="The phoneNumberId.")
    number: str = Field(description="E.164 number, e.g. +15550100.")
    name: str | None = Field(None, description="Display name.")
    assistantId: str | None = Field(
        None, description="Assistant for inbound calls; none means `assistant-request` is sent."
    )
    server: ServerConfig | None = Field(None, description="The number's server (precedence 3).")


class LifecycleSettings(_Model):
    """When a call moves on, in seconds after creation (read from the clock)."""

    ringing_after: float = Field(1.0, ge=0, description="queued → ringing (phone calls only).")
    in_progress_after: float = Field(2.0, ge=0, description="→ in-progress.")
    duration: float = Field(
        30.0, ge=0, description="in-progress → ended (customer-ended-call), capped by max duration."
    )


class ChatSettings(_Model):
    """How the simulated assistant answers chats."""

    reply_prefix: str = Field("You said: ", description="Reply = prefix + the last user input.")
    chunk_chars: int = Field(8, ge=1, description="Characters per streamed delta.")
    stream_delay_seconds: float = Field(0.0, ge=0, description="Pause between streamed deltas.")


class FaultSpec(_Model):
    """One injected fault: which requests it hits, what it does, how many times."""

    method: str = Field("*", description="HTTP method or `*`.")
    path: str = Field(description="fnmatch pattern on the path, e.g. `/call/*` or `/chat*`.")
    latency_seconds: float = Field(0.0, ge=0, description="Delay added before answering.")
    action: Literal[
        "none",
        "status",
        "drop-before-body",
        "drop-after-body",
        "stall-stream",
        "truncate-stream",
    ] = Field("none", description="What happens after the delay.")
    status: Literal[400, 401, 403, 404, 422, 429, 500, 502, 503] = Field(
        503, description="Code for `action: status`."
    )
    retry_after: int | str | None = Field(
        None, description="`Retry-After` header, sent as given (seconds or any text)."
    )
    message: str | list[str] | None = Field(
        None, description="Replaces the `message` of the error body (e.g. a validation reason)."
    )
    after_events: int = Field(1, ge=0, description="SSE events sent before a stall/truncation.")
    stall_seconds: float = Field(3600.0, ge=0, description="How long a stalled stream hangs.")
    count: int | None = Field(None, ge=1, description="Apply to the next N requests; null = all.")


class SandboxSettings(_Model):
    """Everything the simulator needs; build it in code or load it with `from_yaml`."""

    host: str = Field("127.0.0.1", description="Address `vapi-proxy sandbox` binds to.")
    port: int = Field(8787, ge=0, le=65535, description="Port `vapi-proxy sandbox` binds to.")
    public_url: str | None = Field(
        None, description="Base URL put in `monitor.controlUrl`; default: from the Host header."
    )
    private_key: SecretStr = Field(default_factory=_key, description="Private API key.")
    public_key: SecretStr = Field(default_factory=_key, description="Public API key.")
    public_key_restrictions: TokenRestrictions = Field(
        default_factory=TokenRestrictions, description="Restrictions of the public key."
    )
    org_id: str = Field(default_factory=lambda: str(uuid.uuid4()), description="The org id.")
    admin_enabled: bool = Field(False, description="Serve `/__sandbox/*` (404 otherwise).")
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins that may call the sandbox from a browser (`*`: any); empty: no CORS.",
    )
    accept_any_assistant_id: bool = Field(
        False, description="Treat any unknown assistantId as a blank saved assistant."
    )
    assistants: list[SeededAssistant] = Field(default_factory=list, description="Saved assistants.")
    squads: list[SeededSquad] = Field(default_factory=list, description="Saved squads.")
    workflows: list[SeededWorkflow] = Field(default_factory=list, description="Saved workflows.")
    phone_numbers: list[SeededPhoneNumber] = Field(
        default_factory=list, description="Phone numbers of the org."
    )
    server: ServerConfig | None = Field(None, description="Org-level server URL (precedence 4).")
    credentials: list[Credential] = Field(
        default_factory=list, description="Webhook credentials referenced by `credentialId`."
    )
    lifecycle: LifecycleSettings = Field(
        default_factory=LifecycleSettings, description="Call lifecycle timing."
    )
    cost_per_minute: float = Field(0.05, ge=0, description="USD per minute of call.")
    assistant_request_timeout_seconds: float = Field(
        7.5, gt=0, description="Deadline for `assistant-request` (fixed 7.5 s at Vapi)."
    )
    chat: ChatSettings = Field(default_factory=ChatSettings, description="Chat replies.")
    faults: list[FaultSpec] = Field(default_factory=list, description="Faults active at start.")
    request_log_enabled: bool = Field(True, description="Record requests for inspection.")
    request_log_size: int = Field(1000, ge=1, description="Ring-buffer size of the request log.")
    webhook_log_size: int = Field(1000, ge=1, description="Ring-buffer size of deliveries.")
    max_calls: int = Field(10_000, ge=1, description="Calls kept; the oldest are forgotten.")
    max_chats: int = Field(10_000, ge=1, description="Chats kept; the oldest are forgotten.")

    @classmethod
    def from_yaml(cls, path: str | Path) -> SandboxSettings:
        """Load settings from a YAML mapping whose keys are the field names."""
        raw: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        return cls.model_validate(raw)
