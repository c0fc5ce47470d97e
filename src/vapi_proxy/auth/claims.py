"""Dotted-path lookup into verified claims, shared by authenticators, access rules and templates."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

MISSING: Any = object()
"""Returned by `lookup` when the path names nothing (distinct from a claim whose value is null)."""


def lookup(claims: Mapping[str, Any], path: str) -> Any:
    """The value at `path` (e.g. ``realm_access.roles``), or `MISSING`.

    A key that itself contains dots wins over descending: Auth0 namespaces custom claims as URLs
    (``https://example.com/roles``), so the whole path is tried first, then each dot from the
    left as a split point, so ``https://example.com/app.tenant`` still reaches ``tenant``.
    """
    if path in claims:
        return claims[path]
    start = 0
    while (dot := path.find(".", start)) != -1:
        head = claims.get(path[:dot], MISSING)
        if isinstance(head, Mapping):
            found = lookup(head, path[dot + 1 :])
            if found is not MISSING:
                return found
        start = dot + 1
    return MISSING


def claim_matches(value: Any, allowed: Collection[Any]) -> bool:
    """Whether a claim value (from `lookup`) is one of `allowed`; a list-valued claim (roles,
    groups) matches when any item is. Missing and null never match. Used by access rules and
    limit rules alike, so both read a claim the same way."""
    if value is MISSING or value is None:
        return False
    if isinstance(value, list | tuple):
        return any(_equal(item, option) for item in value for option in allowed)
    return any(_equal(value, option) for option in allowed)


def _equal(value: Any, option: Any) -> bool:
    # Python says True == 1; a claim `admin: true` must not match a rule value 1, nor "1".
    if isinstance(value, bool) or isinstance(option, bool):
        return type(value) is type(option) and bool(value == option)
    if isinstance(value, int | float) and isinstance(option, int | float):
        return bool(value == option)
    return type(value) is type(option) and bool(value == option)


def as_strings(value: Any) -> frozenset[str]:
    """A roles/groups claim as a set: a list of strings, or one space-separated string (OAuth
    `scope` style). Anything else counts as no roles rather than failing the token."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()
