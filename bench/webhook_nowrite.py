"""An experiment, not a product mode: uvicorn serving the proxy with `Ledger.apply_events`
replaced by a no-op that calls every event new and its call known, so `webhook_bench
--experiment no-ledger-write` shows what the webhook path costs without its ledger write.

    python -m bench.webhook_nowrite --factory vapi_proxy.app:app_from_environment ...

Nothing is stored and nothing is deduplicated: the figure is a yardstick for the ledger's
share, never a result to quote as the proxy's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vapi_proxy.ledger.records import EventOutcome
from vapi_proxy.ledger.store import Ledger


async def _skip(self: Ledger, items: Sequence[Any], **_: Any) -> list[EventOutcome]:
    return [EventOutcome(True, False, None) for _ in items]


Ledger.apply_events = _skip  # type: ignore[method-assign]

if __name__ == "__main__":
    import uvicorn.main

    uvicorn.main.main()
