"""In-process limits store: exact for one process, because no method awaits between check and take.

Nothing survives a restart and nothing is shared between workers; use `sqlite:///` for that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vapi_proxy.limits.base import Hold
from vapi_proxy.limits.config import LimitsSettings
from vapi_proxy.limits.core import SETTLEABLE, Plan, Shortfall, true_up

# States a reservation moves through; only live ones hold a concurrency slot.
LIVE = ("pending", "committed")


@dataclass(slots=True)
class _Record:
    holds: tuple[Hold, ...]
    expires_at: float
    keep_until: float
    state: str = "pending"
    call_id: str | None = None
    applied: str = ""
    slot_keys: tuple[str, ...] = field(default_factory=tuple)


class MemoryStore:
    name = "memory"

    def __init__(self, settings: LimitsSettings) -> None:
        self._counters: dict[str, tuple[int, float]] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._records: dict[str, _Record] = {}
        self._calls: dict[str, str] = {}

    def _value(self, key: str, now: float) -> int:
        value, until = self._counters.get(key, (0, 0.0))
        return value if until > now else 0

    async def reserve(
        self, rid: str, plan: Plan, *, now: float, expires_at: float, keep_until: float
    ) -> list[Shortfall]:
        # No await from here to the end: asyncio cannot interleave another reserve.
        short: list[Shortfall] = []
        for i, c in enumerate(plan.counters):
            cur = self._value(c.hold.key, now)
            ok = cur + c.hold.amount <= c.limit if c.fit else cur < c.limit
            if not ok:
                short.append(Shortfall(i, cur))
        for j, s in enumerate(plan.slots):
            live = self._slots.setdefault(s.hold.key, {})
            if len(live) >= s.limit:
                # Prune expired slots only when they could matter: O(1) in the common case.
                for r in [r for r, t in live.items() if t <= now]:
                    del live[r]
            if len(live) >= s.limit:
                short.append(
                    Shortfall(len(plan.counters) + j, len(live), min(live.values(), default=None))
                )
        if short:
            return short
        for c in plan.counters:
            cur = self._value(c.hold.key, now)
            self._counters[c.hold.key] = (cur + c.hold.amount, now + c.ttl)
        for s in plan.slots:
            self._slots[s.hold.key][rid] = expires_at
        self._records[rid] = _Record(
            plan.holds, expires_at, keep_until, slot_keys=tuple(s.hold.key for s in plan.slots)
        )
        return []

    async def commit(self, rid: str, call_id: str, *, now: float) -> None:
        rec = self._records.get(rid)
        if rec is None or rec.state != "pending":
            return
        rec.state, rec.call_id = "committed", call_id
        self._calls[call_id] = rid

    def _free_slots(self, rid: str, rec: _Record) -> None:
        for key in rec.slot_keys:
            self._slots.get(key, {}).pop(rid, None)

    def _adjust(self, key: str, delta: int, now: float) -> None:
        if key in self._counters and self._counters[key][1] > now:
            value, until = self._counters[key]
            self._counters[key] = (max(0, value + delta), until)

    async def release(self, rid: str, *, now: float) -> None:
        rec = self._records.get(rid)
        if rec is None or rec.state not in LIVE:
            return
        for h in rec.holds:
            if h.what != "concurrency":
                self._adjust(h.key, -h.amount, now)
        self._free_slots(rid, rec)
        rec.state = "released"

    async def settle(
        self, call_id: str, *, actual_ms: int | None, actual_micro_usd: int | None, now: float
    ) -> None:
        rid = self._calls.get(call_id)
        rec = self._records.get(rid) if rid is not None else None
        if rec is None or rec.state not in SETTLEABLE:
            return
        holds = [(h.what, h.key, h.amount) for h in rec.holds]
        deltas, rec.applied, done = true_up(holds, rec.applied, actual_ms, actual_micro_usd)
        for key, delta in deltas.items():
            self._adjust(key, delta, now)
        self._free_slots(rid or "", rec)
        rec.state = "settled" if done else "ended"

    async def expire(self, now: float) -> list[str | None]:
        freed: list[str | None] = []
        for rid, rec in list(self._records.items()):
            if rec.state in LIVE and rec.expires_at <= now:
                self._free_slots(rid, rec)
                rec.state = "expired"
                freed.append(rec.call_id)
            if rec.keep_until <= now:
                del self._records[rid]
                if rec.call_id is not None:
                    self._calls.pop(rec.call_id, None)
        for key, (_, until) in list(self._counters.items()):
            if until <= now:
                del self._counters[key]
        return freed

    async def peek(
        self, keys: Sequence[str], slot_keys: Sequence[str], *, now: float
    ) -> tuple[dict[str, int], dict[str, tuple[int, float | None]]]:
        live: dict[str, tuple[int, float | None]] = {}
        for key in slot_keys:
            ends = [t for t in self._slots.get(key, {}).values() if t > now]
            live[key] = (len(ends), min(ends, default=None))
        return {k: self._value(k, now) for k in keys}, live

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
