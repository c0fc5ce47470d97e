"""Turn Vapi's reply into what the client may see: the parsed success, or a refusal to relay.

Vapi's own 4xx message is passed back so the Web SDK shows it; a rejected private key, a server
error or an unreadable reply become the proxy's own 502 (the caller did nothing wrong and must not
learn about the operator's credentials). The private key is never echoed, even if Vapi did.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from vapi_proxy.errors import ProxyError, TooManyRequestsError, UpstreamError
from vapi_proxy.upstream.client import UpstreamResponse

logger = logging.getLogger("vapi_proxy.upstream")


def _vapi_message(body: bytes) -> str | list[str] | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    message = parsed.get("message")
    if isinstance(message, str):
        return message[:2000]
    if isinstance(message, list) and all(isinstance(m, str) for m in message):
        return [m[:500] for m in message[:50]]
    return None


def _redact(message: str | list[str], secret: str) -> str | list[str]:
    if not secret:
        return message
    if isinstance(message, str):
        return message.replace(secret, "[redacted]")
    return [m.replace(secret, "[redacted]") for m in message]


def parse_success(response: UpstreamResponse, secret: str = "") -> dict[str, Any]:
    """Raise the right refusal for a non-2xx reply; return the JSON object of a 2xx one."""
    if 200 <= response.status < 300:
        try:
            parsed = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            # A 2xx means Vapi did the work (a call may exist): never treat it as safe to retry.
            raise UpstreamError("Vapi's reply could not be read.", maybe_sent=True)
        return parsed
    raise refusal(response, secret)


def refusal(response: UpstreamResponse, secret: str = "") -> ProxyError:
    status = response.status
    if status in (401, 403):
        logger.error(
            "Vapi rejected the proxy's private key",
            extra={"fields": {"upstream_status": status}},
        )
        return UpstreamError("Vapi rejected the proxy's credentials. Contact the site operator.")
    message = _vapi_message(response.body)
    if status == 429:
        retry = 1
        if response.retry_after and response.retry_after.strip().isdigit():
            retry = min(int(response.retry_after.strip()), 3600)
        text = message if isinstance(message, str) else "Vapi is busy; try again shortly."
        return TooManyRequestsError(
            text.replace(secret, "[redacted]") if secret else text, retry_after=retry
        )
    if 400 <= status < 500:
        return ProxyError(
            _redact(message, secret) if message else f"Vapi refused the request ({status}).",
            status_code=status,
        )
    logger.warning("Vapi server error", extra={"fields": {"upstream_status": status}})
    return UpstreamError(f"Vapi could not handle the request (status {status}). Try again later.")
