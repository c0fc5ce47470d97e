"""Strict query strings: every route names the parameters it takes and how each is parsed.

A parameter the route does not take, one given twice, or a value that does not parse is a 400
naming the parameter; nothing reaches `int()` that is not 1-9 plain ASCII digits (`"²".isdigit()`
is true and a 5,000-digit string exceeds Python's int-parsing limit: both were 500s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request

from vapi_proxy.errors import BadRequestError

Parser = Callable[[str, str], Any]
"""`(name, raw value) -> value`; raises BadRequestError naming the parameter."""

_ASCII_DIGITS = frozenset("0123456789")


def whole_number(low: int, high: int) -> Parser:
    """A base-10 whole number from `low` to `high`, in ASCII digits only (no sign, no spaces)."""

    def parse(name: str, raw: str) -> int:
        # Checked before int(): int() accepts other scripts' digits, `_`, signs and spaces.
        if not raw or len(raw) > len(str(high)) or not set(raw) <= _ASCII_DIGITS:
            raise BadRequestError(
                f"Query parameter '{name}' must be a whole number from {low} to {high}."
            )
        value = int(raw)
        if not low <= value <= high:
            raise BadRequestError(
                f"Query parameter '{name}' must be a whole number from {low} to {high}."
            )
        return value

    return parse


def read_query(request: Request, parsers: Mapping[str, Parser]) -> dict[str, Any]:
    """The parsed parameters this route takes (absent ones are missing from the result).

    Unknown parameters are refused rather than ignored: a filter the proxy does not apply
    (e.g. Vapi's `assistantId` on `GET /call`) must not look as if it had been applied.
    """
    values: dict[str, Any] = {}
    if not request.scope.get("query_string"):
        return values  # most requests: no need to parse anything
    for name, raw in request.query_params.multi_items():
        parser = parsers.get(name)
        if parser is None:
            shown = "".join(c if c.isprintable() else "?" for c in name[:64])
            raise BadRequestError(f"Query parameter '{shown}' is not supported here.")
        if name in values:
            raise BadRequestError(f"Query parameter '{name}' may be given only once.")
        values[name] = parser(name, raw)
    return values


NO_QUERY: Mapping[str, Parser] = {}
"""For routes that take no query parameters."""
