"""Group commit for webhook events: deliveries that arrive while the ledger is writing are
applied together in the next transaction (`Ledger.apply_events`), so a burst costs a few
statements per batch instead of three per event. A lone event is written at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from vapi_proxy.ledger.records import EventOutcome, LedgerEvent, OutboxItem
from vapi_proxy.ledger.store import Ledger

_Item = tuple[LedgerEvent, Sequence[OutboxItem], "asyncio.Future[EventOutcome]"]


class EventWriter:
    def __init__(self, ledger: Ledger, *, max_batch: int = 128) -> None:
        self._ledger = ledger
        self._max_batch = max_batch
        self._pending: list[_Item] = []
        self._flusher: asyncio.Task[None] | None = None

    async def apply(self, event: LedgerEvent, outbox: Sequence[OutboxItem]) -> EventOutcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[EventOutcome] = loop.create_future()
        self._pending.append((event, outbox, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        # The write goes ahead even if this request is cancelled (the client left): shield it.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    outcomes = await self._ledger.apply_events([(e, o) for e, o, _ in batch])
                except Exception as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._flusher = None
