"""JWKS: keys fetched from a real loopback server, cached, rotated, rate-limited, failing closed."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.support.auth import AUDIENCE, ISSUER, Clock, JwksServer, SigningKey, claims, make_key
from vapi_proxy.auth.jwks import MAX_STALE_SECONDS, JwksError, parse_jwks
from vapi_proxy.errors import ServiceUnavailableError, UnauthorizedError
from vapi_proxy.testing import free_port


def jwks_method(url: str, algorithms: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "jwt",
        "jwks_url": url,
        "algorithms": algorithms,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "cache_seconds": 600,
        "min_refetch_interval_seconds": 30,
        "fetch_timeout_seconds": 2,
        **extra,
    }


async def test_keys_fetched_once_and_cached(
    chain_factory: Any,
    jwks: JwksServer,
    rsa_key: SigningKey,
    es_key: SigningKey,
    ed_key: SigningKey,
) -> None:
    jwks.keys = [rsa_key.jwk(), es_key.jwk(), ed_key.jwk()]
    chain = await chain_factory(jwks_method(jwks.url, ["RS256", "ES256", "EdDSA"]))
    assert jwks.fetches == 1  # warmed at start
    for key in (rsa_key, es_key, ed_key):
        for _ in range(3):
            identity = await chain.authenticate("Bearer " + key.sign(claims()), "::1")
            assert identity.subject == "user-1"
    assert jwks.fetches == 1
    assert chain.stats.jwks_refreshes == 1


async def test_rotation_new_kid_accepted_after_refetch(
    chain_factory: Any, jwks: JwksServer, clock: Clock, rsa_key: SigningKey, rsa_key_2: SigningKey
) -> None:
    jwks.keys = [rsa_key.jwk()]
    chain = await chain_factory(jwks_method(jwks.url, ["RS256"]))
    await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")
    jwks.keys = [rsa_key_2.jwk()]  # the provider rotates
    clock.advance(31)  # past the refetch rate limit
    identity = await chain.authenticate("Bearer " + rsa_key_2.sign(claims()), "::1")
    assert identity.subject == "user-1"
    assert jwks.fetches == 2
    # The old key is gone from the set now: its tokens name an unknown kid.
    with pytest.raises(UnauthorizedError, match="key id the issuer does not list"):
        await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")
    assert chain.stats.failures["unknown_kid"] == 1


async def test_unknown_kid_refetch_is_rate_limited(
    chain_factory: Any, jwks: JwksServer, clock: Clock, rsa_key: SigningKey
) -> None:
    jwks.keys = [rsa_key.jwk()]
    chain = await chain_factory(jwks_method(jwks.url, ["RS256"], min_refetch_interval_seconds=30))
    clock.advance(31)
    for i in range(10):
        token = rsa_key.sign(claims(), kid=f"made-up-{i}")
        with pytest.raises(UnauthorizedError, match="key id"):
            await chain.authenticate(f"Bearer {token}", "::1")
    assert jwks.fetches == 2  # start-up, then one refetch for the first unknown kid only
    clock.advance(29)
    with pytest.raises(UnauthorizedError):
        await chain.authenticate("Bearer " + rsa_key.sign(claims(), kid="x"), "::1")
    assert jwks.fetches == 2
    clock.advance(2)
    with pytest.raises(UnauthorizedError):
        await chain.authenticate("Bearer " + rsa_key.sign(claims(), kid="y"), "::1")
    assert jwks.fetches == 3
    assert chain.stats.failures["unknown_kid"] == 12


async def test_concurrent_unknown_kid_single_flight(
    chain_factory: Any, jwks: JwksServer, clock: Clock, rsa_key: SigningKey, rsa_key_2: SigningKey
) -> None:
    jwks.keys = [rsa_key.jwk()]
    chain = await chain_factory(jwks_method(jwks.url, ["RS256"], min_refetch_interval_seconds=0))
    jwks.keys = [rsa_key.jwk(), rsa_key_2.jwk()]
    token = "Bearer " + rsa_key_2.sign(claims())
    results = await asyncio.gather(*(chain.authenticate(token, "::1") for _ in range(25)))
    assert {identity.subject for identity in results} == {"user-1"}
    assert jwks.fetches == 2


async def test_jwks_down_fails_closed_with_503(
    chain_factory: Any, jwks: JwksServer, clock: Clock, rsa_key: SigningKey
) -> None:
    jwks.status = 500
    chain = await chain_factory(jwks_method(jwks.url, ["RS256"]))
    assert chain.stats.jwks_fetch_failures == 1
    with pytest.raises(ServiceUnavailableError, match="keys are unavailable") as caught:
        await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")
    assert caught.value.status_code == 503
    assert caught.value.headers["Retry-After"]
    assert chain.stats.failures["jwks_unavailable"] == 1
    # Back up, and the rate limit has passed: verification resumes.
    jwks.status = 200
    jwks.keys = [rsa_key.jwk()]
    clock.advance(31)
    assert (await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")).subject
    assert chain.stats.jwks_fetch_failures == 1


async def test_jwks_unreachable_fails_closed(chain_factory: Any, rsa_key: SigningKey) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json"  # nothing listens there
    chain = await chain_factory(jwks_method(url, ["RS256"]))
    with pytest.raises(ServiceUnavailableError):
        await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")
    assert chain.stats.jwks_fetch_failures == 1
    assert chain.stats.jwks_refreshes == 0


async def test_stale_keys_used_while_provider_down(
    chain_factory: Any, jwks: JwksServer, clock: Clock, rsa_key: SigningKey
) -> None:
    jwks.keys = [rsa_key.jwk()]
    chain = await chain_factory(jwks_method(jwks.url, ["RS256"], cache_seconds=60))
    jwks.status = 503
    clock.advance(61)
    assert (await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")).subject
    assert jwks.fetches == 2
    assert chain.stats.jwks_fetch_failures == 1
    # An unknown kid while the provider is down cannot be told apart from a rotation: 503.
    clock.advance(31)
    with pytest.raises(ServiceUnavailableError):
        await chain.authenticate("Bearer " + rsa_key.sign(claims(), kid="new"), "::1")
    # Stale keys are trusted for a bounded time only.
    clock.advance(MAX_STALE_SECONDS - 100)
    assert (await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")).subject
    clock.advance(100)
    with pytest.raises(ServiceUnavailableError):
        await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")
    jwks.status = 200
    clock.advance(31)
    assert (await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")).subject


async def test_key_pinned_to_other_alg_refused(
    chain_factory: Any, jwks: JwksServer, rsa_key: SigningKey
) -> None:
    jwks.keys = [rsa_key.jwk()]  # the JWK says alg RS256
    chain = await chain_factory(jwks_method(jwks.url, ["RS256", "PS256"]))
    ps_token = SigningKey("PS256", rsa_key.private, rsa_key.kid).sign(claims())
    with pytest.raises(UnauthorizedError, match="does not match its signing key"):
        await chain.authenticate(f"Bearer {ps_token}", "::1")


async def test_token_without_kid_uses_the_only_key(
    chain_factory: Any, jwks: JwksServer, es_key: SigningKey, rsa_key: SigningKey
) -> None:
    jwks.keys = [es_key.jwk()]
    chain = await chain_factory(jwks_method(jwks.url, ["ES256"]))
    token = es_key.sign(claims(), kid=None)
    assert (await chain.authenticate(f"Bearer {token}", "::1")).subject == "user-1"


async def test_redirects_are_not_followed(
    chain_factory: Any, jwks: JwksServer, rsa_key: SigningKey
) -> None:
    jwks.keys = [rsa_key.jwk()]
    jwks.status = 302
    chain = await chain_factory(jwks_method(jwks.url, ["RS256"]))
    with pytest.raises(ServiceUnavailableError):
        await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")
    assert (jwks.fetches, jwks.redirected_fetches) == (1, 0)
    assert chain.stats.jwks_fetch_failures == 1


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"keys": {}}', b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'],
)
def test_unusable_documents_rejected(body: bytes) -> None:
    with pytest.raises(JwksError):
        parse_jwks(body)


def test_parse_skips_what_it_cannot_use(rsa_key: SigningKey, es_key: SigningKey) -> None:
    encryption = {**es_key.jwk(), "use": "enc", "kid": "enc"}
    broken = {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}
    secret = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0"}
    keys = parse_jwks(orjson.dumps({"keys": [encryption, broken, secret, rsa_key.jwk()]}))
    assert list(keys) == [rsa_key.kid]
    assert keys[rsa_key.kid].fits("RS256")
    assert not keys[rsa_key.kid].fits("PS256")


def test_private_jwk_keeps_only_public_half() -> None:
    from jwt.algorithms import RSAAlgorithm

    private = make_key("RS256").private
    document = {"keys": [{**RSAAlgorithm.to_jwk(private, as_dict=True), "kid": "p"}]}
    key = parse_jwks(orjson.dumps(document))["p"].key
    assert not hasattr(key, "private_numbers")


async def test_oversized_jwks_is_a_fetch_failure(
    chain_factory: Any, jwks: JwksServer, rsa_key: SigningKey
) -> None:
    jwks.body = b'{"keys": [' + b" " * (600 * 1024) + b"]}"
    chain = await chain_factory(jwks_method(jwks.url, ["RS256"]))
    assert chain.stats.jwks_fetch_failures == 1
    with pytest.raises(ServiceUnavailableError):
        await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")


async def test_health_tells_what_a_jwt_caller_would_get(
    chain_factory: Any, jwks: JwksServer, clock: Clock, rsa_key: SigningKey
) -> None:
    # Issue 13.13: started while the provider is down, no keys cached: every JWT caller gets a
    # 503, so the proxy is not ready, although its stores answer.
    jwks.status = 500
    anonymous = {"type": "anonymous"}
    chain = await chain_factory(jwks_method(jwks.url, ["RS256"]), anonymous)
    health = await chain.health(2.0)
    assert health["ok"] is False
    jwt, anon = health["methods"]
    assert (jwt["type"], jwt["issuer"], jwt["keys"], jwt["ok"]) == ("jwt", ISSUER, 0, False)
    assert jwt["detail"] == "last fetch failed: HTTP 500"
    assert anon == {"type": "anonymous", "ok": True}
    with pytest.raises(ServiceUnavailableError):
        await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")
    # The provider is back: the next check (past the refetch interval) fetches and says ready.
    jwks.status = 200
    jwks.keys = [rsa_key.jwk()]
    clock.advance(31)
    health = await chain.health(2.0)
    assert health["ok"] is True and health["methods"][0]["keys"] == 1
    assert (await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")).method == "jwt"
    # Down again, but the cached set still verifies tokens: still ready, and no fetch is made.
    jwks.status = 500
    fetches = jwks.fetches
    assert (await chain.health(2.0))["ok"] is True
    assert jwks.fetches == fetches
    # Past the stale window the cached keys are no longer trusted: not ready.
    clock.advance(600 + MAX_STALE_SECONDS)
    assert (await chain.health(2.0))["ok"] is False
    with pytest.raises(ServiceUnavailableError):
        await chain.authenticate("Bearer " + rsa_key.sign(claims()), "::1")


async def test_health_of_methods_with_configured_keys(
    chain_factory: Any, rsa_key: SigningKey
) -> None:
    chain = await chain_factory(
        {"type": "jwt", "public_key": rsa_key.public_pem(), "algorithms": ["RS256"]}
    )
    health = await chain.health(2.0)
    assert health == {
        "ok": True,
        "methods": [{"type": "jwt", "issuer": None, "keys": "public_key", "ok": True}],
    }
