"""Who is calling, as proven by a verified credential (never by the request body)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

AuthMethod = Literal["jwt", "api_key", "anonymous", "phone"]
"""`phone`: an inbound caller known only by caller ID (`customer.number`), which the
proxy routed itself (webhooks/inbound.py); caller ID can be spoofed, so treat it as a label
for limits and usage, not as proof."""


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    """The caller: a JWT `sub`, an API key's name, the client address for anonymous, or the
    caller's number for phone."""
    method: AuthMethod
    tenant: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    profiles: frozenset[str] | None = None
    """Profiles this credential may use (API keys restrict this); None means no restriction."""
    roles: frozenset[str] = frozenset()
    """Roles or groups read from a verified credential (a JWT's `roles_claim`); empty otherwise."""

    @property
    def key(self) -> str:
        """Stable key for limits and the ledger: the method keeps namespaces apart."""
        return f"{self.method}:{self.subject}"

    @property
    def hashed(self) -> str:
        """A short non-reversible tag for logs, so raw subjects stay out of them."""
        return _tag(self.key)


@lru_cache(maxsize=4096)
def _tag(key: str) -> str:
    # Cached: the same callers come back, and this runs on every request's log line.
    return hashlib.sha256(key.encode()).hexdigest()[:16]


ANONYMOUS_METHOD: AuthMethod = "anonymous"
