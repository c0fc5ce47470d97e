"""Two JWT issuers are two namespaces of users: the same `sub` at each is two callers (issue 13.5).

A `sub` at the second issuer must not read the first's calls (the reply holds the `callToken`
that joins the live room), list them, share their limits or meet access rules meant for them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.support.http import post
from tests.support.proxy import ProxyFactory, base_config
from vapi_proxy.settings import ConfigError, parse_settings

ISSUER_A = "https://a.idp.example/"
ISSUER_B = "https://b.idp.example/"
SECRET_A = "a" * 48
SECRET_B = "b" * 48


def token(issuer: str, secret: str, sub: str = "user-1", **claims: Any) -> str:
    body = {"iss": issuer, "sub": sub, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


def with_two_issuers(config: dict[str, Any], folder: Path) -> None:
    (folder / "a").write_text(SECRET_A)
    (folder / "b").write_text(SECRET_B)
    config["auth"]["methods"] = [
        {
            "type": "jwt",
            "issuer": issuer,
            "secret_file": str(folder / name),
            "algorithms": ["HS256"],
            "tenant_claim": "org",
        }
        for issuer, name in ((ISSUER_A, "a"), (ISSUER_B, "b"))
    ]
    config["limits"] = {
        "backend": "memory://",
        "rules": [{"name": "per-user", "quota": {"per_day": 1}}],
    }
    config["profiles"]["acme-only"] = {
        "assistant_id": config["profiles"]["sales-coach"]["assistant_id"],
        "access": {"tenants": ["acme"], "issuers": [ISSUER_A]},
    }


@pytest.fixture
def two_issuers(make_proxy: ProxyFactory, tmp_path: Path) -> Any:
    return make_proxy(lambda config: with_two_issuers(config, tmp_path))


def test_same_sub_at_another_issuer_is_another_caller(two_issuers: Any) -> None:
    server = two_issuers
    alice = token(ISSUER_A, SECRET_A)
    mallory = token(ISSUER_B, SECRET_B)  # the same `sub`, minted by the other provider
    created = post(server, {"assistantId": "sales-coach"}, alice)
    assert created.status_code == 201, created.text
    call_id = created.json()["id"]

    def get(path: str, who: str) -> httpx.Response:
        return httpx.get(server.url + path, headers={"Authorization": f"Bearer {who}"})

    assert get(f"/call/{call_id}", alice).status_code == 200
    assert get(f"/call/{call_id}", mallory).status_code == 404
    assert [c["id"] for c in get("/call", alice).json()] == [call_id]
    assert get("/call", mallory).json() == []
    # Limits are per caller too: alice has used her one call of the day, mallory has not.
    assert post(server, {"assistantId": "sales-coach"}, alice).status_code == 429
    assert post(server, {"assistantId": "sales-coach"}, mallory).status_code == 201


def test_a_tenant_rule_names_its_issuer(two_issuers: Any) -> None:
    server = two_issuers
    member = token(ISSUER_A, SECRET_A, sub="m-1", org="acme")
    impostor = token(ISSUER_B, SECRET_B, sub="m-2", org="acme")
    assert post(server, {"assistantId": "acme-only"}, member).status_code == 201
    refused = post(server, {"assistantId": "acme-only"}, impostor)
    assert refused.status_code == 403, refused.text


def test_with_several_issuers_a_tenant_rule_must_name_one(tmp_path: Path) -> None:
    config = base_config("http://127.0.0.1:9", "k" * 40, "o" * 40)
    with_two_issuers(config, tmp_path)
    config["profiles"]["acme-only"]["access"].pop("issuers")
    with pytest.raises(ConfigError, match="must name the `issuers`"):
        parse_settings(config, environ={})
    config["auth"]["methods"] = config["auth"]["methods"][:1]  # one issuer: nothing to confuse
    parse_settings(config, environ={})


def with_tenant_limit(config: dict[str, Any], folder: Path, rule: dict[str, Any]) -> None:
    with_two_issuers(config, folder)
    config["limits"]["rules"] = [rule]


def test_a_tenant_limit_counts_each_issuers_tenants_apart(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Two providers' `acme` are two organisations: one's use is not the other's quota."""
    rule = {
        "name": "per-org",
        "scope": "tenant",
        "match": {"issuers": [ISSUER_A, ISSUER_B]},
        "quota": {"per_day": 1},
    }
    server = make_proxy(lambda config: with_tenant_limit(config, tmp_path, rule))
    first = token(ISSUER_A, SECRET_A, sub="a-1", org="acme")
    colleague = token(ISSUER_A, SECRET_A, sub="a-2", org="acme")
    namesake = token(ISSUER_B, SECRET_B, sub="b-1", org="acme")
    assert post(server, {"assistantId": "sales-coach"}, first).status_code == 201
    assert post(server, {"assistantId": "sales-coach"}, colleague).status_code == 429
    created = post(server, {"assistantId": "sales-coach"}, namesake)
    assert created.status_code == 201, created.text
    assert post(server, {"assistantId": "sales-coach"}, namesake).status_code == 429


def test_a_limit_naming_issuers_applies_to_their_tokens_only(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    rule = {
        "name": "a-pro",
        "match": {"issuers": [ISSUER_A], "claims": {"plan": ["pro"]}},
        "concurrency": 0,
    }
    server = make_proxy(lambda config: with_tenant_limit(config, tmp_path, rule))
    refused = post(server, {"assistantId": "sales-coach"}, token(ISSUER_A, SECRET_A, plan="pro"))
    assert refused.status_code == 429, refused.text
    other = post(server, {"assistantId": "sales-coach"}, token(ISSUER_B, SECRET_B, plan="pro"))
    assert other.status_code == 201, other.text


@pytest.mark.parametrize(
    "rule",
    [
        {"name": "per-org", "scope": "tenant", "quota": {"per_day": 5}},
        {"name": "acme", "match": {"tenants": ["acme"]}, "quota": {"per_day": 5}},
        {"name": "pro", "match": {"claims": {"plan": ["pro"]}}, "quota": {"per_day": 5}},
    ],
    ids=["tenant-scope", "tenant-match", "claims-match"],
)
def test_with_several_issuers_a_tenant_or_claims_limit_must_name_them(
    tmp_path: Path, rule: dict[str, Any]
) -> None:
    config = base_config("http://127.0.0.1:9", "k" * 40, "o" * 40)
    with_tenant_limit(config, tmp_path, rule)
    with pytest.raises(ConfigError, match=r"must name the `match\.issuers`"):
        parse_settings(config, environ={})
    # Fine: naming them, a rule only for API keys (the operator names their tenants), or one issuer.
    parse_settings(
        {
            **config,
            "limits": {
                "rules": [{**rule, "match": {**rule.get("match", {}), "issuers": [ISSUER_A]}}]
            },
        },
        environ={},
    )
    api_keys_only = {**rule, "match": {**rule.get("match", {}), "methods": ["api_key"]}}
    parse_settings({**config, "limits": {"rules": [api_keys_only]}}, environ={})
    config["auth"]["methods"] = config["auth"]["methods"][:1]
    parse_settings(config, environ={})
