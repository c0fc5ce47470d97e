"""The configured authentication methods, tried in order: a request's credential → `Identity`.

The first method that recognises the credential verifies it; a wrong credential is refused with
a precise 401 and is never passed on to a later method, and never downgraded to anonymous. When the
identity provider's keys cannot be fetched the chain fails closed with a 503: the token may be
fine, so telling the app it is invalid (and making it sign the user out) would be wrong.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from vapi_proxy.auth.anonymous import AnonymousAuthenticator
from vapi_proxy.auth.api_key import ApiKeyAuthenticator
from vapi_proxy.auth.base import Authenticator, AuthFailure, AuthStats, Credential, looks_like_jwt
from vapi_proxy.auth.config import ApiKeyMethod, AuthSettings, JwtMethod
from vapi_proxy.auth.identity import Identity
from vapi_proxy.auth.jwks import JwksCache
from vapi_proxy.auth.jwt import JwtAuthenticator
from vapi_proxy.edge.client_address import ClientAddressResolver, get_header
from vapi_proxy.errors import ServiceUnavailableError, UnauthorizedError

# RFC 6750 §2.1 b64token: anything else in a Bearer header is malformed, whoever would own it.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAX_CREDENTIAL_BYTES = 65536
RETRY_AFTER_SECONDS = 5
"""Told to callers refused because the identity provider's keys were unreachable."""


class AuthChain:
    def __init__(
        self,
        authenticators: Sequence[Authenticator],
        *,
        anonymous: AnonymousAuthenticator | None = None,
        key_headers: Sequence[str] = (),
        jwks: Sequence[JwksCache] = (),
        stats: AuthStats | None = None,
        client_address: ClientAddressResolver | None = None,
        methods: Sequence[tuple[dict[str, Any], JwksCache | None]] = (),
    ) -> None:
        """`client_address` is the resolver the whole app shares (the edge, metrics, health).
        `methods` describes each configured method for `/readyz`, with its key set if fetched."""
        self.client_address = client_address or ClientAddressResolver(())
        self._methods = tuple(methods)
        self._authenticators = tuple(authenticators)
        self._anonymous = anonymous
        self._key_headers = tuple(key_headers)
        self._jwks = tuple(jwks)
        self._has_jwt = any(isinstance(a, JwtAuthenticator) for a in self._authenticators)
        self._session: aiohttp.ClientSession | None = None
        self.stats = stats or AuthStats()

    @classmethod
    def from_settings(
        cls,
        settings: AuthSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> AuthChain:
        """`clock` (monotonic seconds) drives JWKS cache ages and `now` (the wall clock) is what
        token times are held to, so tests need not sleep."""
        stats = AuthStats()
        jwt_methods = [m for m in settings.methods if isinstance(m, JwtMethod)]
        authenticators: list[Authenticator] = []
        caches: list[JwksCache] = []
        key_headers: list[str] = []
        described: list[tuple[dict[str, Any], JwksCache | None]] = []
        for method in settings.methods:
            if isinstance(method, JwtMethod):
                cache = None
                if method.jwks_url is not None:
                    cache = JwksCache(
                        method.jwks_url,
                        cache_seconds=method.cache_seconds,
                        min_refetch_interval=method.min_refetch_interval_seconds,
                        fetch_timeout=method.fetch_timeout_seconds,
                        stats=stats,
                        clock=clock,
                    )
                    caches.append(cache)
                authenticators.append(
                    JwtAuthenticator(method, jwks=cache, exclusive=len(jwt_methods) == 1, now=now)
                )
                source = "jwks" if cache else "secret" if method.secret else "public_key"
                described.append(({"type": "jwt", "issuer": method.issuer, "keys": source}, cache))
            elif isinstance(method, ApiKeyMethod):
                api_keys = ApiKeyAuthenticator(method)
                authenticators.append(api_keys)
                if api_keys.header is not None:
                    key_headers.append(api_keys.header)
                described.append(({"type": "api_key", "keys": len(method.keys)}, None))
            elif method.enabled:
                described.append(({"type": "anonymous"}, None))
        resolver = ClientAddressResolver(settings.trusted_proxies, settings.client_address_header)
        anonymous = None
        if settings.anonymous_enabled:
            anonymous = AnonymousAuthenticator(resolver)
        return cls(
            authenticators,
            anonymous=anonymous,
            key_headers=key_headers,
            jwks=caches,
            stats=stats,
            client_address=resolver,
            methods=described,
        )

    async def start(self) -> None:
        """Open the HTTP session for JWKS fetches and warm each key cache.

        A provider that is down at start-up does not stop the proxy: its tokens are refused
        (fail closed) until a later fetch succeeds.
        """
        if self._jwks and self._session is None:
            self._session = aiohttp.ClientSession()
            for cache in self._jwks:
                cache.session = self._session
            await asyncio.gather(*(cache.refresh() for cache in self._jwks))

    async def health(self, fetch_within: float) -> dict[str, Any]:
        """For `/readyz`: ok when every configured method can verify its callers now.

        A JWKS method without usable keys (none cached, none fetchable in `fetch_within` seconds)
        answers every one of its callers 503, so the proxy is not ready for them. Methods with
        keys in the config (PEM, secret, API keys) and anonymous need nothing to be reachable.
        """
        reports = await asyncio.gather(
            *(cache.health(fetch_within) for _info, cache in self._methods if cache is not None)
        )
        fetched = iter(reports)
        methods = []
        for info, cache in self._methods:
            methods.append({**info, **(next(fetched) if cache is not None else {"ok": True})})
        return {"ok": all(m["ok"] for m in methods), "methods": methods}

    async def aclose(self) -> None:
        for cache in self._jwks:
            await cache.aclose()
            cache.session = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def authenticate(
        self,
        authorization: str | None,
        client_host: str,
        headers: Mapping[str, str] | None = None,
    ) -> Identity:
        """The caller's identity, or `UnauthorizedError` (401) / `ServiceUnavailableError` (503).

        `client_host` is the TCP peer as the server saw it; the configured forwarded header in
        `headers` is applied only if that peer is one of `trusted_proxies`.
        """
        headers = headers or {}
        try:
            credential = self._credential(authorization, headers)
            if credential is None:
                if self._anonymous is None:
                    raise AuthFailure("missing", "Missing bearer token")
                identity = self._anonymous.identify(client_host, headers)
            else:
                identity = await self._verify(credential)
        except AuthFailure as failure:
            self.stats.failures[failure.reason] += 1
            if failure.unavailable:
                raise ServiceUnavailableError(
                    failure.message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
                ) from None
            error = (
                "invalid_request" if failure.reason in {"missing", "scheme"} else "invalid_token"
            )
            raise UnauthorizedError(failure.message, error=error) from None
        self.stats.successes[identity.method] += 1
        return identity

    def _credential(
        self, authorization: str | None, headers: Mapping[str, str]
    ) -> Credential | None:
        if authorization is not None and authorization.strip():
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise AuthFailure("scheme", "Authorization must use the Bearer scheme")
            return Credential(self._checked(token.strip()), "authorization")
        for name in self._key_headers:
            value = get_header(headers, name)
            if value is not None and value.strip():
                return Credential(self._checked(value.strip()), name)
        return None

    @staticmethod
    def _checked(token: str) -> str:
        if not token:
            raise AuthFailure("missing", "Missing bearer token")
        if len(token) > _MAX_CREDENTIAL_BYTES:
            raise AuthFailure("oversized", "Token is too large")
        if not _B64TOKEN.fullmatch(token):
            raise AuthFailure("malformed", "Bearer token is malformed")
        return token

    async def _verify(self, credential: Credential) -> Identity:
        for authenticator in self._authenticators:
            identity = await authenticator.authenticate(credential)
            if identity is not None:
                return identity
        # Nobody owned it: say why in the caller's terms.
        if looks_like_jwt(credential.token) and self._has_jwt:
            raise AuthFailure("wrong_issuer", "Token issuer is not accepted")
        raise AuthFailure("unsupported", "Bearer token is not a credential this server accepts")
