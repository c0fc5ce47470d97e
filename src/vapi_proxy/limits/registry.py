"""The limits backends by URL scheme, and `create_limiter`, which picks one and wraps it in the
`StoreLimiter`. Backends are imported lazily, so a deployment without Redis never imports it."""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING

from vapi_proxy.limits.base import Clock, Limiter
from vapi_proxy.limits.core import StoreLimiter

if TYPE_CHECKING:
    from vapi_proxy.ledger.engine import Database
    from vapi_proxy.limits.config import LimitsSettings

SQL_SCHEMES = frozenset({"sqlite", "postgresql", "postgres"})

# Scheme → "module:factory". Imported lazily so a deployment without Redis never imports it.
BACKENDS: dict[str, str] = {
    "memory": "vapi_proxy.limits.memory:MemoryStore",
    "sqlite": "vapi_proxy.limits.embedded:EmbeddedStore",
    "postgresql": "vapi_proxy.limits.sql:SqlStore",
    "postgres": "vapi_proxy.limits.sql:SqlStore",
    "redis": "vapi_proxy.limits.redis:RedisStore",
    "rediss": "vapi_proxy.limits.redis:RedisStore",
}
LEDGER = "ledger"
"""`ledger://` (the default): the ledger's own database holds the limits. A SQLite ledger gets
the embedded store (in-process counters kept durable in its file), PostgreSQL the SQL store."""


def create_limiter(
    settings: LimitsSettings,
    *,
    clock: Clock = time.time,
    database: Database | None = None,
) -> Limiter:
    """The limiter for `settings.backend`, chosen by URL scheme.

    `database`: an open `Database` for the same URL (e.g. the ledger's) for the SQL backends to
    share rather than open their own, and the one `ledger://` uses; the caller keeps ownership
    and closes it.
    """
    scheme = settings.backend.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == LEDGER:
        if database is None:
            raise ValueError("limits.backend ledger:// needs the ledger's database")
        scheme = "sqlite" if database.dialect == "sqlite" else "postgresql"
    try:
        target = BACKENDS[scheme]
    except KeyError:
        raise ValueError(f"no limits backend for scheme {scheme!r}") from None
    module_name, _, attr = target.partition(":")
    store_cls = getattr(importlib.import_module(module_name), attr)
    if database is not None and scheme in SQL_SCHEMES:
        store = store_cls(settings, database=database)
    else:
        store = store_cls(settings)
    return StoreLimiter(settings, store, clock=clock)
