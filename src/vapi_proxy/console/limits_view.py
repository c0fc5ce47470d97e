"""What is left under the limits, for the console's top users and `GET /me/usage`, from the
limiter's read-only `usage()`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vapi_proxy.auth.identity import Identity, parse_identity_key
from vapi_proxy.limits.base import Limiter, RuleUsage


def rule_view(usage: RuleUsage) -> dict[str, Any]:
    resets = usage.resets_at
    return {
        "rule": usage.rule,
        "what": usage.what,
        "kind": usage.kind,
        "period": usage.period,
        "scope": usage.scope,
        "limit": usage.limit,
        "used": usage.used,
        "remaining": usage.remaining,
        "resetsAt": None
        if resets is None
        else datetime.fromtimestamp(resets, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
    }


def identity_from_ledger(key: str, tenant: str | None) -> Identity:
    """The identity a ledger row names, as far as the ledger knows it (no claims: a rule that
    matches on claims does not show here, only in the user's own `GET /me/usage`)."""
    method, subject, issuer = parse_identity_key(key)
    return Identity(
        subject=subject,
        method=method,  # type: ignore[arg-type]
        tenant=tenant,
        issuer=issuer,
    )


async def remaining(
    limiter: Limiter, identity: Identity, profile: str | None
) -> list[dict[str, Any]]:
    return [rule_view(u) for u in await limiter.usage(identity, profile)]
