"""The `webhooks:` settings: how Vapi's deliveries are verified, answered and forwarded."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WebhookSettings(BaseModel):
    """How the proxy receives Vapi's server messages (filled in by the webhooks work)."""

    model_config = ConfigDict(extra="forbid")
