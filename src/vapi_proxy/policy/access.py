"""Who may use a profile: the `access:` rule and the pure check of an identity against it.

Every condition set must hold (AND); within one condition any listed value will do (OR). Refusals
name the profile but not the condition, so a caller learns nothing about other users' claims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import ConfigDict, Field

from vapi_proxy.auth.claims import claim_matches, lookup
from vapi_proxy.auth.identity import AuthMethod, Identity
from vapi_proxy.configbase import StrictModel
from vapi_proxy.errors import ForbiddenError, UnauthorizedError

ClaimValue = str | int | float | bool


class AccessRule(StrictModel):
    """Conditions an identity must meet to start a profile; the default admits any signed-in
    caller (JWT or API key) and no anonymous one."""

    model_config = ConfigDict(frozen=True)

    anonymous: bool = Field(
        default=False,
        description="Admit callers without a credential (the `anonymous` auth method must be "
        "configured too). Other conditions still apply, so keep them empty here.",
    )
    claims: dict[str, list[ClaimValue]] = Field(
        default_factory=dict,
        description="Each named claim (dotted path allowed) must equal one of the listed values; "
        "a list-valued claim matches when any element does.",
    )
    roles: list[str] = Field(
        default_factory=list, description="The identity must hold at least one of these roles."
    )
    tenants: list[str] = Field(
        default_factory=list, description="The identity's tenant must be one of these."
    )
    issuers: list[str] = Field(
        default_factory=list,
        description="The identity must come from a jwt method with one of these `issuer`s; "
        "callers of other methods are refused. Set it whenever several jwt methods are "
        "configured: tenant names, roles and claims are each issuer's own, so another issuer "
        "could otherwise meet `tenants`, `roles` or `claims`.",
    )
    methods: list[AuthMethod] | None = Field(
        default=None,
        description="Authentication methods admitted (`jwt`, `api_key`, `anonymous`, `phone` "
        "for inbound callers routed by webhooks.inbound); unset admits all that the other "
        "conditions allow.",
    )


def unbound_issuer_rules(
    rules: Mapping[str, AccessRule], jwt_issuers: Sequence[str | None]
) -> list[str]:
    """Profiles whose rule another jwt method's tokens could meet by naming the same tenant, role
    or claim value: with several jwt methods, such a rule must say whose names it means."""
    if len(jwt_issuers) < 2:
        return []
    return [
        name
        for name, rule in rules.items()
        if (rule.tenants or rule.roles or rule.claims)
        and not rule.issuers
        and (rule.methods is None or "jwt" in rule.methods)
    ]


def check_access(rule: AccessRule, identity: Identity, profile_name: str) -> None:
    """Return if `identity` may use the profile; raise a readable refusal if not.

    An anonymous caller refused gets a 401 (signing in would help) rather than a 403.
    """
    if identity.method == "anonymous" and not rule.anonymous:
        raise UnauthorizedError(
            f"Sign in to use the profile '{profile_name}'.", error="invalid_request"
        )
    if identity.profiles is not None and profile_name not in identity.profiles:
        raise ForbiddenError(f"This API key may not use the profile '{profile_name}'.")
    if not _admits(rule, identity):
        raise ForbiddenError(f"Your account may not use the profile '{profile_name}'.")


def _admits(rule: AccessRule, identity: Identity) -> bool:
    if rule.methods is not None and identity.method not in rule.methods:
        return False
    if rule.issuers and (identity.method != "jwt" or identity.issuer not in rule.issuers):
        return False
    if rule.tenants and identity.tenant not in rule.tenants:
        return False
    if rule.roles and identity.roles.isdisjoint(rule.roles):
        return False
    return all(
        claim_matches(lookup(identity.claims, path), allowed)
        for path, allowed in rule.claims.items()
    )
