"""Checks one client-set variable against its `VariableSpec` (type, length, enum, range)."""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any

from vapi_proxy.policy.profiles import VariableSpec


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def check_variable(path: str, spec: VariableSpec, value: Any) -> str | None:
    """Return a readable problem with `value`, or None when it is acceptable."""
    if spec.type == "string":
        if not isinstance(value, str):
            return f"'{path}' must be a string."
        if len(value) > spec.max_length:
            return f"'{path}' is longer than {spec.max_length} characters."
        if len(value) < spec.min_length:
            return f"'{path}' is shorter than {spec.min_length} characters."
        if spec.pattern is not None and _compiled(spec.pattern).fullmatch(value) is None:
            return f"'{path}' does not have the expected format."
    elif spec.type == "boolean":
        if not isinstance(value, bool):
            return f"'{path}' must be true or false."
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"'{path}' must be a number."
        if spec.type == "integer" and not (isinstance(value, int) or value.is_integer()):
            return f"'{path}' must be a whole number."
        if not math.isfinite(value):
            return f"'{path}' must be a finite number."
        if spec.minimum is not None and value < spec.minimum:
            return f"'{path}' must be at least {spec.minimum:g}."
        if spec.maximum is not None and value > spec.maximum:
            return f"'{path}' must be at most {spec.maximum:g}."
    if spec.enum is not None and value not in spec.enum:
        shown = ", ".join(str(v) for v in spec.enum[:20])
        return f"'{path}' must be one of: {shown}."
    return None
