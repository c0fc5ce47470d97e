"""`CounterState` (the memory and embedded stores' state) finds what expired without scanning
what has not, forgets exactly what a full scan would, is kept out of the garbage collector's
sight, and reads and writes snapshots in the form deployments already have."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vapi_proxy.auth.identity import Identity
from vapi_proxy.limits import AdmissionRequest, LimitsSettings
from vapi_proxy.limits.core import Planner
from vapi_proxy.limits.memory import EXPIRES_AT, KEEP_UNTIL, LIVE, STATE, CounterState

RULES = [
    {
        "name": "r",
        "rate": {"per_second": 50},
        "quota": {"per_day": 1000},
        "concurrency": 3,
        "budget": {"minutes_per_day": 600},
    },
    {"name": "team", "scope": "tenant", "concurrency": 4},
]
START = 1_780_000_000.0
PLANNER = Planner(LimitsSettings(rules=RULES, grace_seconds=30))
PEOPLE = [Identity(s, "jwt", tenant="t") for s in ("a", "b", "c")]


def reserve(state: CounterState, rid: str, who: int, now: float, seconds: int) -> bool:
    req = AdmissionRequest(PEOPLE[who], "p", worst_case_seconds=seconds)
    plan = PLANNER.plan(PLANNER.select(req), req, now)
    expires = now + seconds + 30
    return not state.reserve(rid, plan, now=now, expires_at=expires, keep_until=expires + 600)


def scanned_due(state: CounterState, now: float) -> set[str]:
    return {r for r, rec in state.records.items() if rec[STATE] in LIVE and rec[EXPIRES_AT] <= now}


def scanned_after_gc(state: CounterState, now: float) -> tuple[Any, ...]:
    """What a full scan leaves: records, counters and slots not yet over."""
    records = {r for r, rec in state.records.items() if rec[KEEP_UNTIL] > now}
    counters = {k: v for k, v in state.counters.items() if v[1] > now}
    slots = {
        k: {r: t for r, t in live.items() if t > now}
        for k, live in state.slots.items()
        if any(t > now for t in live.values())
    }
    return records, counters, slots


ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 2), st.sampled_from([0, 10, 60, 600])),
        st.tuples(st.just("commit"), st.integers(0, 30)),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("settle"), st.integers(0, 30), st.sampled_from([None, 5000])),
        st.tuples(st.just("advance"), st.sampled_from([0.05, 1, 40, 90, 700, 90_000])),
        st.tuples(st.just("expire")),
        st.tuples(st.just("reload")),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
@example([("reserve", 0, 0), ("advance", 40), ("expire",), ("advance", 700), ("expire",)])
@example([("reserve", 0, 60), ("commit", 0), ("reload",), ("advance", 700), ("expire",)])
def test_expiry_and_gc_forget_what_a_full_scan_would(sequence: list[tuple[Any, ...]]) -> None:
    state = CounterState()
    now = START
    rids: list[str] = []
    for op in sequence:
        if op[0] == "reserve":
            rid = f"r{len(rids)}"
            rids.append(rid)
            reserve(state, rid, op[1], now, op[2])
        elif op[0] in ("commit", "release", "settle") and op[1] < len(rids):
            rid = rids[op[1]]
            if op[0] == "commit":
                state.commit(rid, f"call-{rid}")
            elif op[0] == "release":
                state.release(rid, now)
            else:
                state.settle(f"call-{rid}", op[2], None, now)
        elif op[0] == "advance":
            now += op[1]
        elif op[0] == "expire":
            assert set(state.due(now)) == scanned_due(state, now)
            assert set(state.due(now)) == scanned_due(state, now)  # due() changes nothing
            state.mark_expired(state.due(now))
            assert state.due(now) == []
            expected = scanned_after_gc(state, now)
            state.gc(now)
            assert (set(state.records), state.counters, state.slots) == expected
        else:  # a snapshot taken and loaded, as the embedded store does
            fresh = CounterState()
            fresh.load(state.dump())
            state = fresh


class _NoScan(dict[str, Any]):
    """A dict that refuses to be iterated whole: what a scan of every entry would do."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("scanned every entry")

    def items(self) -> Any:
        raise AssertionError("scanned every entry")

    def values(self) -> Any:
        raise AssertionError("scanned every entry")

    def keys(self) -> Any:
        raise AssertionError("scanned every entry")


def test_expire_and_gc_touch_only_what_is_due() -> None:
    rules = [{"name": "r", "rate": {"per_second": 10**6}, "concurrency": 10**6}]
    planner = Planner(LimitsSettings(rules=rules, grace_seconds=30))
    state = CounterState()

    def take(rid: str, now: float, seconds: int) -> None:
        req = AdmissionRequest(PEOPLE[0], "p", worst_case_seconds=seconds)
        plan = planner.plan(planner.select(req), req, now)
        exp = now + seconds + 30
        assert not state.reserve(rid, plan, now=now, expires_at=exp, keep_until=exp + 600)

    for i in range(200):  # long calls: nothing of theirs is due for an hour
        take(f"long{i}", START + i * 0.01, 3600)
    take("short", START + 5, 0)  # expires 30 s later (the grace)
    slot_key = next(iter(state.slots))
    state.records = _NoScan(state.records)
    state.counters = _NoScan(state.counters)
    state.slots = _NoScan(state.slots)
    now = START + 40
    assert state.due(now) == ["short"]
    state.mark_expired(["short"])
    state.gc(now)
    assert state.records["short"][STATE] == "expired"
    assert "short" not in state.slots[slot_key] and len(state.slots[slot_key]) == 200
    # The rate buckets are over: each reclaimed on its own, without a scan.
    assert [k for k in dict.keys(state.counters) if ":rate:second:" in k] == []
    state.gc(now + 3600 + 40 + 600)
    assert len(dict.keys(state.records)) == 0 and len(dict.keys(state.slots)) == 0


SNAPSHOT_RULES = [
    {**RULES[0], "budget": {"minutes_per_day": 600, "usd_per_day": 50}},
    {**RULES[1], "concurrency": 10},
]
SNAPSHOT_PLANNER = Planner(LimitsSettings(rules=SNAPSHOT_RULES, grace_seconds=30))
OLD_SNAPSHOT = Path(__file__).with_name("old_snapshot.json")
"""What `scripted()` dumped when records were dataclasses (59a5862), as JSON: the form of the
snapshot rows (`limit_state`) existing deployments hold."""


def spend(state: CounterState, rid: str, who: int, now: float, seconds: int) -> bool:
    """`reserve`, under rules with a USD budget."""
    req = AdmissionRequest(PEOPLE[who], "p", worst_case_seconds=seconds, estimated_cost_usd=0.5)
    plan = SNAPSHOT_PLANNER.plan(SNAPSHOT_PLANNER.select(req), req, now)
    exp = now + seconds + 30
    return not state.reserve(rid, plan, now=now, expires_at=exp, keep_until=exp + 600)


def scripted() -> CounterState:
    """Reservations in every state a snapshot keeps: expired (committed and never committed),
    ended (minutes settled, USD to come), committed and pending; one released."""
    state = CounterState()
    for i, (who, seconds) in enumerate([(0, 60), (0, 600), (1, 600), (2, 0), (1, 10), (2, 600)]):
        assert spend(state, f"r{i}", who, START + i, seconds)
    for i in range(3):
        state.commit(f"r{i}", f"call-{i}")
    state.settle("call-1", 90_000, None, START + 100)
    state.release("r4", START + 101)
    state.mark_expired(state.due(START + 100))
    return state


def test_snapshots_keep_their_form_and_old_ones_load() -> None:
    old = OLD_SNAPSHOT.read_text().strip()
    assert json.dumps(scripted().dump(), separators=(",", ":")) == old
    loaded = CounterState()
    loaded.load(json.loads(old))
    assert loaded.dump() == json.loads(old)
    # The loaded state goes on as the one it was taken from would.
    live = scripted()
    for state in (live, loaded):
        assert state.settle("call-1", None, 300_000, START + 200)
        assert state.settle("call-2", 60_000, 100_000, START + 200)
        assert spend(state, "late", 2, START + 201, 600)
        assert state.mark_expired(state.due(START + 700)) == [None]  # r5, never committed
        state.gc(START + 1300)
    assert loaded.dump() == live.dump()
    assert loaded.counters == live.counters


def _tracked(state: CounterState) -> list[object]:
    held: list[object] = [*state.records.values(), *state.counters.values()]
    held += [*state.slots.values(), *state._due, *state._reclaim]
    return [x for x in held if gc.is_tracked(x)]


def test_the_held_state_is_out_of_the_collectors_sight() -> None:
    """What a reservation holds is tuples, strings and numbers, which a collection untracks:
    a full collection's pause does not grow with the calls held (dataclass records were walked
    by every full collection, 0.5 s at 100k calls: `bench/gc_state.py`)."""
    live = scripted()
    loaded = CounterState()
    loaded.load(json.loads(OLD_SNAPSHOT.read_text()))
    replayed = CounterState()  # as the embedded store applies another worker's log entry
    replayed.take(
        "r", (("", "quota", "q", 1), ("", "concurrency", "s", 1)), {"q": START + 60},
        now=START, expires_at=START + 30, keep_until=START + 630,
    )  # fmt: skip
    # A collection untracks a tuple whose contents it has untracked already; a tuple that went
    # into an older generation than the tuple holding it is untracked one collection later.
    for _ in range(3):  # records hold holds that hold strings and numbers: three levels
        gc.collect()
    for state in (live, loaded, replayed):
        assert state.records and not _tracked(state)
