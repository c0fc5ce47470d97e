"""Who is calling, as proven by a verified credential (never by the request body), and the one
key that names a caller everywhere (ledger ownership, idempotency, limits, blocks, usage).

The key is a pure function of how the caller was proven: the method, and for JWTs the issuer,
because two identity providers each have their own namespace of `sub` values. `identity_key` is
the only place the format is defined; the ledger migration that rewrote older keys calls it too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import quote, unquote

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
    issuer: str | None = None
    """The configured `issuer` of the jwt method that verified the token (None: a jwt method
    without one, or not a JWT)."""

    @property
    def key(self) -> str:
        """Stable key for limits and the ledger: method and issuer keep namespaces apart."""
        return identity_key(self.method, self.subject, self.issuer)

    @property
    def hashed(self) -> str:
        """A short non-reversible tag for logs, so raw subjects stay out of them."""
        return _tag(self.key)


def identity_hash(key: str) -> str:
    """The log tag of a key (`Identity.hashed`), as the ledger stores it beside the key."""
    return _tag(key)


@lru_cache(maxsize=4096)
def _tag(key: str) -> str:
    # Cached: the same callers come back, and this runs on every request's log line.
    return hashlib.sha256(key.encode()).hexdigest()[:16]


CONTROL_CHARACTERS = "\\x00-\\x1f\\x7f-\\x9f"
"""C0, DEL and C1, as a regular expression character range (names may hold none)."""
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")

MAX_NAME_CHARS = 256
"""The longest subject or tenant a credential may carry: the ledger's columns hold a tenant of
256 characters and an identity key (method, issuer and subject) of 512."""

MAX_ISSUER_CHARS = 240
"""The longest configured issuer, percent-encoded as identity keys hold it."""


def unusable_name(name: str) -> str | None:
    """Why a caller's name (a subject or tenant from a credential, a caller's number) cannot
    name them, or None. Names become keys in every store: PostgreSQL refuses NUL in text and
    longer values than its columns hold, which made the limits store "unavailable" for that
    one caller (admitted uncounted where a rule fails open) and their calls unrecordable; line
    breaks do not belong in names that reach logs and the console. No identity provider
    issues such names, so credentials carrying them are refused."""
    if len(name) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if _CONTROL.search(name) is not None:
        return "holds control characters"
    return None


def encoded_issuer_length(issuer: str) -> int:
    """How long `issuer` is inside identity keys (percent-encoded)."""
    return len(_encoded_issuer(issuer))


ANONYMOUS_METHOD: AuthMethod = "anonymous"


def identity_key(method: AuthMethod, subject: str, issuer: str | None = None) -> str:
    """The key naming one caller: `jwt:<issuer>:<sub>` for JWTs, `<method>:<subject>` otherwise.

    The issuer is percent-encoded (no `:` left in it), so the key splits unambiguously however
    the subject is spelt; a jwt method without a configured issuer has the empty one
    (`jwt::<sub>`). API keys (one `api_key` method, unique names), anonymous addresses and
    phone numbers are each a single namespace the proxy itself defines.
    """
    if method == "jwt":
        return f"jwt:{_encoded_issuer(issuer or '')}:{subject}"
    return f"{method}:{subject}"


@lru_cache(maxsize=256)
def _encoded_issuer(issuer: str) -> str:
    # Cached: a deployment has a few issuers, and every request makes its caller's key several
    # times (limits, ledger, logs); quote() alone was most of that.
    return quote(issuer, safe="")


def parse_identity_key(key: str) -> tuple[str, str, str | None]:
    """`(method, subject, issuer)` from a key made by `identity_key` (its exact inverse)."""
    method, _, rest = key.partition(":")
    if method != "jwt":
        return method, rest, None
    encoded, _, subject = rest.partition(":")
    issuer = unquote(encoded)
    return method, subject, issuer or None


LEGACY_JWT_PREFIX = "jwt:"
"""Before issuers were told apart, a JWT caller's key was `jwt:<sub>` (releases up to 0.1)."""


def from_legacy_jwt_key(key: str, issuer: str | None) -> str:
    """The current key of a caller stored under a legacy `jwt:<sub>` key by `issuer`'s method."""
    if not key.startswith(LEGACY_JWT_PREFIX):
        return key
    return identity_key("jwt", key[len(LEGACY_JWT_PREFIX) :], issuer)


def to_legacy_jwt_key(key: str) -> str:
    """The inverse, for a downgrade: `jwt:<issuer>:<sub>` → `jwt:<sub>`."""
    if not key.startswith(LEGACY_JWT_PREFIX):
        return key
    _issuer, _, subject = key[len(LEGACY_JWT_PREFIX) :].partition(":")
    return LEGACY_JWT_PREFIX + subject


LIMIT_SCOPE_PREFIX = "i="
"""How a limits counter key names an identity scope (`limits/core.py` `scope_key`)."""


def limit_key_from_legacy(key: str, issuer: str | None) -> str:
    """A limits counter, slot or hold key with legacy JWT identities rewritten for `issuer`."""
    legacy = LIMIT_SCOPE_PREFIX + LEGACY_JWT_PREFIX
    return key.replace(legacy, LIMIT_SCOPE_PREFIX + identity_key("jwt", "", issuer))


def limit_key_to_legacy(key: str) -> str:
    """The inverse of `limit_key_from_legacy` (for a downgrade)."""
    marker = LIMIT_SCOPE_PREFIX + LEGACY_JWT_PREFIX
    out, rest = [], key
    while (at := rest.find(marker)) >= 0:
        head, tail = rest[: at + len(marker)], rest[at + len(marker) :]
        _issuer, sep, after = tail.partition(":")
        out.append(head)
        rest = after if sep else tail
    return "".join(out) + rest
