"""Fault injection: which requests get latency, an error status, a dropped socket or a broken
stream, and how many times. Admin `POST/DELETE /__sandbox/faults` edits the same list.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from .errors import INTERNAL_ERROR, INVALID_KEY
from .settings import FaultSpec

# Bodies as Vapi's stack answers them: NestJS shape; 401 and 500 text from Vapi facts §2.9; 429
# text is the only one reported (§2.10), its shape unconfirmed. The 4xx messages are the NestJS
# defaults; a fault's `message` stands in for a validation reason.
_BODIES: dict[int, dict[str, Any]] = {
    400: {"message": "Bad Request", "error": "Bad Request", "statusCode": 400},
    401: {"message": INVALID_KEY, "error": "Unauthorized", "statusCode": 401},
    403: {"message": "Forbidden", "error": "Forbidden", "statusCode": 403},
    404: {"message": "Not Found", "error": "Not Found", "statusCode": 404},
    422: {
        "message": "Unprocessable Entity",
        "error": "Unprocessable Entity",
        "statusCode": 422,
    },
    429: {"message": "Rate limit exceeded", "error": "Too Many Requests", "statusCode": 429},
    500: {"statusCode": 500, "message": INTERNAL_ERROR},
    502: {"message": "Bad Gateway", "error": "Bad Gateway", "statusCode": 502},
    503: {"message": "Service Unavailable", "error": "Service Unavailable", "statusCode": 503},
}


def fault_body(status: int, message: str | list[str] | None = None) -> dict[str, Any]:
    body = dict(_BODIES[status])
    if message is not None:
        body["message"] = message
    return body


@dataclass(slots=True)
class _Active:
    spec: FaultSpec
    remaining: int | None


class FaultBook:
    """The active faults, first match wins; a counted fault retires when used up."""

    def __init__(self, specs: list[FaultSpec]) -> None:
        self._faults = [_Active(s, s.count) for s in specs]

    def __bool__(self) -> bool:
        return bool(self._faults)

    def add(self, spec: FaultSpec) -> None:
        self._faults.append(_Active(spec, spec.count))

    def clear(self) -> None:
        self._faults.clear()

    def listing(self) -> list[dict[str, Any]]:
        return [{**f.spec.model_dump(), "remaining": f.remaining} for f in self._faults]

    def take(self, method: str, path: str) -> FaultSpec | None:
        """The fault for this request, consuming one use of it."""
        for active in self._faults:
            spec = active.spec
            if spec.method not in ("*", method) or not fnmatchcase(path, spec.path):
                continue
            if active.remaining is not None:
                active.remaining -= 1
                if active.remaining <= 0:
                    self._faults.remove(active)
            return spec
        return None
