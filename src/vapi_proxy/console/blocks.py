"""Blocked identities, checked on every call and chat creation, kept fresh on every replica.

Each process keeps the block list in memory and, at most every `refresh_seconds`, asks the
ledger for one number (the `blocks` version, bumped by every block and unblock): only when it
moved is the list reloaded. So a block made on any replica refuses that identity everywhere
within `admin.block_refresh_seconds` (2 s by default) at the cost of one tiny query per process
per interval, not one per request. If the database cannot be read, the last list known is kept
and the check is retried on the next request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime

from vapi_proxy.auth.identity import Identity
from vapi_proxy.console.store import Block, ConsoleStore, iso
from vapi_proxy.errors import ForbiddenError
from vapi_proxy.ledger.records import utc_now

logger = logging.getLogger("vapi_proxy.console.blocks")


class BlockedError(ForbiddenError):
    """A blocked identity tried to start a call or chat (403, with the operator's reason)."""


class BlockList:
    def __init__(
        self,
        store: ConsoleStore,
        *,
        refresh_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._now = now
        self._blocks: dict[str, Block] = {}
        self._version = -1
        self._checked = -math.inf
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Re-read on the next check (this process made a change)."""
        self._checked = -math.inf

    async def find(self, identity_key: str) -> Block | None:
        """The active block on `identity_key`, if any."""
        if self._clock() - self._checked >= self._refresh_seconds:
            await self._refresh()
        block = self._blocks.get(identity_key)
        if block is None or not block.active(self._now()):
            return None
        return block

    async def refuse_blocked(self, identity: Identity) -> None:
        """Raise `BlockedError` (403) with a message a person can read if `identity` is blocked."""
        block = await self.find(identity.key)
        if block is None:
            return
        until = f" until {iso(block.expires_at)}" if block.expires_at is not None else ""
        raise BlockedError(
            f"This account is blocked{until}: {block.reason}. Contact the service's operator."
        )

    async def _refresh(self) -> None:
        async with self._lock:
            if self._clock() - self._checked < self._refresh_seconds:
                return  # another request refreshed while this one waited
            try:
                version = await self._store.blocks_version()
                if version != self._version:
                    blocks = await self._store.blocks()
                    self._blocks = {b.identity_key: b for b in blocks}
                    self._version = version
            except Exception:
                logger.warning(
                    "reading identity blocks failed; keeping the last list", exc_info=True
                )
                return
            self._checked = self._clock()
