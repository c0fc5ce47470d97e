"""Profile access rules as a table: claims, roles, tenants, methods, anonymous, key profiles."""

from __future__ import annotations

from typing import Any

import pytest

from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import ForbiddenError, UnauthorizedError
from vapi_proxy.policy.access import AccessRule, check_access

ALICE = Identity(
    subject="alice",
    method="jwt",
    tenant="acme",
    claims={
        "plan": "pro",
        "seats": 5,
        "verified": True,
        "groups": ["sales", "eu"],
        "org": {"tier": "gold", "https://x.example/flags": ["beta"]},
        "https://app.example.com/plan": "team",
    },
    roles=frozenset({"coach"}),
)
ANON = Identity(subject="192.0.2.1", method="anonymous")
KEY = Identity(subject="svc", method="api_key", tenant="acme", profiles=frozenset({"p"}))

ALLOW, DENY = True, False

CASES: list[tuple[str, dict[str, Any], Identity, bool]] = [
    ("default admits a JWT user", {}, ALICE, ALLOW),
    ("default admits an API key", {}, KEY, ALLOW),
    ("claim equals", {"claims": {"plan": ["pro", "team"]}}, ALICE, ALLOW),
    ("claim differs", {"claims": {"plan": ["free"]}}, ALICE, DENY),
    ("claim missing", {"claims": {"nope": ["x"]}}, ALICE, DENY),
    ("list claim any element", {"claims": {"groups": ["eu"]}}, ALICE, ALLOW),
    ("list claim no element", {"claims": {"groups": ["us"]}}, ALICE, DENY),
    ("dotted path", {"claims": {"org.tier": ["gold"]}}, ALICE, ALLOW),
    ("dotted path wrong", {"claims": {"org.tier": ["silver"]}}, ALICE, DENY),
    ("URL claim name", {"claims": {"https://app.example.com/plan": ["team"]}}, ALICE, ALLOW),
    ("nested URL key", {"claims": {"org.https://x.example/flags": ["beta"]}}, ALICE, ALLOW),
    ("number claim", {"claims": {"seats": [5]}}, ALICE, ALLOW),
    ("number is not its string", {"claims": {"seats": ["5"]}}, ALICE, DENY),
    ("bool claim", {"claims": {"verified": [True]}}, ALICE, ALLOW),
    ("bool is not 1", {"claims": {"verified": [1]}}, ALICE, DENY),
    ("all claims must hold", {"claims": {"plan": ["pro"], "seats": [6]}}, ALICE, DENY),
    ("role any of", {"roles": ["admin", "coach"]}, ALICE, ALLOW),
    ("role none", {"roles": ["admin"]}, ALICE, DENY),
    ("tenant any of", {"tenants": ["acme", "globex"]}, ALICE, ALLOW),
    ("tenant none", {"tenants": ["globex"]}, ALICE, DENY),
    ("tenant missing", {"tenants": ["acme"]}, Identity("bob", "jwt"), DENY),
    ("method admitted", {"methods": ["jwt"]}, ALICE, ALLOW),
    ("method refused", {"methods": ["jwt"]}, KEY, DENY),
    ("API key and tenant", {"tenants": ["acme"], "methods": ["api_key"]}, KEY, ALLOW),
    ("anonymous opted in", {"anonymous": True}, ANON, ALLOW),
    ("anonymous with claim rule", {"anonymous": True, "claims": {"plan": ["pro"]}}, ANON, DENY),
    ("anonymous opt-in admits users too", {"anonymous": True}, ALICE, ALLOW),
]


@pytest.mark.parametrize(("name", "rule", "identity", "allowed"), CASES, ids=[c[0] for c in CASES])
def test_access_table(name: str, rule: dict[str, Any], identity: Identity, allowed: bool) -> None:
    access = AccessRule.model_validate(rule)
    if allowed:
        check_access(access, identity, "p")
    else:
        with pytest.raises(ForbiddenError, match=r"^Your account may not use the profile 'p'\.$"):
            check_access(access, identity, "p")


def test_anonymous_refused_by_default_asks_to_sign_in() -> None:
    with pytest.raises(UnauthorizedError, match="Sign in to use the profile 'sales-coach'"):
        check_access(AccessRule(), ANON, "sales-coach")


def test_api_key_profile_list() -> None:
    with pytest.raises(ForbiddenError, match="This API key may not use the profile 'other'"):
        check_access(AccessRule(), KEY, "other")


def test_refusal_does_not_reveal_the_rule() -> None:
    rule = AccessRule(claims={"plan": ["enterprise-secret-tier"]})
    with pytest.raises(ForbiddenError) as caught:
        check_access(rule, ALICE, "p")
    assert "enterprise" not in str(caught.value.message)


def test_rule_is_strict_config() -> None:
    with pytest.raises(ValueError, match="role"):
        AccessRule.model_validate({"role": ["admin"]})
    with pytest.raises(ValueError, match="methods"):
        AccessRule.model_validate({"methods": ["password"]})
