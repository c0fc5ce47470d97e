"""The `limits:` settings: which store holds the counters and which rules apply to whom.

Validated once at start-up and passed down to `create_limiter`; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, field_validator, model_validator

from vapi_proxy.auth.identity import AuthMethod
from vapi_proxy.configbase import StrictModel

FailureMode = Literal["closed", "open"]
Kind = Literal["call", "chat"]
Scope = Literal["identity", "tenant", "profile", "global"]


class _Strict(StrictModel):
    # Rules are shared by every request and keyed on: never changed after load.
    model_config = ConfigDict(frozen=True)


class RateLimit(_Strict):
    """Admissions per fixed clock window (epoch-aligned second, minute, hour)."""

    per_second: int | None = Field(None, ge=1, description="Most admissions in one second.")
    per_minute: int | None = Field(None, ge=1, description="Most admissions in one minute.")
    per_hour: int | None = Field(None, ge=1, description="Most admissions in one hour.")


class QuotaLimit(_Strict):
    """Admissions per calendar day or month in `limits.time_zone`."""

    per_day: int | None = Field(
        None, ge=0, description="Most admissions per calendar day (resets at local midnight)."
    )
    per_month: int | None = Field(
        None, ge=0, description="Most admissions per calendar month (resets on the 1st)."
    )


class BudgetLimit(_Strict):
    """Call minutes and USD per calendar day or month, settled from Vapi's end-of-call-report."""

    minutes_per_day: float | None = Field(
        None, ge=0, description="Call minutes per calendar day (worst case held until settled)."
    )
    minutes_per_month: float | None = Field(None, ge=0, description="Call minutes per month.")
    usd_per_day: float | None = Field(
        None, ge=0, description="USD cost per calendar day (estimate held until settled)."
    )
    usd_per_month: float | None = Field(None, ge=0, description="USD cost per month.")
    admit_worst_case: bool = Field(
        True,
        description=(
            "True: admit a call only if its worst case (maxDurationSeconds, estimated cost) fits "
            "what is left. False: admit while anything is left (the last call may overrun)."
        ),
    )


class RuleMatch(_Strict):
    """Which requests a rule applies to; every given condition must hold (empty matches all)."""

    profiles: list[str] | None = Field(None, description="Profile names the rule applies to.")
    methods: list[AuthMethod] | None = Field(
        None, description="Authentication methods (`jwt`, `api_key`, `anonymous`)."
    )
    issuers: list[str] | None = Field(
        None,
        description=(
            "The configured `issuer`s of the jwt methods whose tokens the rule applies to (other "
            "callers never match it). With several jwt methods, a rule that is tenant-scoped or "
            "matches tenants or claims must name them: tenant names and claims are each "
            "provider's own. A tenant-scoped rule that names issuers counts each issuer's "
            "tenants apart."
        ),
        min_length=1,
    )
    tenants: list[str] | None = Field(None, description="Tenants the rule applies to.")
    claims: dict[str, list[Any]] | None = Field(
        None,
        description=(
            "Claim path to accepted values, e.g. `{plan: [pro, team]}` or, for a nested claim, "
            "`{app_metadata.plan: [free]}` (the same dotted paths as access rules). A "
            "list-valued claim matches when any of its items is accepted."
        ),
    )


class LimitRule(_Strict):
    """One named limit: who it counts together (scope), whom it applies to, and its caps."""

    name: str = Field(
        ...,
        min_length=1,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Unique name; part of every counter key, so renaming resets the counters.",
    )
    scope: Scope = Field(
        "identity",
        description=(
            "Who shares one counter: each `identity`, each `tenant` (identities without a tenant "
            "count on their own), each `profile`, or everyone (`global`)."
        ),
    )
    per_profile: bool = Field(
        False, description="Keep a separate counter for each profile within the scope."
    )
    group: str | None = Field(
        None,
        description=(
            "Rules sharing a group are alternatives: only the first matching one (in file "
            "order) applies. Use it for tiers, e.g. `pro` before a catch-all `free`."
        ),
    )
    match: RuleMatch = Field(default_factory=RuleMatch, description="Whom the rule applies to.")
    kinds: list[Kind] = Field(
        default_factory=lambda: list[Kind](["call"]),
        min_length=1,
        description="What the rule counts: `call` starts, `chat` turns, or both (counted apart).",
    )
    rate: RateLimit | None = Field(None, description="Admissions per second, minute, hour.")
    quota: QuotaLimit | None = Field(None, description="Admissions per calendar day, month.")
    concurrency: int | None = Field(
        None, ge=0, description="Live calls at once; a slot is held until the call is settled."
    )
    budget: BudgetLimit | None = Field(None, description="Minutes and USD per day, month.")
    failure_mode: FailureMode | None = Field(
        None,
        description="When the store is unreachable: refuse (`closed`) or admit (`open`); "
        "defaults to `limits.failure_mode`.",
    )

    @model_validator(mode="after")
    def _has_a_limit(self) -> LimitRule:
        if all(x is None for x in (self.rate, self.quota, self.concurrency, self.budget)):
            raise ValueError(f"limit rule {self.name!r} sets no rate, quota, concurrency or budget")
        return self


class LimitsSettings(_Strict):
    """Everything the limiter needs; see docs/limits.md for the YAML shape."""

    backend: str = Field(
        "ledger://",
        description=(
            "Where counters live: `ledger://` (the default: the ledger's database; with a "
            "SQLite ledger, in-process counters kept durable in its file, shared by every "
            "worker of the machine and kept across restarts), `sqlite:///path.db` (the same in "
            "a file of its own), `postgresql://…` or `redis://…` / `rediss://…` (TLS) "
            "(several replicas; docs/limits.md lists the Redis URL's options), "
            "`memory://` (one process; counts are lost on every restart)."
        ),
    )
    time_zone: str = Field(
        "UTC", description="IANA zone whose midnight and 1st of the month reset quotas, budgets."
    )
    grace_seconds: float = Field(
        120.0,
        ge=0,
        description=(
            "A call's concurrency slot expires this long after its maxDurationSeconds if no "
            "end-of-call-report arrives."
        ),
    )
    failure_mode: FailureMode = Field(
        "closed",
        description="Default for rules when the store is unreachable: `closed` refuses (503), "
        "`open` admits without counting.",
    )
    namespace: str = Field(
        "vapi-proxy",
        min_length=1,
        description="Prefix of every key the limiter writes, so deployments can share a store.",
    )
    timeout_seconds: float = Field(
        2.0, gt=0, description="How long one store operation may take before it counts as down."
    )
    rules: list[LimitRule] = Field(default_factory=list, description="The limits, in order.")

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("backend")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0].lower()
        known = {"ledger", "memory", "sqlite", "postgresql", "postgres", "redis", "rediss"}
        if scheme not in known:
            raise ValueError(
                f"limits backend {value!r}: use ledger://, sqlite:///…, postgresql://…, "
                "redis://… or memory://"
            )
        if scheme in {"redis", "rediss"}:
            from vapi_proxy.limits.resp import parse_url

            parse_url(value)  # a ValueError names what the client cannot serve
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> LimitsSettings:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"two limit rules are named {rule.name!r}")
            seen.add(rule.name)
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


def unbound_issuer_limit_rules(
    rules: Sequence[LimitRule], jwt_issuers: Sequence[str | None]
) -> list[str]:
    """Rules that would count or select two jwt methods' callers by names each provider issues
    on its own (a tenant, a claim value): with several jwt methods such a rule must name the
    `issuers` it means, like an access rule (`policy.access.unbound_issuer_rules`)."""
    if len(jwt_issuers) < 2:
        return []
    return [
        rule.name
        for rule in rules
        if (rule.scope == "tenant" or rule.match.tenants is not None or rule.match.claims)
        and rule.match.issuers is None
        and (rule.match.methods is None or "jwt" in rule.match.methods)
    ]
