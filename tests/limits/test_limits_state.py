"""`CounterState` (the memory and embedded stores' state) finds what expired without scanning
what has not, and forgets exactly what a full scan would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vapi_proxy.auth.identity import Identity
from vapi_proxy.limits import AdmissionRequest, LimitsSettings
from vapi_proxy.limits.core import Planner
from vapi_proxy.limits.memory import LIVE, CounterState

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
    return {r for r, rec in state.records.items() if rec.state in LIVE and rec.expires_at <= now}


def scanned_after_gc(state: CounterState, now: float) -> tuple[Any, ...]:
    """What a full scan leaves: records, counters and slots not yet over."""
    records = {r for r, rec in state.records.items() if rec.keep_until > now}
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
    assert state.records["short"].state == "expired"
    assert "short" not in state.slots[slot_key] and len(state.slots[slot_key]) == 200
    # The rate buckets are over: each reclaimed on its own, without a scan.
    assert [k for k in dict.keys(state.counters) if ":rate:second:" in k] == []
    state.gc(now + 3600 + 40 + 600)
    assert len(dict.keys(state.records)) == 0 and len(dict.keys(state.slots)) == 0
