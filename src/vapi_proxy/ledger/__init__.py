"""The call ledger: calls and the webhook events that changed them, over SQLite or PostgreSQL."""

from vapi_proxy.ledger.migrate import upgrade, upgrade_async
from vapi_proxy.ledger.records import (
    CallRecord,
    EventOutcome,
    IdempotencyResult,
    LedgerEvent,
    LedgerHealth,
    UsageRow,
)
from vapi_proxy.ledger.store import Ledger, LedgerSchemaError

__all__ = [
    "CallRecord",
    "EventOutcome",
    "IdempotencyResult",
    "Ledger",
    "LedgerEvent",
    "LedgerHealth",
    "LedgerSchemaError",
    "UsageRow",
    "upgrade",
    "upgrade_async",
]
