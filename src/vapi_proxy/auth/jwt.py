"""Verify the app's JWTs (JWKS, PEM public key or shared secret) and read the caller from them.

The compact token is parsed once here, strictly (RFC 7515 base64url without padding, canonical,
JSON objects, no `crit` extensions), and its signature checked by PyJWT's algorithm objects on a
key parsed at start-up; the registered claims are then checked as RFC 7519 §4.1 says. This lean
path costs a fraction of `jwt.decode`'s general-purpose one (see docs/auth.md for numbers).
Refusals are precise and never contain the token or its claims.
"""

from __future__ import annotations

import binascii
import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson
from jwt.algorithms import Algorithm, get_default_algorithms

from vapi_proxy.auth.base import AuthFailure, Credential, looks_like_jwt
from vapi_proxy.auth.claims import MISSING, as_strings, lookup
from vapi_proxy.auth.config import JwtMethod
from vapi_proxy.auth.identity import Identity, unusable_name
from vapi_proxy.auth.jwks import JwkKey, JwksCache
from vapi_proxy.auth.token_cache import VerifiedToken, VerifiedTokenCache

_ALGORITHMS: dict[str, Algorithm] = get_default_algorithms()
_BASE64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_STANDARD = bytes.maketrans(b"+/", b"-_")


def _malformed() -> AuthFailure:
    return AuthFailure("malformed", "Token is malformed")


def _missing(claim: str) -> AuthFailure:
    # The claim's name comes from the config or the JWT spec, never from the token.
    return AuthFailure("missing_claim", f"Token is missing the required claim '{claim}'")


class JwtAuthenticator:
    """Owns bearer tokens shaped like a JWT (and, beside other jwt methods, with its issuer)."""

    def __init__(
        self,
        method: JwtMethod,
        *,
        jwks: JwksCache | None = None,
        exclusive: bool = True,
        now: Callable[[], float] = time.time,
    ) -> None:
        """`exclusive` is False when other jwt methods exist: tokens are then routed by `iss`.
        `now` is the wall clock (seconds since the epoch) that `exp`/`nbf`/`iat` are held to."""
        self._method = method
        self.cache = (
            VerifiedTokenCache(method.token_cache_size) if method.token_cache_size else None
        )
        self._generation = jwks.generation if jwks is not None else 0
        self._jwks = jwks
        self._exclusive = exclusive or method.issuer is None
        self._now = now
        self._algorithms = {name: _ALGORITHMS[name] for name in method.algorithms}
        audience = method.audience
        self._audience = (
            None
            if audience is None
            else frozenset([audience] if isinstance(audience, str) else audience)
        )
        self._required = tuple(method.required_claims)
        self._static_key: Any = None
        if method.secret is not None:
            # prepare_key refuses a secret that looks like a PEM key: key confusion, again.
            self._static_key = _ALGORITHMS["HS256"].prepare_key(method.secret.get_secret_value())
        elif method.parsed_public_key is not None:
            self._static_key = method.parsed_public_key
        elif jwks is None:
            raise ValueError("a jwks_url method needs a JwksCache")

    async def authenticate(self, credential: Credential) -> Identity | None:
        token = credential.token
        if credential.source != "authorization" or not looks_like_jwt(token):
            return None
        method = self._method
        if len(token) > method.max_token_bytes:
            raise AuthFailure("oversized", "Token is too large")
        raw = token.encode("ascii", "replace")
        cache = self.cache
        digest = b""
        if cache is not None:
            digest = hashlib.sha256(raw).digest()
            entry = cache.get(digest)
            if entry is not None and (identity := await self._reuse(cache, digest, entry)):
                return identity
        header_b64, payload_b64, signature_b64 = raw.split(b".")
        header = _json_object(header_b64)
        claims = _json_object(payload_b64)
        if not self._exclusive and claims.get("iss") != method.issuer:
            return None  # another jwt method's issuer: routing only, nothing is trusted yet
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthFailure("algorithm", "Token algorithm is not allowed")
        if "crit" in header:
            # RFC 7515 §4.1.11: extensions we do not implement must make the token invalid.
            raise AuthFailure("malformed", "Token uses unsupported critical header parameters")
        kid = header.get("kid")
        jwk = await self._key(kid, alg)
        signature = _b64decode(signature_b64)
        signing_input = raw[: len(header_b64) + 1 + len(payload_b64)]
        key = self._static_key if jwk is None else jwk.key
        if not self._algorithms[alg].verify(signing_input, key, signature):
            raise AuthFailure("bad_signature", "Token signature is invalid")
        self._check_claims(claims)
        identity = self._identity(claims)
        if cache is not None and "exp" in claims:  # no `exp`, no end: such tokens are not kept
            if self._jwks is not None and self._jwks.generation != self._generation:
                # The key set changed (a key dropped, rotated or added): nothing verified with
                # the old set is kept, whatever its kid.
                self._generation = self._jwks.generation
                cache.clear()
            times = [claims[name] for name in ("nbf", "iat") if name in claims]
            not_before = max(times) if times else None
            cache.put(digest, VerifiedToken(identity, claims["exp"], not_before, kid, jwk))
        return identity

    async def _reuse(
        self, cache: VerifiedTokenCache, digest: bytes, entry: VerifiedToken
    ) -> Identity | None:
        """The cached identity if the token would still pass now, else None (verify afresh).

        The time checks are `_check_claims`'s own, with the same leeway. A JWKS method asks its
        key set for the token's `kid` as an uncached request would (refresh when due, stale-key
        bound, unknown kid: the same refusals) and reuses the entry only if that is still the
        very key that verified the token."""
        now = self._now()
        leeway = self._method.leeway_seconds
        if entry.expires <= now - leeway or (
            entry.not_before is not None and entry.not_before > now + leeway
        ):
            cache.drop(digest)
            return None
        # A changed key set holds new key objects (jwks.py keeps them only when the document is
        # the same), so a refresh that dropped or rotated a key fails this; the next
        # verification then empties the cache.
        jwks = self._jwks
        if jwks is not None and await jwks.get(entry.kid) is not entry.key:
            cache.drop(digest)
            return None
        cache.hits += 1
        return entry.identity

    async def _key(self, kid: Any, alg: str) -> JwkKey | None:
        """The JWK for a JWKS method (None: the configured PEM key or secret is used)."""
        if self._static_key is not None:
            return None
        if kid is not None and not isinstance(kid, str):
            raise _malformed()
        if self._jwks is None:  # ruled out in __init__; keeps the type checker honest
            raise RuntimeError("no key source")
        jwk = await self._jwks.get(kid)
        if not jwk.fits(alg):
            raise AuthFailure("algorithm", "Token algorithm does not match its signing key")
        return jwk

    def _check_claims(self, claims: dict[str, Any]) -> None:
        """RFC 7519 §4.1, with `leeway` for clock skew; only after the signature is good."""
        method = self._method
        for name in self._required:
            if lookup(claims, name) in (MISSING, None):
                raise _missing(name)
        now = self._now()
        leeway = method.leeway_seconds
        if "exp" in claims and _numeric_date(claims["exp"]) <= now - leeway:
            raise AuthFailure("expired", "Token has expired")
        for name in ("nbf", "iat"):
            if name in claims and _numeric_date(claims[name]) > now + leeway:
                raise AuthFailure("not_yet_valid", "Token is not yet valid")
        if method.issuer is not None:
            issuer = claims.get("iss")
            if issuer is None:
                raise _missing("iss")
            if issuer != method.issuer:
                raise AuthFailure("wrong_issuer", "Token issuer is not accepted")
        audience = claims.get("aud")
        if self._audience is None:
            # No audience configured: a token meant for some audience is not meant for us.
            if audience:
                raise AuthFailure("wrong_audience", "Token audience is not accepted")
            return
        if not audience:
            raise _missing("aud")
        named = [audience] if isinstance(audience, str) else audience
        if not isinstance(named, list) or not all(isinstance(a, str) for a in named):
            raise _malformed()
        if self._audience.isdisjoint(named):
            raise AuthFailure("wrong_audience", "Token audience is not accepted")

    def _identity(self, claims: dict[str, Any]) -> Identity:
        method = self._method
        subject = _name(lookup(claims, method.subject_claim))
        if not subject:
            raise _missing(method.subject_claim)
        tenant = _name(lookup(claims, method.tenant_claim)) if method.tenant_claim else None
        for claim, name in ((method.subject_claim, subject), (method.tenant_claim, tenant)):
            why = unusable_name(name) if name is not None else None
            if why is not None:
                # The claim's name comes from the config, never from the token.
                raise AuthFailure("malformed", f"Token's '{claim}' claim {why}")
        roles = frozenset[str]()
        if method.roles_claim:
            roles = as_strings(lookup(claims, method.roles_claim))
        return Identity(
            subject=subject,
            method="jwt",
            tenant=tenant or None,
            claims=claims,
            roles=roles,
            issuer=method.issuer,
        )


def _b64decode(segment: bytes) -> bytes:
    """Strict RFC 7515 §2 base64url: no padding, no foreign characters, canonical trailing bits
    (so a token has exactly one spelling)."""
    if not _BASE64URL.issuperset(segment) or len(segment) % 4 == 1:
        raise _malformed()
    try:
        decoded = binascii.a2b_base64(
            segment.translate(_URLSAFE) + b"=" * (-len(segment) % 4), strict_mode=True
        )
    except binascii.Error:
        raise _malformed() from None
    if binascii.b2a_base64(decoded, newline=False).rstrip(b"=").translate(_STANDARD) != segment:
        raise _malformed()
    return decoded


def _json_object(segment: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(_b64decode(segment))
    except orjson.JSONDecodeError:
        raise _malformed() from None
    if not isinstance(value, dict):
        raise _malformed()
    return value


def _numeric_date(value: Any) -> float:
    # RFC 7519 §2 NumericDate: a JSON number; true/false and strings are not dates.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed()
    return value


def _name(value: Any) -> str | None:
    """A claim used as a name (subject, tenant): strings and integers only."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
