"""Configuration: a YAML file plus the environment → one validated `Settings`, built once.

Secrets never come from the file: the Vapi private key is read from `VAPI_API_KEY` or the file
named by `VAPI_API_KEY_FILE`. Any setting can be overridden from the environment as
`VAPI_PROXY__SECTION__FIELD=value` (the value is read as YAML), and `VAPI_BASE_URL` sets the
upstream. Errors name the exact field and why (`ConfigError`), and the environment variable when
the value came from one. The YAML reader refuses a key given twice in one mapping.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from vapi_proxy.auth.config import AuthSettings
from vapi_proxy.configbase import StrictModel, config_context
from vapi_proxy.limits.config import LimitsSettings, unbound_issuer_limit_rules
from vapi_proxy.policy.access import unbound_issuer_rules
from vapi_proxy.policy.profiles import FileRef, Profile
from vapi_proxy.webhooks.config import InboundAction, WebhookSettings

DEFAULT_BASE_URL = "https://api.vapi.ai"
ENV_PREFIX = "VAPI_PROXY__"


def _check_networks(values: list[str]) -> list[str]:
    """Each value must be an IP network (`10.0.0.0/8`, `::1/128`): `allowed_networks` settings."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network ({exc})") from None
    return values


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists each one as `path: reason`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class VapiSettings(StrictModel):
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="Vapi's API base URL (env VAPI_BASE_URL overrides it).",
    )
    connect_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="Time allowed to open a connection to Vapi."
    )
    timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="Total time allowed for one Vapi request."
    )
    pool_size: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Most open connections to Vapi per process, for each of its two kinds of "
        "request (buffered replies, and streamed chat replies): up to twice this in all.",
    )
    max_response_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest Vapi JSON reply accepted."
    )
    stream_idle_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest silence allowed in a streamed (SSE) chat reply from Vapi; past it the "
        "proxy ends the stream with an error event and closes the upstream connection.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class ServerSettings(StrictModel):
    path_prefix: str = Field(
        default="",
        description="Path the proxy is mounted under (e.g. /api/vapi); requests are accepted "
        "with and without it.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024, ge=256, le=16 * 1024 * 1024, description="Largest request body."
    )
    max_json_depth: int = Field(
        default=32, ge=2, le=256, description="Deepest JSON nesting accepted in a body."
    )
    drain_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="On SIGTERM (or a reload), how long in-flight requests and open streams "
        "may take to finish before they are cut.",
    )

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip()
        if not value or value == "/":
            return ""
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value.rstrip("/")


class CorsSettings(StrictModel):
    allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call from a browser, exactly as the browser sends "
        "them (scheme://host[:port]); '*' allows any origin (never with credentials).",
    )
    max_age_seconds: int = Field(
        default=600, ge=0, le=86400, description="How long browsers may cache a preflight."
    )

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        cleaned = []
        for value in values:
            origin = value.strip().rstrip("/")
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"origin {value!r} must be '*' or start with http(s)://")
            if origin != "*" and origin.count("/") > 2:
                raise ValueError(f"origin {value!r} must not have a path")
            cleaned.append(origin)
        return cleaned


class LoggingSettings(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged."
    )
    format: Literal["json", "console"] = Field(
        default="json", description="JSON lines for machines, or console for humans."
    )
    access_log: bool = Field(default=True, description="One line per request.")


class IntakeSettings(StrictModel):
    ignored_fields: list[str] = Field(
        default_factory=lambda: ["userId"],
        description="Fields a frontend may send as context that the proxy drops silently "
        "(identity always comes from the verified credential, never from the body).",
    )


class LedgerSettings(StrictModel):
    url: str = Field(
        default="sqlite:///vapi-proxy.db",
        description="Where the call ledger lives: `sqlite:////var/lib/vapi-proxy/ledger.db` "
        "(one machine; four slashes for an absolute path, three for one relative to the working "
        "directory; the folder must exist) or `postgresql://user@host/db` (several replicas). "
        "The password may come from the environment: VAPI_PROXY__LEDGER__URL.",
    )
    auto_migrate: bool = Field(
        default=True,
        description="Apply database migrations at start-up; off: run `vapi-proxy db upgrade` "
        "first and refuse to start on an old schema.",
    )
    timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="How long one ledger operation may take."
    )


class IdempotencySettings(StrictModel):
    ttl_seconds: int = Field(
        default=86400,
        ge=60,
        le=30 * 86400,
        description="How long a call creation's `Idempotency-Key` replays its first result.",
    )


class MetricsSettings(StrictModel):
    enabled: bool = Field(default=True, description="Serve Prometheus metrics at `path`.")
    path: str = Field(default="/metrics", description="Path of the metrics endpoint.")
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve metrics on this separate port (same host) instead of the main one; "
        "the supervisor serves it, every worker's values summed. It has no allowed-networks "
        "check: never route it publicly.",
    )
    allowed_networks: list[str] = Field(
        default_factory=lambda: [
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
        ],
        description="Clients (CIDR) allowed to scrape and to see /readyz's per-store details; "
        "others get 404 (and /readyz's status only). The client is resolved as everywhere "
        "(`auth.trusted_proxies`, `auth.client_address_header`), so a public caller relayed by "
        "a private-network balancer is public. Traffic volumes, profile names and store errors "
        "are not for the public.",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return _check_networks(values)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class AdminSettings(StrictModel):
    key_hashes: list[str] = Field(
        default_factory=list,
        description="Hashes (`sha256:<hex>`, from `vapi-proxy hash-key`) of the operator keys "
        "that may use the console (`/admin`) and its API (`/admin/api/...`, `GET /admin/usage`); "
        "empty turns every admin endpoint off (404). Separate from the end users' credentials.",
    )
    jwt_roles: list[str] = Field(
        default_factory=list,
        description="Roles (read by a jwt auth method's `roles_claim`) that make a verified JWT "
        "an admin credential as well: a token carrying one may sign in to the console or call "
        "the admin API. Empty: admin keys only.",
    )
    allowed_networks: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Client networks (CIDR) the console and admin API answer; others get 404. The "
        "client address is the one the proxy resolves (forwarded headers only from "
        "`auth.trusted_proxies`).",
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve the console and admin API only on this separate port (the proxy "
        "listens on it too); unset: on the main port.",
    )
    session_ttl_seconds: int = Field(
        default=8 * 3600,
        ge=60,
        le=7 * 86400,
        description="How long a console sign-in lasts. Sessions are kept in the ledger "
        "database, so every worker and replica knows them.",
    )
    actions_per_minute: int = Field(
        default=60,
        ge=1,
        le=10_000,
        description="Most state-changing admin actions (block, end a call, sign-in attempts) "
        "per operator (or per address, for sign-in) per minute, counted across replicas.",
    )
    reads_per_minute: int = Field(
        default=600,
        ge=1,
        le=100_000,
        description="Most admin API reads per operator per minute (per process).",
    )
    block_refresh_seconds: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="How often each process checks the ledger for changed identity blocks: a "
        "block or unblock takes effect on every replica within this time.",
    )

    @field_validator("key_hashes")
    @classmethod
    def _hashes(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
                raise ValueError("each must be sha256:<64 lowercase hex> (vapi-proxy hash-key)")
        return values

    @property
    def enabled(self) -> bool:
        """Whether any admin credential is configured (otherwise every admin route is a 404)."""
        return bool(self.key_hashes or self.jwt_roles)

    @field_validator("allowed_networks")
    @classmethod
    def _admin_networks(cls, values: list[str]) -> list[str]:
        return _check_networks(values)


class TracingSettings(StrictModel):
    enabled: bool = Field(
        default=False,
        description="OpenTelemetry traces: one server span per request with auth, limits, Vapi "
        "and ledger spans under it, and `trace_id`/`span_id` in the JSON logs. Needs the `otel` "
        "extra (`pip install 'vapi-proxy[otel]'`); the exporter, endpoint, sampler and service "
        "name come from the standard `OTEL_*` variables (docs/deployment.md). Off: nothing of "
        "OpenTelemetry is imported.",
    )
    accept_traceparent: Literal["never", "trusted_proxies", "always"] = Field(
        default="never",
        description="Whether a request's W3C `traceparent` (and the other `OTEL_PROPAGATORS` "
        "headers) continues the caller's trace: `never` starts a new trace for every request, "
        "so a browser cannot choose trace ids or force sampling; `trusted_proxies` only when the "
        "TCP peer is one of `auth.trusted_proxies` (a balancer or gateway that traces); `always` "
        "for a proxy that no untrusted client can reach.",
    )

    @field_validator("enabled")
    @classmethod
    def _installed(cls, value: bool) -> bool:
        if value:
            try:
                import opentelemetry.sdk.trace  # noqa: F401 (imported only when enabled)
            except ImportError:
                raise ValueError(
                    "tracing needs the OpenTelemetry packages: pip install 'vapi-proxy[otel]'"
                ) from None
        return value


class Settings(StrictModel):
    """Everything the proxy runs on, validated. Built once at start-up and passed down."""

    vapi: VapiSettings = Field(
        default_factory=VapiSettings, description="How the proxy reaches Vapi."
    )
    public_url: str | None = Field(
        default=None,
        description="How Vapi reaches this proxy (https://proxy.example.com); webhook URLs "
        "are built from it.",
    )
    webhook_path: str = Field(default="/webhook", description="Path of the webhook receiver.")
    webhooks: WebhookSettings = Field(
        default_factory=WebhookSettings,
        description="How Vapi's server messages are verified, answered and forwarded.",
    )
    server: ServerSettings = Field(
        default_factory=ServerSettings, description="HTTP limits and where the proxy is mounted."
    )
    cors: CorsSettings = Field(
        default_factory=CorsSettings, description="Which browser origins may call the proxy."
    )
    auth: AuthSettings = Field(
        default_factory=AuthSettings, description="How callers prove who they are (docs/auth.md)."
    )
    logging: LoggingSettings = Field(
        default_factory=LoggingSettings, description="Log level, format and the access log."
    )
    intake: IntakeSettings = Field(
        default_factory=IntakeSettings, description="How client bodies are read."
    )
    limits: LimitsSettings = Field(
        default_factory=LimitsSettings,
        description="Rate, quota, concurrency and budget limits (docs/limits.md).",
    )
    ledger: LedgerSettings = Field(
        default_factory=LedgerSettings, description="The call ledger's database."
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="Prometheus metrics."
    )
    admin: AdminSettings = Field(
        default_factory=AdminSettings, description="Operator endpoints (usage reports)."
    )
    idempotency: IdempotencySettings = Field(
        default_factory=IdempotencySettings,
        description="Replays of call creations that carry an `Idempotency-Key` header.",
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings,
        description="OpenTelemetry tracing (off unless enabled; docs/deployment.md).",
    )
    profiles: dict[str, Profile] = Field(
        default_factory=dict, description="Named profiles a client may start."
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("webhook_path")
    @classmethod
    def _webhook_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, value: dict[str, Profile]) -> dict[str, Profile]:
        for name in value:
            if not name or len(name) > 80 or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(
                    f"profile name {name!r} must be 1-80 letters, digits, '-', '_' or '.'"
                )
        return value

    @model_validator(mode="after")
    def _access_names_its_issuer(self) -> Settings:
        # Tenant names, roles and claims are each identity provider's own (docs/auth.md).
        unbound = unbound_issuer_rules(
            {name: p.access for name, p in self.profiles.items()}, self.auth.jwt_issuers
        )
        if unbound:
            raise ValueError(
                f"profiles {', '.join(unbound)}: with several jwt methods, an access rule with "
                "tenants, roles or claims must name the `issuers` whose tokens may meet it"
            )
        unbound = unbound_issuer_limit_rules(self.limits.rules, self.auth.jwt_issuers)
        if unbound:
            raise ValueError(
                f"limits.rules {', '.join(unbound)}: with several jwt methods, a limit rule "
                "that is tenant-scoped or matches tenants or claims must name the "
                "`match.issuers` it applies to (each provider's tenant names and claims are "
                "its own; naming them also counts each issuer's tenants apart)"
            )
        return self


class Secrets(StrictModel):
    """Secrets from the environment or files; `repr` never shows them."""

    vapi_api_key: SecretStr | None = None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last one silently, so a second `auth:` would quietly replace the first)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            # Only the keys written in this mapping: a key overriding one merged in with `<<:`
            # is how YAML merges are meant to be used.
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: PyYAML reports it itself below
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} on line {line} (first on line {first}); "
                        "YAML would keep only the last one",
                        key_node.start_mark,
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


def read_yaml(text: str) -> Any:
    """Parse YAML like `yaml.safe_load`, refusing duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _yaml_problem(file: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"{file}:{mark.line + 1}: not valid YAML: {problem}"
    return f"{file}: not valid YAML ({exc})"


def _format_errors(exc: ValidationError, origins: Mapping[tuple[str, ...], str]) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling; see the config reference)"
        parts = tuple(str(part) for part in err["loc"])
        source = next((name for path, name in origins.items() if parts[: len(path)] == path), None)
        if source is not None:
            msg += f" (the value comes from the environment variable {source})"
        problems.append(f"{loc}: {msg}")
    return problems


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> list[str]:
    """Set `value` at `path`, matching existing keys case-insensitively; returns the real path.

    Environment variable names are often written in capitals, but profile names and Vapi
    variables are not (`SalesCoach`, `firstName`): an existing key is matched whatever its case,
    and a new key keeps the case it was written in unless it is all capitals (a setting name).
    """
    node = tree
    real: list[str] = []
    for index, part in enumerate(path):
        key = part if part in node else None
        if key is None:
            matches = [k for k in node if isinstance(k, str) and k.lower() == part.lower()]
            key = matches[0] if len(matches) == 1 else (part.lower() if part.isupper() else part)
        real.append(key)
        if index == len(path) - 1:
            node[key] = value
        else:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
    return real


def _apply_environment(
    raw: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The config with the environment's overrides, and which variable set which path."""
    merged = copy.deepcopy(raw)
    origins: dict[tuple[str, ...], str] = {}
    for name, text in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            path = [part for part in name[len(ENV_PREFIX) :].split("__") if part]
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                value = text
            origins[tuple(_set_path(merged, path, value))] = name
    if environ.get("VAPI_BASE_URL"):
        _set_path(merged, ["vapi", "base_url"], environ["VAPI_BASE_URL"])
        origins[("vapi", "base_url")] = "VAPI_BASE_URL"
    return merged, origins


def apply_environment(raw: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The config mapping with the environment's `VAPI_PROXY__…` and `VAPI_BASE_URL` applied."""
    return _apply_environment(dict(raw), environ)[0]


def without_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment without the names `apply_environment` reads, for a config already
    merged with them (what is left still resolves the secrets the config names)."""
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith(ENV_PREFIX) and name != "VAPI_BASE_URL"
    }


def sqlite_folder_problem(url: str) -> str | None:
    """Why a `sqlite:` URL cannot be opened (its folder is missing), or None.

    SQLite creates the file but not the folder, and the driver's error is a traceback. Three
    slashes are a path relative to the working directory (`sqlite:///data/x.db`), four an
    absolute one (`sqlite:////var/lib/vapi-proxy/x.db`).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0].lower() != "sqlite":
        return None
    path = rest[1:].split("?", 1)[0] if rest.startswith("/") else ""
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    folder = Path(path).parent
    shown = folder if folder.is_absolute() else f"{folder} (relative to {Path.cwd()})"
    if not folder.is_dir():
        return (
            f"the folder {shown} does not exist: create it, or use an absolute path "
            "(sqlite:////abs/path.db, four slashes)"
        )
    return None


def _load_file_ref(ref: dict[str, Any], base_dir: Path, where: str) -> Any:
    path = (base_dir / str(ref["file"])).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{where}.file: cannot read {path} ({exc.strerror})"]) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else read_yaml(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError([f"{where}.file: {path} is not valid JSON/YAML ({exc})"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{where}.file: {path} must hold a JSON object"])
    return data


def _resolve_files(raw: dict[str, Any], base_dir: Path) -> None:
    profiles = raw.get("profiles")
    if not isinstance(profiles, dict):
        return
    for name, profile in profiles.items():
        if not isinstance(profile, dict):
            continue
        for key in ("assistant", "squad", "workflow"):
            value = profile.get(key)
            if isinstance(value, dict) and set(value) == {"file"}:
                profile[key] = _load_file_ref(value, base_dir, f"profiles.{name}.{key}")


def parse_settings(
    raw: Mapping[str, Any] | None,
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Validate a config mapping (as read from YAML) merged with the environment."""
    environ = os.environ if environ is None else environ
    data, origins = _apply_environment(dict(raw or {}), environ)
    vapi = data.get("vapi")
    if isinstance(vapi, dict) and ({"api_key", "private_key", "key"} & set(vapi)):
        raise ConfigError(
            [
                "vapi.api_key: the Vapi private key must not be in the config file; "
                "set VAPI_API_KEY or VAPI_API_KEY_FILE"
            ]
        )
    _resolve_files(data, base_dir or Path.cwd())
    try:
        settings = Settings.model_validate(data, context=config_context(environ))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origins)) from None
    # Checks that span sections (a webhook rule naming a profile, ...).
    cross = webhook_problems(settings)
    for where, url in (
        ("ledger.url", settings.ledger.url),
        ("limits.backend", settings.limits.backend),
    ):
        problem = sqlite_folder_problem(url)
        if problem is not None:
            cross.append(f"{where}: {problem}")
    if cross:
        raise ConfigError(cross)
    for name, profile in settings.profiles.items():
        for key in ("assistant", "squad", "workflow"):
            if isinstance(getattr(profile, key), FileRef):
                raise ConfigError([f"profiles.{name}.{key}.file: was not resolved"])
    return settings


def webhook_problems(settings: Settings) -> list[str]:
    """Webhook problems that span sections, which pydantic cannot see per section (a rule's
    profile name, `respond.url` for forwarding rules)."""
    hooks = settings.webhooks
    problems = []
    inbound = hooks.inbound
    actions: list[tuple[str, InboundAction]] = [
        (f"webhooks.inbound.rules.{r.name}", r) for r in inbound.rules
    ]
    if inbound.default is not None:
        actions.append(("webhooks.inbound.default", inbound.default))
    if hooks.respond.url is not None and not hooks.forward.secrets:
        problems.append(
            "webhooks.respond.url: relayed requests are signed with the app's secret; set "
            "webhooks.forward.secret_env or secret_file"
        )
    for where, action in actions:
        if action.profile is not None and action.profile not in settings.profiles:
            problems.append(f"{where}.profile: no profile named {action.profile!r}")
        if action.forward and hooks.respond.url is None:
            problems.append(f"{where}.forward: needs webhooks.respond.url")
    return problems


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The config file as a mapping, unvalidated (duplicate keys and bad YAML refused)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read the config file ({exc.strerror})"]) from None
    try:
        raw = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(file, exc)]) from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError([f"{file}: the top level must be a mapping"])
    return raw or {}


def load_settings(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> Settings:
    """Read and validate a YAML config file."""
    raw = read_config_file(path)
    return parse_settings(raw, base_dir=Path(path).resolve().parent, environ=environ)


def load_ledger_settings(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> LedgerSettings:
    """Only the `ledger:` section of a config file (with its environment overrides).

    `vapi-proxy db` and `usage` need the database and nothing else, so they must not require
    the runtime's secrets (webhook and JWT secrets are read when the whole config loads).
    """
    environ = os.environ if environ is None else environ
    data, origins = _apply_environment(read_config_file(path), environ)
    try:
        ledger = LedgerSettings.model_validate(
            data.get("ledger") or {}, context=config_context(environ)
        )
    except ValidationError as exc:
        inner = {k[1:]: v for k, v in origins.items() if k[:1] == ("ledger",)}
        raise ConfigError([f"ledger.{p}" for p in _format_errors(exc, inner)]) from None
    problem = sqlite_folder_problem(ledger.url)
    if problem is not None:
        raise ConfigError([f"ledger.url: {problem}"])
    return ledger


def load_secrets(environ: Mapping[str, str] | None = None) -> Secrets:
    """Read the Vapi key from VAPI_API_KEY or the file named by VAPI_API_KEY_FILE."""
    environ = os.environ if environ is None else environ
    key = environ.get("VAPI_API_KEY")
    key_file = environ.get("VAPI_API_KEY_FILE")
    if key and key_file:
        raise ConfigError(["VAPI_API_KEY and VAPI_API_KEY_FILE are both set; set only one"])
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                [f"VAPI_API_KEY_FILE: cannot read {key_file} ({exc.strerror})"]
            ) from None
        if not key:
            raise ConfigError([f"VAPI_API_KEY_FILE: {key_file} is empty"])
    return Secrets(vapi_api_key=SecretStr(key.strip()) if key else None)
