"""The proxy's error tree and its one JSON envelope.

Every refusal the proxy makes is a `ProxyError` rendered as Vapi's NestJS shape plus a request id:
``{"message": ..., "error": "<HTTP reason>", "statusCode": <int>, "requestId": ...}``, so the Web
SDK surfaces `message` to the app. Nothing else (no stack trace, no exception text from inside,
no key) ever reaches a client.

    ProxyError                      base: status, message, extra headers
    ├── BadRequestError             400  malformed or disallowed input
    ├── UnauthorizedError           401  no/invalid credential (carries WWW-Authenticate)
    ├── ForbiddenError              403  valid identity, not allowed (origin, profile)
    ├── NotFoundError               404  unknown route, profile or resource
    ├── MethodNotAllowedError       405  (carries Allow)
    ├── PayloadTooLargeError        413
    ├── UnsupportedMediaTypeError   415
    ├── TooManyRequestsError        429  (carries Retry-After)
    ├── ServiceUnavailableError     503  a dependency the proxy needs is down
    └── UpstreamError               502/503/504 Vapi unreachable, refusing, busy or slow
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson


class ProxyError(Exception):
    status_code: int = 500

    def __init__(
        self,
        message: str | list[str],
        *,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message if isinstance(message, str) else "; ".join(message))
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def reason(self) -> str:
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return "Error"


class BadRequestError(ProxyError):
    status_code = 400


class UnauthorizedError(ProxyError):
    status_code = 401

    def __init__(self, message: str, *, scheme: str = "Bearer", error: str = "invalid_token"):
        # RFC 6750 §3: the challenge names the scheme and says what is wrong.
        safe = message.replace('"', "'")
        challenge = f'{scheme} realm="vapi-proxy", error="{error}", error_description="{safe}"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class ForbiddenError(ProxyError):
    status_code = 403


class NotFoundError(ProxyError):
    status_code = 404


class MethodNotAllowedError(ProxyError):
    status_code = 405

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(
            f"Method not allowed here; use {', '.join(allowed)}.",
            headers={"Allow": ", ".join(allowed)},
        )


class PayloadTooLargeError(ProxyError):
    status_code = 413


class UnsupportedMediaTypeError(ProxyError):
    status_code = 415


class TooManyRequestsError(ProxyError):
    status_code = 429

    def __init__(self, message: str, *, retry_after: int, limit: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = retry_after
        self.limit = limit
        """Which kind of limit refused (rate, quota, concurrency, minutes, usd), when known."""


class ServiceUnavailableError(ProxyError):
    status_code = 503


class UpstreamError(ProxyError):
    """Vapi could not be reached (502), timed out (504), answered something unusable (502),
    refused the profile's body or the key (502), or was busy or failing (503, `upstream/replies`).

    `maybe_sent` is True when the request may have reached Vapi (a timeout or a connection lost
    after sending): a call may exist, so the caller must not be told it is safe to retry.
    """

    status_code = 502

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(message, status_code=status_code, headers=headers)
        self.maybe_sent = maybe_sent


def envelope(
    status_code: int, message: str | list[str], request_id: str | None, reason: str | None = None
) -> dict[str, Any]:
    if reason is None:
        try:
            reason = HTTPStatus(status_code).phrase
        except ValueError:
            reason = "Error"
    return {
        "message": message,
        "error": reason,
        "statusCode": status_code,
        "requestId": request_id,
    }


def render(error: ProxyError, request_id: str | None) -> bytes:
    return orjson.dumps(envelope(error.status_code, error.message, request_id, error.reason))
