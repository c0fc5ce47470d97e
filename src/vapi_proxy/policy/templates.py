"""A tiny template language for server-owned values: ``{{identity.sub}}`` and a few names more.

There is nothing to execute and nothing to walk but dict keys of verified claims: a placeholder is
one of the names in `NAMES`, or ``identity.claims.<dotted path>``. Names are checked when the
config loads (`validate_template`), so a typo stops start-up instead of a call. At render time a
missing value (no tenant, a claim this user lacks) renders as the empty string; a list or object
claim renders as compact JSON. A literal ``{{`` or ``}}`` outside a placeholder is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from vapi_proxy.auth.claims import MISSING, lookup
from vapi_proxy.auth.identity import Identity

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_CLAIMS_PREFIX = "identity.claims."
_CLAIM_PATH = re.compile(r"[^\s{}]+")


class TemplateError(ValueError):
    """A template uses syntax or a name this language does not have (a config error)."""


@dataclass(frozen=True, slots=True)
class TemplateContext:
    """What a template may read: the verified identity, the request id, the profile's name."""

    identity: Identity
    request_id: str | None = None
    profile_name: str | None = None


NAMES: dict[str, Callable[[TemplateContext], Any]] = {
    "identity.sub": lambda c: c.identity.subject,
    "identity.subject": lambda c: c.identity.subject,
    "identity.tenant": lambda c: c.identity.tenant,
    "identity.method": lambda c: c.identity.method,
    "request.id": lambda c: c.request_id,
    "profile.name": lambda c: c.profile_name,
}


def validate_template(template: str) -> None:
    """Raise `TemplateError` unless every placeholder is known and the braces are balanced."""
    _compile(template)


def validate_value(value: Any) -> None:
    """`validate_template` on every string inside nested dicts and lists."""
    if isinstance(value, str):
        validate_template(value)
    elif isinstance(value, dict):
        for item in value.values():
            validate_value(item)
    elif isinstance(value, list):
        for item in value:
            validate_value(item)


def render(template: str, context: TemplateContext) -> str:
    parts = _compile(template)
    if len(parts) == 1 and isinstance(parts[0], str):
        return parts[0]
    return "".join(part if isinstance(part, str) else _text(part(context)) for part in parts)


def render_value(value: Any, context: TemplateContext) -> Any:
    """`value` with every string rendered, through nested dicts and lists; other scalars kept."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, dict):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, context) for item in value]
    return value


Part = str | Callable[[TemplateContext], Any]


@lru_cache(maxsize=1024)
def _compile(template: str) -> tuple[Part, ...]:
    """Literal text and resolver functions, in order; cached as profiles reuse few templates."""
    parts: list[Part] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(_literal(template[pos : match.start()]))
        parts.append(_resolver(match.group(1)))
        pos = match.end()
    parts.append(_literal(template[pos:]))
    return tuple(part for part in parts if part != "") or ("",)


def _literal(text: str) -> str:
    if "{{" in text or "}}" in text:
        raise TemplateError(f"unbalanced or malformed placeholder in template {text!r}")
    return text


def _resolver(name: str) -> Callable[[TemplateContext], Any]:
    if name in NAMES:
        return NAMES[name]
    if name.startswith(_CLAIMS_PREFIX):
        path = name.removeprefix(_CLAIMS_PREFIX)
        if _CLAIM_PATH.fullmatch(path):
            return lambda c: lookup(c.identity.claims, path)
    known = ", ".join([*NAMES, "identity.claims.<path>"])
    raise TemplateError(f"unknown template name {{{{{name}}}}}; known names: {known}")


def _text(value: Any) -> str:
    if value is None or value is MISSING:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
