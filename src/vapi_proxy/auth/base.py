"""The authenticator seam: what each method implements, the refusal it raises, the counters kept.

Like Starlette's authentication backends, an authenticator returns None for a credential that is
not its kind and raises `AuthFailure` for one that is its kind but wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from vapi_proxy.auth.identity import Identity
from vapi_proxy.tally import Tallies, Tally


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential as presented: where it came from and its text (never logged)."""

    token: str
    source: str
    """`authorization` (a Bearer token) or the name of the API-key header it arrived in."""


class AuthFailure(Exception):
    """A credential this method owns failed verification.

    `reason` is a short stable code for counters (`expired`, `bad_signature`, ...); `message` is
    safe to show the caller: it never contains the token, key or claims.
    """

    def __init__(self, reason: str, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.unavailable = unavailable
        """True when the credential could not be checked (keys unreachable), not found wrong."""


class Authenticator(Protocol):
    async def authenticate(self, credential: Credential) -> Identity | None: ...


@dataclass
class AuthStats(Tallies):
    """Counters a metrics layer listens to (`Tallies`), so this module needs no metrics library."""

    jwks_fetches: int = 0
    """Every JWKS fetch attempted."""
    jwks_refreshes: int = 0
    """Fetches that succeeded and replaced the cached key set."""
    jwks_fetch_failures: int = 0
    successes: Tally = field(default_factory=Tally)
    """Identities issued, by method (`jwt`, `api_key`, `anonymous`)."""
    failures: Tally = field(default_factory=Tally)
    """Refusals by reason code (`missing`, `expired`, `jwks_unavailable`, ...)."""


def looks_like_jwt(token: str) -> bool:
    """A compact JWS has exactly three dot-separated parts (RFC 7515 §7.1); API keys made by
    `hash-key` never contain a dot, so the two kinds cannot be mistaken for each other."""
    return token.count(".") == 2
