"""The call ledger: calls and the webhook events that changed them, over SQLite or PostgreSQL."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vapi_proxy.ledger.records import (
    CallRecord,
    EventOutcome,
    IdempotencyResult,
    LedgerEvent,
    LedgerHealth,
    UsageRow,
)

if TYPE_CHECKING:
    from vapi_proxy.ledger.migrate import upgrade, upgrade_async
    from vapi_proxy.ledger.store import Ledger, LedgerSchemaError

# The store and the migrations (SQLAlchemy, Alembic) load on first use, so that `db` and `usage`
# (whose parsers every `vapi-proxy` command builds) cost nothing until they run.
_LAZY = {
    "Ledger": "vapi_proxy.ledger.store",
    "LedgerSchemaError": "vapi_proxy.ledger.store",
    "upgrade": "vapi_proxy.ledger.migrate",
    "upgrade_async": "vapi_proxy.ledger.migrate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
