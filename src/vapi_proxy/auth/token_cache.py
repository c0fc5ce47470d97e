"""Identities of JWTs one jwt method has already verified, so a browser that reuses its token
does not pay for the signature check (RS256 ≈ 90 µs, ES256/EdDSA ≈ 240 µs) on every request.

It stays fail closed:
- one cache per `JwtAuthenticator`, so per method and per loaded config: a token verified by one
  method (issuer, keys, audience, claims rules) is never taken as verified by another, and a
  reload (new workers, new chain) starts empty;
- keyed by the SHA-256 of the exact token bytes that were verified (the token itself is neither
  kept nor logged);
- only successes are stored, never refusals: a refusal is recomputed each time, so nobody can pin
  a failure on another user's token;
- an entry is refused by the same `exp`/`nbf`/`iat` comparisons, with the same leeway, that the
  verifier makes (never later), so it ends exactly when the token would have been refused; a
  token without `exp` is not stored at all;
- the JWT authenticator empties it when its JWKS set changes, and checks on every hit that the
  key which verified the token is still the one the key set (with its refresh and stale-key
  bound) gives for the token's `kid`;
- bounded (least recently used out), so a flood of distinct tokens costs one hash, one insert
  and one eviction each: nothing grows and nothing is slower than verifying without a cache.

A hit returns the same `Identity` object (frozen; its claims are read, never written, by every
consumer) to every request that presents the token.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from vapi_proxy.auth.identity import Identity


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a later request with the same bytes may reuse, and the bounds it is reused within."""

    identity: Identity
    expires: float
    """The token's `exp` (NumericDate), held to `exp <= now - leeway` like the verifier does."""
    not_before: float | None
    """The later of `nbf` and `iat` if present, held to `> now + leeway` (a clock set back)."""
    kid: str | None
    key: Any
    """The `JwkKey` that verified the token (None for a configured PEM key or secret)."""


class VerifiedTokenCache:
    """A bounded LRU map from a token's SHA-256 to its `VerifiedToken`."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._entries: OrderedDict[bytes, VerifiedToken] = OrderedDict()
        self.hits = 0
        """Requests answered from the cache (for tests and benchmarks; not a metric)."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> VerifiedToken | None:
        entry = self._entries.get(digest)
        if entry is not None:
            self._entries.move_to_end(digest)
        return entry

    def put(self, digest: bytes, entry: VerifiedToken) -> None:
        entries = self._entries
        entries[digest] = entry
        entries.move_to_end(digest)
        if len(entries) > self.size:
            entries.popitem(last=False)

    def drop(self, digest: bytes) -> None:
        self._entries.pop(digest, None)

    def clear(self) -> None:
        self._entries.clear()
