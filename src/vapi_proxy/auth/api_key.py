"""Static API keys, stored as SHA-256 hashes and looked up by hash.

Keys made by `vapi-proxy hash-key` carry 256 random bits, so a fast unsalted hash is enough: no
one can guess or brute-force such a key, a salt defends against precomputed tables that cannot
exist for it, and a slow KDF (scrypt, PBKDF2) would cost milliseconds on every request for no
gain. The config holds only hashes, so a leaked config file leaks no key.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from vapi_proxy.auth.base import AuthFailure, Credential, looks_like_jwt
from vapi_proxy.auth.config import ApiKeyMethod
from vapi_proxy.auth.identity import Identity

KEY_PREFIX = "vpk_"
MIN_KEY_LENGTH = 32
"""Shortest key `hash-key` will hash: the scheme above relies on keys being unguessable."""
_KEY_CHARS = re.compile(r"[A-Za-z0-9_~+/=-]+")
"""RFC 6750 b64token characters minus '.', so a key can never be mistaken for a JWT."""


def generate_key() -> str:
    """A new key: a recognisable prefix (secret scanners, humans) plus 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_key_format(key: str) -> None:
    """Refuse keys the hash scheme or the Bearer syntax cannot carry safely (ValueError)."""
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"an API key must be at least {MIN_KEY_LENGTH} characters of randomness")
    if not _KEY_CHARS.fullmatch(key):
        raise ValueError("an API key may use only letters, digits and - _ ~ + / =")


def hash_key(key: str) -> str:
    """The config form of a key: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class ApiKeyAuthenticator:
    """Owns non-JWT bearer tokens and the configured API-key header."""

    def __init__(self, method: ApiKeyMethod) -> None:
        self.header = method.header.lower() if method.header else None
        # Identities are immutable, so each key's is built once, not per request.
        self._by_digest: dict[bytes, Identity] = {}
        for key in method.keys:
            digest = bytes.fromhex(key.hash.removeprefix("sha256:"))
            identity = Identity(
                subject=key.name,
                method="api_key",
                tenant=key.tenant,
                profiles=frozenset(key.profiles) if key.profiles is not None else None,
            )
            self._by_digest[digest] = identity

    async def authenticate(self, credential: Credential) -> Identity | None:
        if credential.source == "authorization":
            if looks_like_jwt(credential.token):
                return None
        elif credential.source != self.header:
            return None
        # Keyed by the key's SHA-256: whatever a lookup's timing reveals is about hash bytes the
        # caller cannot steer towards a real key's hash (a preimage problem), so one O(1) lookup
        # is as safe as comparing against every key in constant time, and far faster.
        digest = hashlib.sha256(credential.token.encode("utf-8", "surrogatepass")).digest()
        identity = self._by_digest.get(digest)
        if identity is None:
            raise AuthFailure("bad_api_key", "Invalid API key")
        return identity
