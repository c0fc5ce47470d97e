"""Static API keys: the right key names its caller, a wrong one is refused, profiles restrict."""

from __future__ import annotations

from typing import Any

import pytest

from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import ForbiddenError, UnauthorizedError
from vapi_proxy.policy.access import AccessRule, check_access

KEY_A = generate_key()
KEY_B = generate_key()


def key_method(**extra: Any) -> dict[str, Any]:
    return {
        "type": "api_key",
        "keys": [
            {"name": "backend", "hash": hash_key(KEY_A), "tenant": "acme"},
            {"name": "kiosk", "hash": hash_key(KEY_B), "profiles": ["demo"]},
        ],
        **extra,
    }


async def test_right_key_names_its_caller(chain_factory: Any) -> None:
    chain = await chain_factory(key_method())
    identity = await chain.authenticate(f"Bearer {KEY_A}", "198.51.100.7")
    assert identity == Identity(subject="backend", method="api_key", tenant="acme")
    kiosk = await chain.authenticate(f"bearer {KEY_B}", "198.51.100.7")
    assert (kiosk.subject, kiosk.profiles) == ("kiosk", frozenset({"demo"}))
    assert chain.stats.successes["api_key"] == 2


@pytest.mark.parametrize(
    "token", [KEY_A[:-1], KEY_A + "x", KEY_A.upper(), "vpk_" + "A" * 43, "hash-key"]
)
async def test_wrong_key_refused(chain_factory: Any, token: str) -> None:
    chain = await chain_factory(key_method())
    with pytest.raises(UnauthorizedError, match=r"^Invalid API key$") as caught:
        await chain.authenticate(f"Bearer {token}", "::1")
    assert token not in caught.value.headers["WWW-Authenticate"]
    assert chain.stats.failures["bad_api_key"] == 1


async def test_key_in_header(chain_factory: Any) -> None:
    chain = await chain_factory(key_method())
    identity = await chain.authenticate(None, "::1", {"x-api-key": KEY_A})
    assert identity.subject == "backend"
    # Starlette lower-cases names; a plain dict from elsewhere may not.
    identity = await chain.authenticate(None, "::1", {"X-API-Key": KEY_B})
    assert identity.subject == "kiosk"
    with pytest.raises(UnauthorizedError, match="Invalid API key"):
        await chain.authenticate(None, "::1", {"x-api-key": KEY_A + "0"})


async def test_header_can_be_turned_off(chain_factory: Any) -> None:
    chain = await chain_factory(key_method(header=None))
    with pytest.raises(UnauthorizedError, match="Missing bearer token"):
        await chain.authenticate(None, "::1", {"x-api-key": KEY_A})


async def test_profile_restriction_enforced_by_policy(chain_factory: Any) -> None:
    chain = await chain_factory(key_method())
    kiosk = await chain.authenticate(f"Bearer {KEY_B}", "::1")
    check_access(AccessRule(), kiosk, "demo")
    with pytest.raises(ForbiddenError, match="This API key may not use the profile 'sales-coach'"):
        check_access(AccessRule(), kiosk, "sales-coach")
    backend = await chain.authenticate(f"Bearer {KEY_A}", "::1")
    check_access(AccessRule(), backend, "sales-coach")


async def test_jwt_shaped_token_is_not_an_api_key(chain_factory: Any) -> None:
    chain = await chain_factory(key_method())
    with pytest.raises(UnauthorizedError, match="not a credential this server accepts"):
        await chain.authenticate("Bearer aaa.bbb.ccc", "::1")


def test_hash_is_stable_and_distinct() -> None:
    assert hash_key(KEY_A) == hash_key(KEY_A)
    assert hash_key(KEY_A) != hash_key(KEY_B)
    assert hash_key(KEY_A).startswith("sha256:")
    assert KEY_A.startswith("vpk_")
    assert len(KEY_A) == 47
    assert "." not in KEY_A
