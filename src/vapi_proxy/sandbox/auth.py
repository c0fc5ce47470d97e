"""Who is calling: Vapi's private key, public key, or an HS256 JWT signed with the private key.

API-FACTS §3: public credentials (key or `tag: "public"` JWT) reach only the web endpoints and
carry `TokenRestrictions`; a private key or `tag: "private"` JWT reaches everything.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Literal

import jwt

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
        try:
            claims: dict[str, Any] = jwt.decode(token, self._private, algorithms=["HS256"])
        except jwt.ExpiredSignatureError as exc:
            raise unauthorized("JWT expired.") from exc
        except jwt.PyJWTError as exc:
            raise unauthorized() from exc
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


def require_private(caller: Caller) -> None:
    """Private-only endpoints refuse public credentials with the same 401 as a wrong key."""
    if caller.public:
        raise unauthorized()


def check_restrictions(caller: Caller, origin: str | None, body: dict[str, Any]) -> None:
    """Apply a public credential's restrictions to a web call or web chat body.

    Vapi's exact bodies for these refusals are unverified (API-FACTS §8); the simulator answers
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
    # allowTransientAssistant is forced false when allowedAssistantIds is set (API-FACTS §3).
    transient_ok = r.allowTransientAssistant and r.allowedAssistantIds is None
    if not transient_ok and body.get("assistant") is not None:
        raise unauthorized("Transient assistants are not allowed for this key.")
