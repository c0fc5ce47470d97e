"""Verify the app's JWTs (JWKS, PEM public key or shared secret) and read the caller from them.

Each PyJWT error becomes one precise refusal here, at one boundary; no message ever contains the
token or its claims.
"""

from __future__ import annotations

from typing import Any

import jwt

from vapi_proxy.auth.base import AuthFailure, Credential, looks_like_jwt
from vapi_proxy.auth.claims import as_strings, lookup
from vapi_proxy.auth.config import JwtMethod
from vapi_proxy.auth.identity import Identity
from vapi_proxy.auth.jwks import JwksCache

# Most specific first: InvalidSignatureError is a DecodeError, everything an InvalidTokenError.
_REFUSALS: tuple[tuple[type[jwt.InvalidTokenError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "Token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "Token is not yet valid"),
    (jwt.InvalidIssuerError, "wrong_issuer", "Token issuer is not accepted"),
    (jwt.InvalidAudienceError, "wrong_audience", "Token audience is not accepted"),
    (jwt.InvalidSignatureError, "bad_signature", "Token signature is invalid"),
    (jwt.InvalidAlgorithmError, "algorithm", "Token algorithm is not allowed"),
    (jwt.InvalidIssuedAtError, "malformed", "Token issue time (iat) is invalid"),
    (jwt.exceptions.InvalidSubjectError, "malformed", "Token subject (sub) is invalid"),
    (jwt.DecodeError, "malformed", "Token is malformed"),
)


class JwtAuthenticator:
    """Owns bearer tokens shaped like a JWT (and, beside other jwt methods, with its issuer)."""

    def __init__(
        self, method: JwtMethod, *, jwks: JwksCache | None = None, exclusive: bool = True
    ) -> None:
        """`exclusive` is False when other jwt methods exist: tokens are then routed by `iss`."""
        self._method = method
        self._jwks = jwks
        self._exclusive = exclusive or method.issuer is None
        self._algorithms = frozenset(method.algorithms)
        secret = method.secret
        self._static_key: Any = (
            secret.get_secret_value().encode() if secret is not None else method.parsed_public_key
        )
        if self._static_key is None and jwks is None:
            raise ValueError("a jwks_url method needs a JwksCache")
        self._options: dict[str, Any] = {"require": list(method.required_claims)}

    async def authenticate(self, credential: Credential) -> Identity | None:
        token = credential.token
        if credential.source != "authorization" or not looks_like_jwt(token):
            return None
        method = self._method
        if len(token) > method.max_token_bytes:
            raise AuthFailure("oversized", "Token is too large")
        try:
            header = jwt.get_unverified_header(token)
            if not self._exclusive and self._unverified_issuer(token) != method.issuer:
                return None
        except jwt.InvalidTokenError:
            raise AuthFailure("malformed", "Token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthFailure("algorithm", "Token algorithm is not allowed")
        key = await self._key(header.get("kid"), alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=method.issuer,
                audience=method.audience,
                leeway=method.leeway_seconds,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.MissingRequiredClaimError as exc:
            # The claim's name comes from the config or the JWT spec, never from the token.
            raise _missing(exc.claim) from None
        except jwt.InvalidTokenError as exc:
            for kind, reason, message in _REFUSALS:
                if isinstance(exc, kind):
                    raise AuthFailure(reason, message) from None
            raise AuthFailure("invalid", "Token is invalid") from None
        return self._identity(claims)

    async def _key(self, kid: Any, alg: str) -> Any:
        if self._static_key is not None:
            return self._static_key
        if kid is not None and not isinstance(kid, str):
            raise AuthFailure("malformed", "Token is malformed")
        if self._jwks is None:  # ruled out in __init__; keeps the type checker honest
            raise RuntimeError("no key source")
        jwk = await self._jwks.get(kid)
        if not jwk.fits(alg):
            raise AuthFailure("algorithm", "Token algorithm does not match its signing key")
        return jwk.key

    def _identity(self, claims: dict[str, Any]) -> Identity:
        method = self._method
        subject = _scalar(lookup(claims, method.subject_claim))
        if not subject:
            raise _missing(method.subject_claim)
        tenant = _scalar(lookup(claims, method.tenant_claim)) if method.tenant_claim else None
        roles = (
            as_strings(lookup(claims, method.roles_claim)) if method.roles_claim else frozenset()
        )
        return Identity(
            subject=subject, method="jwt", tenant=tenant or None, claims=claims, roles=roles
        )

    @staticmethod
    def _unverified_issuer(token: str) -> Any:
        # Routing only: the method this picks verifies the signature and the issuer for real.
        return jwt.decode(token, options={"verify_signature": False}).get("iss")


def _missing(claim: str) -> AuthFailure:
    return AuthFailure("missing_claim", f"Token is missing the required claim '{claim}'")


def _scalar(value: Any) -> str | None:
    """A claim used as a name (subject, tenant): strings and integers only."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
