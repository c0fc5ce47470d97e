"""Render the configuration reference (docs/configuration.md) from the settings models.

The reference is generated so it cannot drift: a test compares the committed file with this
output, and every field must carry a description. Regenerate with
`python -m vapi_proxy.configdoc > docs/configuration.md`.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from vapi_proxy.settings import Settings

HEADER = """# Configuration reference

Generated from the settings models by `python -m vapi_proxy.configdoc`; a test keeps it current.
Every setting can also come from the environment as `VAPI_PROXY__SECTION__FIELD` (the value is
read as YAML); the Vapi key comes only from `VAPI_API_KEY` or `VAPI_API_KEY_FILE`, and
`VAPI_BASE_URL` overrides `vapi.base_url`. Each part of the name matches an existing key whatever
its case (`VAPI_PROXY__PROFILES__SALESCOACH__VARIABLES__FIRSTNAME` reaches profile `SalesCoach`,
variable `firstName`); a new key keeps the case it is written in, unless it is all capitals.
A bad value names the variable it came from.

SQLite URLs: `sqlite:////var/lib/vapi-proxy/ledger.db` (four slashes) is an absolute path,
`sqlite:///ledger.db` (three) one relative to the directory the proxy starts in. The folder must
exist; `vapi-proxy check` says so when it does not. `serve` names the absolute file in its
start-up line (`… ledger /srv/app/vapi-proxy.db)`): the default, `sqlite:///vapi-proxy.db`, is
relative, so a proxy started from another folder opens another, empty ledger, with fresh counts.
The `sqlite+aiosqlite://` driver form is accepted too and means the same.

| setting | type | default | meaning |
|---|---|---|---|
"""


def _models_in(annotation: Any, suffix: str = "") -> list[tuple[type[BaseModel], str]]:
    """Models reachable from `annotation`, each with the path suffix of its container."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, suffix)]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _models_in(args[0], suffix)
    if origin is dict and args:
        return _models_in(args[1], suffix + ".<name>")
    if origin in (list, tuple, set, frozenset) and args:
        return _models_in(args[0], suffix + "[]")
    found: list[tuple[type[BaseModel], str]] = []
    for arg in args:
        found.extend(_models_in(arg, suffix))
    return found


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", "") for a in typing.get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(annotation)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        args = typing.get_args(annotation)
        return f"map of {_type_name(args[1])}" if args else "map"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
        if isinstance(value, BaseModel):
            return ""
        return "" if value is None else f"`{value!r}`".replace("'", '"')
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return ""
        if isinstance(value, BaseModel):
            return ""
        if isinstance(value, str):
            return "(generated)"
        return f"`{value!r}`".replace("'", '"') if value not in ({}, []) else ""
    return "required"


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        description = (field.description or "").replace("\n", " ").replace("|", "\\|")
        out.append((path, _type_name(field.annotation), _default(field), description))
        nested = _models_in(field.annotation)
        for sub, suffix in nested:
            label = ""
            type_field = sub.model_fields.get("type")
            if len(nested) > 1 and type_field is not None:
                label = f"(type: {_type_name(type_field.annotation)})"
            out.extend(rows(sub, f"{path}{suffix}{label}."))
    return out


def render_reference() -> str:
    lines = [HEADER.rstrip("\n")]
    for path, type_name, default, description in rows(Settings):
        lines.append(f"| `{path}` | {type_name} | {default} | {description} |")
    return "\n".join(lines) + "\n"


def undocumented() -> list[str]:
    """Settings without a description (a test keeps this empty)."""
    return [path for path, _, _, description in rows(Settings) if not description]


if __name__ == "__main__":  # pragma: no cover
    print(render_reference(), end="")
