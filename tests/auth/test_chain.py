"""The chain: no credential, anonymous callers, forwarded addresses, order and refusal shapes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.auth import AUDIENCE, ISSUER, SigningKey, claims
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.errors import UnauthorizedError

ANONYMOUS = {"type": "anonymous"}


def jwt_method(key: SigningKey) -> dict[str, Any]:
    return {
        "type": "jwt",
        "public_key": key.public_pem(),
        "algorithms": [key.alg],
        "issuer": ISSUER,
        "audience": AUDIENCE,
    }


async def test_no_credential_without_anonymous(chain_factory: Any, rsa_key: SigningKey) -> None:
    chain = await chain_factory(jwt_method(rsa_key))
    for authorization in (None, "", "   "):
        with pytest.raises(UnauthorizedError, match=r"^Missing bearer token$") as caught:
            await chain.authenticate(authorization, "192.0.2.1")
        assert 'error="invalid_request"' in caught.value.headers["WWW-Authenticate"]
    assert chain.stats.failures["missing"] == 3


async def test_no_methods_refuses_everyone(chain_factory: Any) -> None:
    chain = await chain_factory()
    with pytest.raises(UnauthorizedError, match="Missing bearer token"):
        await chain.authenticate(None, "192.0.2.1")
    with pytest.raises(UnauthorizedError, match="not a credential"):
        await chain.authenticate("Bearer abc", "192.0.2.1")


async def test_anonymous_is_the_client_address(chain_factory: Any, rsa_key: SigningKey) -> None:
    chain = await chain_factory(jwt_method(rsa_key), ANONYMOUS)
    identity = await chain.authenticate(None, "192.0.2.1", {})
    assert (identity.subject, identity.method) == ("192.0.2.1", "anonymous")
    assert chain.stats.successes["anonymous"] == 1


async def test_disabled_anonymous_is_off(chain_factory: Any) -> None:
    chain = await chain_factory({"type": "anonymous", "enabled": False})
    with pytest.raises(UnauthorizedError, match="Missing bearer token"):
        await chain.authenticate(None, "192.0.2.1")


async def test_spoofed_forwarded_for_ignored_from_untrusted_peer(chain_factory: Any) -> None:
    chain = await chain_factory(ANONYMOUS, trusted_proxies=["10.0.0.0/8"])
    spoofed = {"x-forwarded-for": "203.0.113.50", "forwarded": "for=203.0.113.51"}
    identity = await chain.authenticate(None, "192.0.2.1", spoofed)
    assert identity.subject == "192.0.2.1"


async def test_forwarded_for_believed_from_trusted_proxy(chain_factory: Any) -> None:
    chain = await chain_factory(ANONYMOUS, trusted_proxies=["10.0.0.0/8"])
    headers = {"x-forwarded-for": "6.6.6.6, 203.0.113.50, 10.1.2.3"}
    identity = await chain.authenticate(None, "10.0.0.2", headers)
    # 6.6.6.6 was written by the client itself: only the hop our proxies saw counts.
    assert identity.subject == "203.0.113.50"


async def test_only_the_configured_header_names_the_client(chain_factory: Any) -> None:
    # Behind nginx a client's own `Forwarded` arrives untouched next to the X-Forwarded-For
    # nginx wrote: it must not let an anonymous caller pick a fresh identity per request.
    chain = await chain_factory(ANONYMOUS, trusted_proxies=["10.0.0.0/8"])
    keys = set()
    for n in range(5):
        headers = {"x-forwarded-for": "203.0.113.50", "forwarded": f"for=198.51.100.{n}"}
        keys.add((await chain.authenticate(None, "10.0.0.2", headers)).key)
    assert keys == {"anonymous:203.0.113.50"}
    cloudflare = await chain_factory(
        ANONYMOUS, trusted_proxies=["10.0.0.0/8"], client_address_header="CF-Connecting-IP"
    )
    headers = {"cf-connecting-ip": "198.51.100.7", "x-forwarded-for": "6.6.6.6"}
    assert (await cloudflare.authenticate(None, "10.0.0.2", headers)).subject == "198.51.100.7"


async def test_wrong_token_is_not_downgraded_to_anonymous(
    chain_factory: Any, rsa_key: SigningKey, rsa_key_2: SigningKey
) -> None:
    chain = await chain_factory(jwt_method(rsa_key), ANONYMOUS)
    with pytest.raises(UnauthorizedError, match="signature"):
        await chain.authenticate("Bearer " + rsa_key_2.sign(claims()), "192.0.2.1")


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        ("Basic dXNlcjpwYXNz", "Bearer scheme"),
        ("Token abc", "Bearer scheme"),
        ("Bearer", "Missing bearer token"),
        ("Bearer a b", "malformed"),
        ("Bearer a,b", "malformed"),
        ("Bearer \u00e9t\u00e9", "malformed"),
        ("Bearer " + "a" * 70000, "too large"),
    ],
)
async def test_malformed_authorization(
    chain_factory: Any, rsa_key: SigningKey, authorization: str, message: str
) -> None:
    chain = await chain_factory(jwt_method(rsa_key), ANONYMOUS)
    with pytest.raises(UnauthorizedError, match=message):
        await chain.authenticate(authorization, "192.0.2.1")


async def test_order_api_key_before_jwt(chain_factory: Any, rsa_key: SigningKey) -> None:
    key = generate_key()
    api = {"type": "api_key", "keys": [{"name": "svc", "hash": hash_key(key)}]}
    chain = await chain_factory(api, jwt_method(rsa_key))
    assert (await chain.authenticate(f"Bearer {key}", "::1")).method == "api_key"
    assert (await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")).method == "jwt"


async def test_non_jwt_token_with_only_jwt_configured(
    chain_factory: Any, rsa_key: SigningKey
) -> None:
    chain = await chain_factory(jwt_method(rsa_key))
    with pytest.raises(UnauthorizedError, match="not a credential this server accepts"):
        await chain.authenticate("Bearer undefined", "::1")
    assert chain.stats.failures["unsupported"] == 1


async def test_start_and_close_are_idempotent(chain_factory: Any) -> None:
    chain = await chain_factory(ANONYMOUS)
    await chain.start()
    await chain.aclose()
    await chain.aclose()
