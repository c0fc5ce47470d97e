"""Counters of webhook intake, answers and forwarding, for the logs and the metrics.

Plain integers on one object per process (`runtime.webhook_stats`); the metrics layer listens to
every increase (`Tallies`) without the webhook code knowing about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vapi_proxy.tally import Tallies, Tally


@dataclass
class WebhookStats(Tallies):
    received: int = 0
    verified: int = 0
    rejected: Tally = field(default_factory=Tally)
    """Refused deliveries by reason (`hmac_mismatch`, `hmac_expired`, `no_credential`, …)."""
    by_type: Tally = field(default_factory=Tally)
    duplicates: int = 0
    unknown_calls: int = 0
    adopted_calls: int = 0
    settled: int = 0
    errors: int = 0
    assistant_requests: Tally = field(default_factory=Tally)
    """assistant-request answers by outcome (`profile`, `destination`, `error`, `limited`, …)."""
    relayed: Tally = field(default_factory=Tally)
    """Request types relayed to the app, by outcome (`ok`, `failed`, `late`)."""
    forwarded: int = 0
    forward_failures: int = 0
    forward_parked: int = 0

    def snapshot(self) -> dict[str, object]:
        return {
            "received": self.received,
            "verified": self.verified,
            "rejected": dict(self.rejected),
            "by_type": dict(self.by_type),
            "duplicates": self.duplicates,
            "unknown_calls": self.unknown_calls,
            "adopted_calls": self.adopted_calls,
            "settled": self.settled,
            "errors": self.errors,
            "assistant_requests": dict(self.assistant_requests),
            "relayed": dict(self.relayed),
            "forwarded": self.forwarded,
            "forward_failures": self.forward_failures,
            "forward_parked": self.forward_parked,
        }
