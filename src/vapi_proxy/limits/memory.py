"""In-process limits: `CounterState` holds counters, slots and reservations and applies every
operation on them (plain code, no I/O); `MemoryStore` is that state alone, for one process.

The state is plain tuples, strings and numbers in dicts and lists, so the cyclic garbage
collector stops tracking nearly all of it (CPython untracks a tuple of atoms when a collection
first sees it, and a dict of atoms from the start): a full collection's pause does not grow with
the reservations held. Objects of classes, dataclasses included, are always tracked: at 100k
held calls they made a full collection walk 900k objects (0.5 s, `bench/gc_state.py`).

`MemoryStore` is exact for one process, because no method awaits between check and take, but
nothing survives a restart and nothing is shared between workers. The embedded store
(`embedded.py`) keeps the same state as a cache of durable state in the ledger's SQLite file.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from vapi_proxy.limits.base import Hold
from vapi_proxy.limits.config import LimitsSettings
from vapi_proxy.limits.core import SETTLEABLE, CounterCheck, Plan, Shortfall, true_up

# States a reservation moves through; only live ones hold a concurrency slot.
LIVE = ("pending", "committed")
FINISHED = ("released", "settled")
"""States in which nothing more can change a reservation: snapshots leave them out."""
_RECORD, _COUNTER, _SLOT = 0, 1, 2  # what a `CounterState._reclaim` entry is about


HoldRow = tuple[str, str, str, int]
"""A `Hold` as the state keeps it: (rule, what, key, amount)."""

Record = tuple[tuple[HoldRow, ...], float, float, str, str | None, str, tuple[str, ...]]
"""One reservation: (holds, expires_at, keep_until, state, call_id, applied, slot_keys), where
`applied` says which actuals a settle has landed ("m", "u") and `slot_keys` are the keys of its
concurrency holds. Immutable: a change puts a new tuple in its place."""
HOLDS: Final = 0  # positions in a `Record`
EXPIRES_AT: Final = 1
KEEP_UNTIL: Final = 2
STATE: Final = 3
CALL_ID: Final = 4
APPLIED: Final = 5
SLOT_KEYS: Final = 6


def hold_rows(holds: Iterable[Hold]) -> tuple[HoldRow, ...]:
    return tuple([(h.rule, h.what, h.key, h.amount) for h in holds])


def _moved(rec: Record, state: str, call_id: str | None, applied: str) -> Record:
    holds, expires_at, keep_until, _, _, _, slot_keys = rec
    return (holds, expires_at, keep_until, state, call_id, applied, slot_keys)


@dataclass(frozen=True, slots=True)
class Frozen:
    """A copy of a `CounterState`'s counters, slots and records (`CounterState.freeze`)."""

    counters: dict[str, tuple[int, float]]
    slots: dict[str, dict[str, float]]
    records: dict[str, Record]


class CounterState:
    """Counters (key → value, valid until), concurrency slots (key → reservation → expiry) and
    reservation records. Every change is a function of its arguments, `now` included, so
    replaying the same operations rebuilds the same state whenever it is done.

    What expires is found through two heaps ordered by time (reservations by expiry for `due`,
    and everything `gc` forgets), so neither scans what has not expired yet. Heap entries are
    hints, checked against the state when they come up: a stale one is dropped or pushed back
    with the current time."""

    def __init__(self) -> None:
        self.counters: dict[str, tuple[int, float]] = {}
        self.slots: dict[str, dict[str, float]] = {}
        self.records: dict[str, Record] = {}
        self.calls: dict[str, str] = {}
        self._due: list[tuple[float, str]] = []
        """(expires_at, reservation id) of every reservation taken."""
        self._reclaim: list[tuple[float, int, str, str]] = []
        """(when, what, key, reservation id): a record (_RECORD) at its expiry, which frees its
        expired slots and, at `keep_until`, the record; a counter (_COUNTER) at its end; a slot
        (_SLOT) with no record behind it (loaded from a snapshot)."""

    def value(self, key: str, now: float) -> int:
        value, until = self.counters.get(key, (0, 0.0))
        return value if until > now else 0

    def _counted(self, c: CounterCheck, now: float) -> int:
        """`counted(c, values)` read straight from the counters."""
        get = self.counters.get
        entry = get(c.hold.key)
        cur = entry[0] if entry is not None and entry[1] > now else 0
        for key in c.window:
            entry = get(key)
            if entry is not None and entry[1] > now:
                cur += entry[0]
        return cur

    def check(self, plan: Plan, now: float) -> list[Shortfall]:
        short: list[Shortfall] = []
        for i, c in enumerate(plan.counters):
            cur = self._counted(c, now)
            if not (cur + c.hold.amount <= c.limit if c.fit else cur < c.limit):
                short.append(Shortfall(i, cur))
        if plan.slots:
            base = len(plan.counters)
            for j, s in enumerate(plan.slots):
                live = self.slots.get(s.hold.key)
                if live is None:
                    if s.limit <= 0:
                        short.append(Shortfall(base + j, 0, None))
                    continue
                if len(live) < s.limit:
                    continue
                # Prune expired slots only when they could matter: O(1) in the common case.
                for r in [r for r, t in live.items() if t <= now]:
                    del live[r]
                if len(live) >= s.limit:
                    short.append(Shortfall(base + j, len(live), min(live.values(), default=None)))
        return short

    def reserve(
        self, rid: str, plan: Plan, *, now: float, expires_at: float, keep_until: float
    ) -> list[Shortfall]:
        """`check`, then (nothing short) `take` what the plan holds, counters valid for their
        `ttl` from `now`. No I/O, no await: atomic for the caller."""
        short = self.check(plan, now)
        if short:
            return short
        for c in plan.counters:
            self._add(c.hold.key, c.hold.amount, now + c.ttl, now)
        slot_keys = tuple([s.hold.key for s in plan.slots])
        for key in slot_keys:
            self.slots.setdefault(key, {})[rid] = expires_at
        rows = hold_rows(plan.holds)
        self._record(rid, (rows, expires_at, keep_until, "pending", None, "", slot_keys))
        return []

    def _add(self, key: str, amount: int, until: float, now: float) -> None:
        entry = self.counters.get(key)
        if entry is None or entry[1] <= now:
            self.counters[key] = (amount, until)
            heapq.heappush(self._reclaim, (until, _COUNTER, key, ""))
        else:
            self.counters[key] = (entry[0] + amount, max(entry[1], until))

    def _record(self, rid: str, rec: Record) -> None:
        self.records[rid] = rec
        heapq.heappush(self._due, (rec[EXPIRES_AT], rid))
        heapq.heappush(self._reclaim, (rec[EXPIRES_AT], _RECORD, rid, ""))

    def take(
        self,
        rid: str,
        rows: tuple[HoldRow, ...],
        untils: Mapping[str, float],
        *,
        now: float,
        expires_at: float,
        keep_until: float,
    ) -> None:
        """Take what a reservation holds (already checked; `rows` as `hold_rows` gives them);
        `untils`: counter key → until."""
        slot_keys = []
        for _, what, key, amount in rows:
            if what == "concurrency":
                self.slots.setdefault(key, {})[rid] = expires_at
                slot_keys.append(key)
            else:
                self._add(key, amount, untils[key], now)
        rec = (rows, expires_at, keep_until, "pending", None, "", tuple(slot_keys))
        self._record(rid, rec)

    def commit(self, rid: str, call_id: str) -> bool:
        rec = self.records.get(rid)
        if rec is None or rec[STATE] != "pending":
            return False
        self.records[rid] = _moved(rec, "committed", call_id, rec[APPLIED])
        self.calls[call_id] = rid
        return True

    def _free_slots(self, rid: str, rec: Record) -> None:
        for key in rec[SLOT_KEYS]:
            live = self.slots.get(key)
            if live is not None:
                live.pop(rid, None)
                if not live:
                    del self.slots[key]

    def _adjust(self, key: str, delta: int, now: float) -> None:
        if key in self.counters and self.counters[key][1] > now:
            value, until = self.counters[key]
            self.counters[key] = (max(0, value + delta), until)

    def release(self, rid: str, now: float) -> bool:
        rec = self.records.get(rid)
        if rec is None or rec[STATE] not in LIVE:
            return False
        for _, what, key, amount in rec[HOLDS]:
            if what != "concurrency":
                self._adjust(key, -amount, now)
        self._free_slots(rid, rec)
        self._forget(rid, rec)  # nothing can change a released reservation any more
        return True

    def settle(
        self, call_id: str, actual_ms: int | None, actual_micro_usd: int | None, now: float
    ) -> bool:
        rid = self.calls.get(call_id)
        rec = self.records.get(rid) if rid is not None else None
        if rid is None or rec is None or rec[STATE] not in SETTLEABLE:
            return False
        holds = ((what, key, amount) for _, what, key, amount in rec[HOLDS])
        deltas, applied, done = true_up(holds, rec[APPLIED], actual_ms, actual_micro_usd)
        for key, delta in deltas.items():
            self._adjust(key, delta, now)
        self._free_slots(rid, rec)
        if done:
            self._forget(rid, rec)  # every actual has landed: nothing more can change it
        else:
            self.records[rid] = _moved(rec, "ended", rec[CALL_ID], applied)
        return True

    def _forget(self, rid: str, rec: Record) -> None:
        """A reservation reached its end: forgotten at once, since a repeated release or
        settle of an unknown reservation changes nothing, as one of a finished one would."""
        del self.records[rid]
        call_id = rec[CALL_ID]
        if call_id is not None and self.calls.get(call_id) == rid:
            del self.calls[call_id]

    def due(self, now: float) -> list[str]:
        """Live reservations past their expiry (changes nothing: `mark_expired` does)."""
        heap, records = self._due, self.records
        found: dict[str, float] = {}
        while heap and heap[0][0] <= now:
            at, rid = heapq.heappop(heap)
            rec = records.get(rid)
            if rec is not None and rec[STATE] in LIVE and rec[EXPIRES_AT] <= now:
                found[rid] = at
        for rid, at in found.items():  # back until `mark_expired` has changed their state
            heapq.heappush(heap, (at, rid))
        return list(found)

    def mark_expired(self, rids: Iterable[str]) -> list[str | None]:
        """Free the slots of these reservations (those still live); their call ids."""
        freed: list[str | None] = []
        for rid in rids:
            rec = self.records.get(rid)
            if rec is not None and rec[STATE] in LIVE:
                self._free_slots(rid, rec)
                self.records[rid] = _moved(rec, "expired", rec[CALL_ID], rec[APPLIED])
                freed.append(rec[CALL_ID])
        return freed

    def gc(self, now: float) -> None:
        """Forget what can no longer matter (old records, counters past their window, expired
        slots): only what the heap says is due, never a scan of the rest."""
        heap, records, counters = self._reclaim, self.records, self.counters
        while heap and heap[0][0] <= now:
            _, what, key, rid = heapq.heappop(heap)
            if what == _COUNTER:
                entry = counters.get(key)
                if entry is not None:
                    if entry[1] <= now:
                        del counters[key]
                    else:  # extended since: look again then
                        heapq.heappush(heap, (entry[1], _COUNTER, key, ""))
            elif what == _RECORD:
                rec = records.get(key)
                if rec is None:
                    continue
                self._prune_slots(key, rec[SLOT_KEYS], now)
                if rec[KEEP_UNTIL] <= now:
                    del records[key]
                    if rec[CALL_ID] is not None:
                        self.calls.pop(rec[CALL_ID], None)
                else:
                    until = max(rec[KEEP_UNTIL], rec[EXPIRES_AT])
                    heapq.heappush(heap, (until, _RECORD, key, ""))
            else:
                self._prune_slots(rid, (key,), now)

    def _prune_slots(self, rid: str, keys: Iterable[str], now: float) -> None:
        for key in keys:
            live = self.slots.get(key)
            if live is None:
                continue
            t = live.get(rid)
            if t is not None and t <= now:
                del live[rid]
            if not live:
                del self.slots[key]

    def peek(
        self, keys: Sequence[str], slot_keys: Sequence[str], now: float
    ) -> tuple[dict[str, int], dict[str, tuple[int, float | None]]]:
        live: dict[str, tuple[int, float | None]] = {}
        for key in slot_keys:
            ends = [t for t in self.slots.get(key, {}).values() if t > now]
            live[key] = (len(ends), min(ends, default=None))
        return {k: self.value(k, now) for k in keys}, live

    # --- snapshots (the embedded store's durable checkpoint) --------------------------------

    def dump(self) -> dict[str, Any]:
        """Everything that can still matter, as JSON-able data. Released and fully settled
        records are left out: nothing more can change them."""
        held = self.records.items()
        records = {
            rid: [[list(h) for h in holds], expires_at, keep_until, state, call_id, applied]
            for rid, (holds, expires_at, keep_until, state, call_id, applied, _) in held
            if state not in FINISHED
        }
        return {
            "counters": {k: list(v) for k, v in self.counters.items()},
            "slots": {k: dict(v) for k, v in self.slots.items() if v},
            "records": records,
        }

    def freeze(self) -> Frozen:
        """What `dump` holds, copied in a few milliseconds so that it can be serialised later,
        while the state moves on: records are immutable tuples, so a shallow copy of their dict
        is a consistent copy, and only the slots' inner dicts are copied a level down."""
        return Frozen(
            counters=dict(self.counters),
            slots={k: dict(v) for k, v in self.slots.items() if v},
            records=dict(self.records),
        )

    def load(self, data: Mapping[str, Any]) -> None:
        self.counters = {k: (int(v), float(u)) for k, (v, u) in data["counters"].items()}
        self.slots = {k: {r: float(t) for r, t in v.items()} for k, v in data["slots"].items()}
        self.records = {}
        self.calls = {}
        self._due = []
        self._reclaim = [(u, _COUNTER, k, "") for k, (_, u) in self.counters.items()]
        self._reclaim += [(t, _SLOT, k, r) for k, v in self.slots.items() for r, t in v.items()]
        heapq.heapify(self._reclaim)
        for rid, fields in data["records"].items():
            self.load_record(rid, *fields)

    def load_record(
        self,
        rid: str,
        holds: Sequence[Sequence[Any]],
        expires_at: float,
        keep_until: float,
        state: str,
        call_id: str | None,
        applied: str,
    ) -> None:
        rows = tuple([(rule, what, key, int(amount)) for rule, what, key, amount in holds])
        slot_keys = tuple([key for _, what, key, _ in rows if what == "concurrency"])
        self._record(rid, (rows, expires_at, keep_until, state, call_id, applied, slot_keys))
        if call_id is not None:
            self.calls[call_id] = rid


class MemoryStore:
    name = "memory"

    def __init__(self, settings: LimitsSettings) -> None:
        self.state = CounterState()

    async def reserve(
        self, rid: str, plan: Plan, *, now: float, expires_at: float, keep_until: float
    ) -> list[Shortfall]:
        # No await in here: asyncio cannot interleave another reserve.
        return self.state.reserve(rid, plan, now=now, expires_at=expires_at, keep_until=keep_until)

    async def commit(self, rid: str, call_id: str, *, now: float) -> None:
        self.state.commit(rid, call_id)

    async def release(self, rid: str, *, now: float) -> None:
        self.state.release(rid, now)

    async def settle(
        self, call_id: str, *, actual_ms: int | None, actual_micro_usd: int | None, now: float
    ) -> None:
        self.state.settle(call_id, actual_ms, actual_micro_usd, now)

    async def expire(self, now: float) -> list[str | None]:
        freed = self.state.mark_expired(self.state.due(now))
        self.state.gc(now)
        return freed

    async def peek(
        self, keys: Sequence[str], slot_keys: Sequence[str], *, now: float
    ) -> tuple[dict[str, int], dict[str, tuple[int, float | None]]]:
        return self.state.peek(keys, slot_keys, now)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
