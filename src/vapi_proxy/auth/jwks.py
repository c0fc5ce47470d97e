"""A JSON Web Key Set fetched over HTTPS and cached as parsed key objects.

Keys are parsed once per fetch, so a request costs a dict lookup and a signature check. A token
naming an unknown `kid` triggers a refetch (key rotation), at most one in flight and at most one
per `min_refetch_interval`, so made-up `kid`s cannot turn the proxy into a flood on the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from vapi_proxy.auth.base import AuthFailure, AuthStats
from vapi_proxy.auth.config import key_fits_algorithm

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 512 * 1024
"""Real key sets are a few KiB; anything far larger is not one."""
MAX_STALE_SECONDS = 24 * 3600
"""How long past `cache_seconds` the last good key set is used while refreshes keep failing."""

# Only asymmetric kinds: a JWKS is public, so an `oct` (shared secret) entry in it is a mistake
# or an attack, never a key to trust.
_PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "RSA": RSAAlgorithm.from_jwk,
    "EC": ECAlgorithm.from_jwk,
    "OKP": OKPAlgorithm.from_jwk,
}


@dataclass(frozen=True, slots=True)
class JwkKey:
    """A parsed public key and the `alg` its JWK pins it to (RFC 7517 §4.4), if any."""

    key: Any
    alg: str | None

    def fits(self, algorithm: str) -> bool:
        return (self.alg is None or self.alg == algorithm) and key_fits_algorithm(
            self.key, algorithm
        )


class JwksError(Exception):
    """A fetch failed; the message says why (for logs, never for callers)."""


def parse_jwks(document: bytes) -> dict[str | None, JwkKey]:
    """The usable signing keys of a JWKS document by `kid` (None for a key without one).

    A key this proxy cannot use (unknown `kty`, `use: enc`, bad numbers) is skipped rather than
    failing the whole set, as providers publish keys for other consumers too.
    """
    try:
        data = orjson.loads(document)
    except orjson.JSONDecodeError:
        raise JwksError("response is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError("response has no 'keys' list")
    keys: dict[str | None, JwkKey] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        parser = _PARSERS.get(jwk.get("kty"))  # type: ignore[arg-type]
        kid = jwk.get("kid")
        alg = jwk.get("alg")
        if parser is None or not isinstance(kid, str | None) or not isinstance(alg, str | None):
            continue
        try:
            key = parser(jwk)
        except Exception:  # any malformed key is skipped: see the docstring
            log.debug("skipping unusable JWK kid=%s", kid)
            continue
        if hasattr(key, "public_key"):
            # A JWK with private parameters parses as a private key: keep only its public half.
            key = key.public_key()
        keys[kid] = JwkKey(key, alg)
    if not keys:
        raise JwksError("no usable signing keys")
    return keys


class JwksCache:
    """The keys behind one `jwks_url`. Give it a session (`session = ...`) before use."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float,
        min_refetch_interval: float,
        fetch_timeout: float,
        stats: AuthStats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.session: aiohttp.ClientSession | None = None
        self._cache_seconds = cache_seconds
        self._min_interval = min_refetch_interval
        self._timeout = aiohttp.ClientTimeout(total=fetch_timeout)
        self._stats = stats
        self._clock = clock
        self._keys: dict[str | None, JwkKey] = {}
        self._document: bytes | None = None
        self.generation = 0
        """Bumped whenever a fetch changes the key set, so caches built on its keys can tell."""
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_failed = False
        self._last_error: str | None = None
        self._inflight: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        """Whether `get` can verify a token with a listed `kid` without fetching first."""
        return bool(self._keys) and self._age() < self._cache_seconds + MAX_STALE_SECONDS

    async def health(self, fetch_within: float) -> dict[str, Any]:
        """What a caller would get now, for `/readyz`: keys cached, or fetched in `fetch_within` s.

        An unusable set is refetched here (within `min_refetch_interval`, like any refresh), so
        readiness probes also bring a proxy that started while the provider was down back."""
        if not self.usable:
            # On a timeout the shielded fetch goes on; this probe reports what is known now.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.refresh(), fetch_within)
        age = self._age()
        report: dict[str, Any] = {
            "ok": self.usable,
            "keys": len(self._keys),
            "age_seconds": None if math.isinf(age) else round(age, 1),
        }
        if self._last_failed:
            report["detail"] = f"last fetch failed: {self._last_error}"
        return report

    async def get(self, kid: str | None) -> JwkKey:
        """The key for `kid`, refetching the set if it is unknown or the cache is old.

        Raises `AuthFailure` `unknown_kid` when a good, recent set lacks it, or `jwks_unavailable`
        when no usable set could be fetched: a fail-closed refusal the chain turns into a 503.
        """
        key = self._find(kid)
        if key is None or self._age() >= self._cache_seconds:
            await self.refresh()
            key = self._find(kid)
        # After a failed refresh the last good set is still the provider's last word: keep using
        # it rather than lock every user out while the provider is down, but only for so long,
        # so a key the provider has since withdrawn does not stay trusted indefinitely.
        usable = self._age() < self._cache_seconds + MAX_STALE_SECONDS
        if key is not None and usable:
            return key
        if self._last_failed or not usable:
            raise AuthFailure(
                "jwks_unavailable",
                "Cannot verify the token now: the identity provider's keys are unavailable",
                unavailable=True,
            )
        raise AuthFailure("unknown_kid", "Token is signed with a key id the issuer does not list")

    def _age(self) -> float:
        """Seconds since the last successful fetch (infinite before the first)."""
        if self._fetched_at is None:
            return math.inf
        return self._clock() - self._fetched_at

    async def refresh(self) -> None:
        """Fetch the set unless a fetch is in flight (join it) or one began too recently."""
        if self._inflight is None:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._min_interval:
                return
            self._attempted_at = now
            self._inflight = asyncio.create_task(self._fetch_and_store())
        # Shielded: a caller that disconnects must not cancel the fetch the others are awaiting.
        await asyncio.shield(self._inflight)

    async def aclose(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _find(self, kid: str | None) -> JwkKey | None:
        if kid is not None:
            return self._keys.get(kid)
        # No `kid` in the token: unambiguous only when the set holds a single key.
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return None

    async def _fetch_and_store(self) -> None:
        self._stats.jwks_fetches += 1
        try:
            document = await self._fetch()
            # The same document again (the usual refresh) keeps the parsed keys, and with them
            # the identities of tokens they verified (auth/token_cache.py).
            keys = self._keys if document == self._document else parse_jwks(document)
        except (JwksError, aiohttp.ClientError, TimeoutError) as exc:
            self._stats.jwks_fetch_failures += 1
            self._last_failed = True
            self._last_error = str(exc) or type(exc).__name__
            log.warning("JWKS fetch from %s failed: %s", self.url, exc or type(exc).__name__)
        else:
            if keys is not self._keys:
                self._keys = keys
                self._document = document
                self.generation += 1
            self._fetched_at = self._clock()
            self._last_failed = False
            self._stats.jwks_refreshes += 1
        finally:
            self._inflight = None

    async def _fetch(self) -> bytes:
        if self.session is None:
            raise RuntimeError("JwksCache used before AuthChain.start()")
        # No redirects: the configured https URL is the one trusted, not wherever it points.
        async with self.session.get(
            self.url,
            timeout=self._timeout,
            allow_redirects=False,
            headers={"Accept": "application/json"},
        ) as response:
            if response.status != 200:
                raise JwksError(f"HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError("response too large")
            return bytes(body)
