"""The verified-token cache: reused tokens skip the signature check, and nothing it holds
outlives the token's `exp`, its `nbf`, its signing key's removal, the stale-key bound or the
config that accepted it."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from tests.support.auth import AUDIENCE, ISSUER, Clock, JwksServer, SigningKey, claims, make_key
from vapi_proxy.auth.chain import AuthChain
from vapi_proxy.auth.jwks import MAX_STALE_SECONDS
from vapi_proxy.auth.jwt import JwtAuthenticator
from vapi_proxy.auth.token_cache import VerifiedTokenCache
from vapi_proxy.errors import ServiceUnavailableError, UnauthorizedError

T0 = float(int(time.time()))


@pytest.fixture
def wall() -> Clock:
    """The wall clock tokens are held to, stopped at T0 until a test moves it."""
    clock = Clock()
    clock.now = T0
    return clock


def pem_method(key: SigningKey, **extra: Any) -> dict[str, Any]:
    return {
        "type": "jwt",
        "public_key": key.public_pem(),
        "algorithms": [key.alg],
        "issuer": ISSUER,
        "audience": AUDIENCE,
        **extra,
    }


def jwks_method(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "jwt",
        "jwks_url": url,
        "algorithms": ["RS256"],
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "cache_seconds": 600,
        "min_refetch_interval_seconds": 30,
        **extra,
    }


def token_claims(**extra: Any) -> dict[str, Any]:
    return claims(iat=int(T0), exp=int(T0) + 300, **extra)


def cache_of(chain: AuthChain, index: int = 0) -> VerifiedTokenCache:
    authenticators = [a for a in chain._authenticators if isinstance(a, JwtAuthenticator)]
    cache = authenticators[index].cache
    assert cache is not None
    return cache


async def test_a_reused_token_is_answered_from_the_cache(
    chain_factory: Any, rsa_key: SigningKey, wall: Clock
) -> None:
    chain = await chain_factory(pem_method(rsa_key, tenant_claim="org"), now=wall)
    token = "Bearer " + rsa_key.sign(token_claims(org="acme"))
    first = await chain.authenticate(token, "::1")
    again = [await chain.authenticate(token, "::1") for _ in range(3)]
    assert all(identity is first for identity in again)
    assert (first.subject, first.tenant, first.issuer) == ("user-1", "acme", ISSUER)
    assert cache_of(chain).hits == 3
    assert chain.stats.successes["jwt"] == 4


@pytest.mark.parametrize("offset", [-1, 0, 299, 329, 329.999, 330, 331, 10_000])
async def test_an_entry_ends_exactly_when_the_verifier_would_refuse_the_token(
    chain_factory: Any, rsa_key: SigningKey, wall: Clock, offset: float
) -> None:
    # exp = T0 + 300 and the default leeway of 30 s: the verifier accepts until T0 + 330.
    cached = await chain_factory(pem_method(rsa_key), now=wall)
    uncached = await chain_factory(pem_method(rsa_key, token_cache_size=0), now=wall)
    token = "Bearer " + rsa_key.sign(token_claims())
    await cached.authenticate(token, "::1")
    wall.now = T0 + offset

    async def verdict(chain: AuthChain) -> str:
        try:
            await chain.authenticate(token, "::1")
        except UnauthorizedError as refused:
            return str(refused)
        return "ok"

    expected = await verdict(uncached)
    assert expected == ("ok" if offset < 330 else "Token has expired")
    assert await verdict(cached) == expected
    assert cache_of(cached).hits == (1 if expected == "ok" else 0)


async def test_a_not_yet_valid_token_is_not_cached_and_a_clock_set_back_is_honoured(
    chain_factory: Any, rsa_key: SigningKey, wall: Clock
) -> None:
    chain = await chain_factory(pem_method(rsa_key), now=wall)
    token = "Bearer " + rsa_key.sign(token_claims(nbf=int(T0) + 100))
    with pytest.raises(UnauthorizedError, match="not yet valid"):
        await chain.authenticate(token, "::1")
    assert len(cache_of(chain)) == 0  # refusals are never stored
    wall.now = T0 + 70  # nbf within the 30 s leeway
    assert (await chain.authenticate(token, "::1")).subject == "user-1"
    assert (await chain.authenticate(token, "::1")).subject == "user-1"
    assert cache_of(chain).hits == 1
    wall.now = T0 + 69  # the clock stepped back: the token is not yet valid again
    with pytest.raises(UnauthorizedError, match="not yet valid"):
        await chain.authenticate(token, "::1")


async def test_a_refusal_is_not_pinned_on_the_token(
    chain_factory: Any, jwks: JwksServer, clock: Clock, rsa_key: SigningKey, wall: Clock
) -> None:
    # Someone presents a user's token while the provider is down: the 503 is not remembered.
    jwks.status = 500
    chain = await chain_factory(jwks_method(jwks.url), now=wall)
    token = "Bearer " + rsa_key.sign(token_claims())
    with pytest.raises(ServiceUnavailableError):
        await chain.authenticate(token, "::1")
    jwks.status, jwks.keys = 200, [rsa_key.jwk()]
    clock.advance(31)
    assert (await chain.authenticate(token, "::1")).subject == "user-1"


async def test_a_key_dropped_from_the_jwks_ends_its_tokens(
    chain_factory: Any,
    jwks: JwksServer,
    clock: Clock,
    rsa_key: SigningKey,
    rsa_key_2: SigningKey,
    wall: Clock,
) -> None:
    jwks.keys = [rsa_key.jwk(), rsa_key_2.jwk()]
    chain = await chain_factory(jwks_method(jwks.url), now=wall)
    revoked = "Bearer " + rsa_key.sign(token_claims())
    kept = "Bearer " + rsa_key_2.sign(token_claims(sub="user-2"))
    for _ in range(2):
        await chain.authenticate(revoked, "::1")
        await chain.authenticate(kept, "::1")
    assert cache_of(chain).hits == 2
    # The provider withdraws rsa-1 (how providers revoke); a token naming a new kid makes the
    # proxy refetch long before cache_seconds.
    new_key = make_key("RS256", "rsa-3")
    jwks.keys = [rsa_key_2.jwk(), new_key.jwk()]
    clock.advance(31)
    assert (await chain.authenticate("Bearer " + new_key.sign(token_claims()), "::1")).subject
    assert jwks.fetches == 2
    assert len(cache_of(chain)) == 1  # the set changed: emptied, then the new token stored
    with pytest.raises(UnauthorizedError, match="key id the issuer does not list"):
        await chain.authenticate(revoked, "::1")
    # The kept key's token is verified afresh, once.
    hits = cache_of(chain).hits
    assert (await chain.authenticate(kept, "::1")).subject == "user-2"
    assert cache_of(chain).hits == hits
    assert (await chain.authenticate(kept, "::1")).subject == "user-2"
    assert cache_of(chain).hits == hits + 1


async def test_a_key_replaced_under_the_same_kid_ends_its_tokens(
    chain_factory: Any, jwks: JwksServer, clock: Clock, rsa_key: SigningKey, wall: Clock
) -> None:
    jwks.keys = [rsa_key.jwk()]
    chain = await chain_factory(jwks_method(jwks.url), now=wall)
    token = "Bearer " + rsa_key.sign(token_claims())
    await chain.authenticate(token, "::1")
    await chain.authenticate(token, "::1")
    assert cache_of(chain).hits == 1
    # New key material under the old kid, picked up by the regular refresh.
    jwks.keys = [make_key("RS256", rsa_key.kid).jwk()]
    clock.advance(600)
    with pytest.raises(UnauthorizedError, match="signature is invalid"):
        await chain.authenticate(token, "::1")
    assert jwks.fetches == 2
    with pytest.raises(UnauthorizedError, match="signature is invalid"):
        await chain.authenticate(token, "::1")


async def test_an_unchanged_key_set_keeps_the_cache(
    chain_factory: Any, jwks: JwksServer, clock: Clock, rsa_key: SigningKey, wall: Clock
) -> None:
    jwks.keys = [rsa_key.jwk()]
    chain = await chain_factory(jwks_method(jwks.url), now=wall)
    token = "Bearer " + rsa_key.sign(token_claims())
    await chain.authenticate(token, "::1")
    clock.advance(600)  # the regular refresh returns the same document
    await chain.authenticate(token, "::1")
    assert (jwks.fetches, cache_of(chain).hits) == (2, 1)


async def test_cached_tokens_obey_the_stale_key_bound(
    chain_factory: Any, jwks: JwksServer, clock: Clock, rsa_key: SigningKey
) -> None:
    # Real wall clock: this token stays unexpired however far the JWKS clock is moved.
    jwks.keys = [rsa_key.jwk()]
    chain = await chain_factory(jwks_method(jwks.url, cache_seconds=60))
    token = "Bearer " + rsa_key.sign(claims(exp=int(time.time()) + 3600))
    await chain.authenticate(token, "::1")
    jwks.status = 503
    clock.advance(60 + MAX_STALE_SECONDS - 1)
    assert (await chain.authenticate(token, "::1")).subject == "user-1"
    assert cache_of(chain).hits == 1
    clock.advance(1)
    with pytest.raises(ServiceUnavailableError):
        await chain.authenticate(token, "::1")
    with pytest.raises(ServiceUnavailableError):
        await chain.authenticate(token, "::1")


async def test_a_reloaded_config_does_not_inherit_verified_tokens(
    chain_factory: Any, rsa_key: SigningKey, rsa_key_2: SigningKey, wall: Clock
) -> None:
    token = "Bearer " + rsa_key.sign(token_claims())
    before = await chain_factory(pem_method(rsa_key), now=wall)
    await before.authenticate(token, "::1")
    await before.authenticate(token, "::1")
    assert cache_of(before).hits == 1
    # What a reload builds: the same method with another audience, or another key.
    for changed in (
        pem_method(rsa_key, audience="another-app"),
        pem_method(rsa_key_2),
        pem_method(rsa_key, required_claims=["exp", "org"]),
    ):
        after = await chain_factory(changed, now=wall)
        with pytest.raises(UnauthorizedError):
            await after.authenticate(token, "::1")
        assert len(cache_of(after)) == 0


async def test_each_method_keeps_its_own_tokens(
    chain_factory: Any, rsa_key: SigningKey, rsa_key_2: SigningKey, wall: Clock
) -> None:
    other = "https://other.test/"
    chain = await chain_factory(pem_method(rsa_key), pem_method(rsa_key_2, issuer=other), now=wall)
    ours = "Bearer " + rsa_key.sign(token_claims())
    theirs = "Bearer " + rsa_key_2.sign(token_claims(iss=other))
    for _ in range(2):
        assert (await chain.authenticate(ours, "::1")).issuer == ISSUER
        assert (await chain.authenticate(theirs, "::1")).issuer == other
    assert (len(cache_of(chain, 0)), cache_of(chain, 0).hits) == (1, 1)
    assert (len(cache_of(chain, 1)), cache_of(chain, 1).hits) == (1, 1)


async def test_the_cache_is_bounded_least_recently_used_out(
    chain_factory: Any, rsa_key: SigningKey, wall: Clock
) -> None:
    chain = await chain_factory(pem_method(rsa_key, token_cache_size=3), now=wall)
    tokens = ["Bearer " + rsa_key.sign(token_claims(sub=f"user-{i}")) for i in range(50)]
    for token in tokens[:3]:
        await chain.authenticate(token, "::1")
    await chain.authenticate(tokens[0], "::1")  # most recently used now
    for token in tokens[3:]:  # a flood of distinct valid tokens
        await chain.authenticate(token, "::1")
        assert len(cache_of(chain)) == 3
    hits = cache_of(chain).hits
    await chain.authenticate(tokens[-1], "::1")
    assert cache_of(chain).hits == hits + 1
    await chain.authenticate(tokens[0], "::1")  # evicted by the flood: verified afresh
    assert cache_of(chain).hits == hits + 1
    # Least recently used, not first stored, goes first.
    chain = await chain_factory(pem_method(rsa_key, token_cache_size=3), now=wall)
    for token in tokens[:3]:
        await chain.authenticate(token, "::1")
    await chain.authenticate(tokens[0], "::1")
    await chain.authenticate(tokens[3], "::1")  # evicts tokens[1]
    await chain.authenticate(tokens[0], "::1")
    await chain.authenticate(tokens[2], "::1")
    assert cache_of(chain).hits == 3
    await chain.authenticate(tokens[1], "::1")
    assert cache_of(chain).hits == 3


async def test_a_token_without_exp_is_verified_every_time(
    chain_factory: Any, rsa_key: SigningKey, wall: Clock
) -> None:
    chain = await chain_factory(pem_method(rsa_key, required_claims=[]), now=wall)
    token = "Bearer " + rsa_key.sign({"sub": "user-1", "iss": ISSUER, "aud": AUDIENCE})
    for _ in range(3):
        assert (await chain.authenticate(token, "::1")).subject == "user-1"
    assert (len(cache_of(chain)), cache_of(chain).hits) == (0, 0)


async def test_hs256_tokens_are_cached_and_a_size_of_zero_turns_it_off(
    chain_factory: Any, wall: Clock
) -> None:
    secret = "s" * 48
    method = {"type": "jwt", "secret_env": "SECRET", "algorithms": ["HS256"], "issuer": ISSUER,
              "audience": AUDIENCE}  # fmt: skip
    chain = await chain_factory(method, environ={"SECRET": secret}, now=wall)
    token = "Bearer " + jwt.encode(token_claims(), secret, algorithm="HS256")
    await chain.authenticate(token, "::1")
    await chain.authenticate(token, "::1")
    assert cache_of(chain).hits == 1
    off = await chain_factory({**method, "token_cache_size": 0}, environ={"SECRET": secret})
    assert all(a.cache is None for a in off._authenticators if isinstance(a, JwtAuthenticator))
    assert (await off.authenticate(token, "::1")).subject == "user-1"
    forged = "Bearer " + jwt.encode(token_claims(), "t" * 48, algorithm="HS256")
    for refused in (chain, off):
        with pytest.raises(UnauthorizedError, match="signature is invalid"):
            await refused.authenticate(forged, "::1")


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        VerifiedTokenCache(0)
