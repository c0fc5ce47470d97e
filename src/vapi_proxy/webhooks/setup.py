"""Wire the webhook parts for the `Runtime`: the `server` object the proxy puts on every call it
creates, and the receiver with its verifier, responder and forwarder. Takes the `webhooks:`
section and the URL, not the whole `Settings` (which imports this package's config)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vapi_proxy.ledger.store import Ledger
from vapi_proxy.limits.base import Limiter
from vapi_proxy.metrics import Metrics
from vapi_proxy.policy.compiled import CompiledProfile
from vapi_proxy.webhooks.config import WebhookSettings
from vapi_proxy.webhooks.forward import Forwarder
from vapi_proxy.webhooks.inbound import InboundResponder
from vapi_proxy.webhooks.receiver import WebhookReceiver
from vapi_proxy.webhooks.stats import WebhookStats
from vapi_proxy.webhooks.verify import WebhookVerifier, server_headers


def webhook_url(public_url: str | None, path: str) -> str | None:
    """Where Vapi delivers: `public_url` + the webhook path (None without a public URL)."""
    if public_url is None:
        return None
    return public_url + path


def webhook_server(hooks: WebhookSettings, url: str | None) -> dict[str, Any] | None:
    """Vapi's `Server` object for calls the proxy creates: the webhook URL, the Vapi
    credential by id, and any secret headers the verifiers ask to send."""
    if url is None:
        return None
    server: dict[str, Any] = {"url": url}
    if hooks.vapi_credential_id is not None:
        server["credentialId"] = hooks.vapi_credential_id
    if hooks.server_timeout_seconds is not None:
        server["timeoutSeconds"] = hooks.server_timeout_seconds
    headers = server_headers(hooks.verify)
    if headers:
        server["headers"] = headers
    return server


@dataclass
class WebhookParts:
    receiver: WebhookReceiver
    forwarder: Forwarder
    stats: WebhookStats


def build(
    hooks: WebhookSettings,
    *,
    url: str,
    profiles: Mapping[str, CompiledProfile],
    limiter: Limiter,
    ledger: Ledger,
    server: Mapping[str, Any] | None,
    clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
) -> WebhookParts:
    # Cross-section problems (rule profiles, respond.url) were refused when the settings were
    # validated (settings.webhook_problems).
    stats = WebhookStats()
    forwarder = Forwarder(hooks.forward, hooks.respond, ledger, stats, clock=clock)
    verifier = WebhookVerifier(
        hooks.verify,
        url=url,
        allow_unverified=hooks.allow_unverified,
        clock=clock,
    )
    inbound = InboundResponder(
        hooks.inbound,
        profiles=profiles,
        limiter=limiter,
        ledger=ledger,
        webhook_server=server,
        forwarder=forwarder,
        stats=stats,
        clock=clock,
        metrics=metrics,
    )
    receiver = WebhookReceiver(
        hooks,
        verifier=verifier,
        ledger=ledger,
        limiter=limiter,
        inbound=inbound,
        forwarder=forwarder,
        stats=stats,
    )
    return WebhookParts(receiver, forwarder, stats)
