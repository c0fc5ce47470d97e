"""The ledger's settings (`database:` in the config file), validated once and passed down."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vapi_proxy.ledger.engine import async_url


class LedgerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        "sqlite:///vapi-proxy.db",
        description=(
            "Ledger database: `sqlite:///path.db` (one machine) or `postgresql://…` (several "
            "replicas). The CLI also reads `VAPI_PROXY_DATABASE_URL`."
        ),
    )
    auto_migrate: bool = Field(
        False,
        description=(
            "Upgrade the schema on start. Off: the proxy refuses to start on an out-of-date "
            "schema and asks for `vapi-proxy db upgrade`."
        ),
    )
    timeout_seconds: float = Field(
        5.0, gt=0, description="Connect, statement and SQLite lock-wait timeout, in seconds."
    )
    idempotency_ttl_seconds: float = Field(
        86400.0,
        gt=0,
        description="How long an `Idempotency-Key` answers repeats with the first result.",
    )

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        async_url(value)  # raises ValueError naming what is supported
        return value
