"""The simulator's one error type, rendered in Vapi's NestJS shape.

`{"message": <str | list[str]>, "error": "<HTTP reason>", "statusCode": <int>}` (Vapi facts §2.9);
handlers raise `VapiError` and the dispatcher renders it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

# Vapi facts §2.9, observed verbatim for a wrong key on /call and /call/web.
INVALID_KEY = (
    "Invalid Key. Hot tip, you may be using the private key instead of the public key, "
    "or vice versa."
)
# Vapi facts §2.9 (GitHub VapiAI/client-sdk-web#108); note: no "error" field in this one.
INTERNAL_ERROR = "Internal server error. Contact support@vapi.ai for help."


class VapiError(Exception):
    """A refusal the simulator answers with, as Vapi would."""

    def __init__(
        self,
        status: int,
        message: str | list[str],
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message if isinstance(message, str) else "; ".join(message))
        self.status = status
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        if self.status == 500:
            return {"statusCode": 500, "message": self.message}
        return {
            "message": self.message,
            "error": HTTPStatus(self.status).phrase,
            "statusCode": self.status,
        }


def not_found(what: str) -> VapiError:
    return VapiError(404, f"{what} not found")


def unauthorized(message: str = INVALID_KEY) -> VapiError:
    return VapiError(401, message)
