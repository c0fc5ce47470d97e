"""Who is calling: Vapi's private key, public key, or an HS256 JWT signed with the private key.

Vapi facts §3: public credentials (key or `tag: "public"` JWT) reach only the web endpoints and
carry `TokenRestrictions`; a private key or `tag: "private"` JWT reaches everything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .errors import INTERNAL_ERROR, VapiError, unauthorized
from .settings import SandboxSettings, TokenRestrictions

CallerKind = Literal["private-key", "public-key", "jwt-private", "jwt-public"]


@dataclass(frozen=True, slots=True)
class Caller:
    kind: CallerKind
    restrictions: TokenRestrictions | None = None

    @property
    def public(self) -> bool:
        return self.kind in ("public-key", "jwt-public")


class Authenticator:
    """Checks the `Authorization` header against the simulated org's keys."""

    def __init__(self, settings: SandboxSettings) -> None:
        self._private = settings.private_key.get_secret_value()
        self._public = settings.public_key.get_secret_value()
        self._public_restrictions = settings.public_key_restrictions
        self._org_id = settings.org_id

    def identify(self, authorization: str | None) -> Caller:
        """The caller, or 401 with Vapi's "Invalid Key" text for anything unknown."""
        if not authorization or authorization[:7].lower() != "bearer ":
            raise unauthorized()
        token = authorization[7:].strip()
        if hmac.compare_digest(token, self._private):
            return Caller("private-key")
        if hmac.compare_digest(token, self._public):
            return Caller("public-key", self._public_restrictions)
        if token.count(".") == 2:
            return self._jwt(token)
        raise unauthorized()

    def _jwt(self, token: str) -> Caller:
        claims = _verify_hs256(token, self._private.encode())
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool) and exp <= time.time():
            raise unauthorized("JWT expired.")
        if claims.get("orgId") != self._org_id:
            raise unauthorized()
        meta = claims.get("token")
        tag = meta.get("tag") if isinstance(meta, dict) else None
        if tag == "private":
            return Caller("jwt-private")
        if tag != "public":
            raise unauthorized()
        raw = meta.get("restrictions") if isinstance(meta, dict) else None
        try:
            restrictions = TokenRestrictions.model_validate(raw or {})
        except ValueError as exc:
            # Vapi answers malformed restrictions (e.g. allowedOrigins: [null]) with a 500.
            raise VapiError(500, INTERNAL_ERROR) from exc
        return Caller("jwt-public", restrictions)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _verify_hs256(token: str, key: bytes) -> dict[str, Any]:
    """Claims of an HS256 JWT signed with `key`, or 401.

    Done by hand rather than with PyJWT because PyJWT warns (an error under pytest's
    warnings-as-errors) on keys shorter than 32 bytes, which demo and benchmark keys may be.
    """
    head, body, signature = token.split(".")
    expected = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    try:
        header = orjson.loads(_b64decode(head))
        valid = hmac.compare_digest(_b64decode(signature), expected)
        claims = orjson.loads(_b64decode(body)) if valid else None
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise unauthorized() from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise unauthorized()
    if not isinstance(claims, dict):
        raise unauthorized()
    return claims


def require_private(caller: Caller) -> None:
    """Private-only endpoints refuse public credentials with the same 401 as a wrong key."""
    if caller.public:
        raise unauthorized()


def check_restrictions(caller: Caller, origin: str | None, body: dict[str, Any]) -> None:
    """Apply a public credential's restrictions to a web call or web chat body.

    Vapi's exact bodies for these refusals are unverified (Vapi facts §8); the simulator answers
    401 with a message naming the restriction.
    """
    r = caller.restrictions
    if r is None or not caller.public:
        return
    if not r.enabled:
        raise unauthorized("Key is disabled.")
    if r.allowedOrigins is not None and origin not in r.allowedOrigins:
        raise unauthorized(f"Origin {origin} is not allowed for this key.")
    assistant_id = body.get("assistantId")
    ids = r.allowedAssistantIds
    if ids is not None and assistant_id is not None and assistant_id not in ids:
        raise unauthorized(f"Assistant {assistant_id} is not allowed for this key.")
    # allowTransientAssistant is forced false when allowedAssistantIds is set (Vapi facts §3).
    transient_ok = r.allowTransientAssistant and r.allowedAssistantIds is None
    if not transient_ok and body.get("assistant") is not None:
        raise unauthorized("Transient assistants are not allowed for this key.")
