"""The planner's caches (rule selections, calendar windows per second, rate buckets) give what
planning from scratch gives, across every boundary, and stay bounded."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.support.limits import FakeClock, MakeLimiter
from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import TooManyRequestsError
from vapi_proxy.limits import AdmissionRequest, LimitsSettings
from vapi_proxy.limits.config import LimitRule
from vapi_proxy.limits.core import (
    CACHE_ENTRIES,
    SLIDING_BUCKETS,
    Planner,
    applicable_rules,
    calendar_window,
    new_reservation_id,
    scope_key,
    sliding_buckets,
)


def utc(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def local_midnights(zone: str, first: str, days: int) -> list[float]:
    """Epoch seconds of each day's start in `zone`, as the limiter defines it."""
    tz = ZoneInfo(zone)
    day = datetime.fromisoformat(first).date()
    out = []
    for i in range(days):
        d = day + timedelta(days=i)
        out.append(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp())
    return out


# Local midnights, month ends and DST changes; Santiago's clocks jump at midnight itself (the
# day of 6 September 2026 starts at 01:00), Lord Howe's by half an hour, Kathmandu is +05:45.
BOUNDARIES = [
    ("UTC", local_midnights("UTC", "2026-12-30", 3)),  # year and month end
    ("Europe/Paris", local_midnights("Europe/Paris", "2026-03-28", 3)),  # spring forward
    ("Europe/Paris", local_midnights("Europe/Paris", "2026-10-24", 3)),  # fall back
    ("Europe/Paris", [utc("2026-03-29T01:00:00"), utc("2026-10-25T01:00:00")]),  # the changes
    ("America/New_York", local_midnights("America/New_York", "2026-02-27", 3)),  # Feb end
    ("America/Santiago", local_midnights("America/Santiago", "2026-09-05", 3)),
    ("America/Santiago", local_midnights("America/Santiago", "2026-04-04", 3)),
    ("Australia/Lord_Howe", local_midnights("Australia/Lord_Howe", "2026-04-04", 3)),
    ("Asia/Kathmandu", local_midnights("Asia/Kathmandu", "2026-05-31", 2)),
]
# Around each boundary; -3e-7 reads as the next microsecond, so as the next second.
OFFSETS = [-1.5, -1.0, -0.5, -0.1, -2e-6, -1e-6, -3e-7, 0.0, 1e-6, 0.3, 0.999, 1.0, 2.5]


@pytest.mark.parametrize(("zone", "boundaries"), BOUNDARIES)
@pytest.mark.parametrize("period", ["day", "month"])
def test_cached_calendar_windows_match_a_fresh_computation(
    zone: str, boundaries: list[float], period: Any
) -> None:
    planner = Planner(LimitsSettings(time_zone=zone))
    tz = ZoneInfo(zone)
    times = [b + d for b in boundaries for d in OFFSETS]
    # Forward through each boundary, then the clock stepping back over them (a corrected clock).
    for now in [*times, *reversed(times), *times[::3]]:
        assert planner.calendar(period, now) == calendar_window(now, tz, period), (now, zone)


def test_calendar_window_turns_at_the_boundary_not_a_second_late() -> None:
    planner = Planner(LimitsSettings(time_zone="Europe/Paris"))
    midnight = local_midnights("Europe/Paris", "2026-03-29", 1)[0]
    assert planner.calendar("day", midnight - 0.4)[0] == "2026-03-28"
    # The same second as the last call for a cache keyed by the whole second only.
    assert planner.calendar("day", midnight - 0.000001)[0] == "2026-03-28"
    # `fromtimestamp` rounds to the microsecond: this already reads as the next day.
    assert planner.calendar("day", midnight - 0.0000003)[0] == "2026-03-29"
    assert planner.calendar("day", midnight)[0] == "2026-03-29"
    assert planner.calendar("month", midnight - 0.5)[0] == "2026-03"
    end_of_march = local_midnights("Europe/Paris", "2026-04-01", 1)[0]
    assert planner.calendar("month", end_of_march - 0.5) == ("2026-03", end_of_march)
    assert planner.calendar("month", end_of_march)[0] == "2026-04"


@pytest.mark.parametrize("period", ["second", "minute", "hour"])
def test_cached_rate_buckets_follow_every_bucket_boundary(period: Any) -> None:
    planner = Planner(LimitsSettings())
    start = utc("2026-05-01T10:59:58")
    size = {"second": 0.1, "minute": 6.0, "hour": 360.0}[period]
    steps = [start + i * size / 4 for i in range(48)] + [start + 3600.0, start]
    for now in steps:
        k, bucket = sliding_buckets(now, period)
        got_k, earlier, current, end = planner.sliding(period, now)
        assert (got_k, current, end) == (k, str(k), (k + SLIDING_BUCKETS + 1) * bucket)
        assert earlier == tuple(str(k - i) for i in range(SLIDING_BUCKETS, 0, -1))


RULES = [
    {"name": "pro", "group": "tier", "match": {"claims": {"plan": ["pro"]}}, "concurrency": 5},
    {"name": "free", "group": "tier", "concurrency": 1},
    {"name": "acme", "match": {"tenants": ["acme"]}, "quota": {"per_day": 3}},
    {"name": "sup", "match": {"profiles": ["support"]}, "rate": {"per_minute": 2}},
    {"name": "keys", "match": {"methods": ["api_key"]}, "concurrency": 2, "kinds": ["chat"]},
    {"name": "nested", "match": {"claims": {"app.tier": ["gold"]}}, "concurrency": 9},
    {"name": "all", "scope": "profile", "per_profile": True, "quota": {"per_month": 100}},
]


def people() -> list[Identity]:
    out = []
    for method in ("jwt", "api_key", "anonymous"):
        for tenant in (None, "acme", "other"):
            for claims in ({}, {"plan": "pro"}, {"plan": ["x", "pro"]}, {"app": {"tier": "gold"}}):
                out.append(Identity("u", method, tenant=tenant, claims=claims))  # type: ignore[arg-type]
    return out


def test_cached_rule_selection_matches_matching_from_scratch() -> None:
    settings = LimitsSettings(rules=RULES)
    planner = Planner(settings)
    for _ in range(2):  # the second pass answers from the cache
        for ident in people():
            for profile in ("support", "sales"):
                for kind in ("call", "chat"):
                    for any_profile in (False, True):
                        req = AdmissionRequest(ident, profile, kind=kind)  # type: ignore[arg-type]
                        expected = applicable_rules(settings.rules, req, any_profile=any_profile)
                        assert list(planner.select(req, any_profile=any_profile)) == expected


def test_the_same_caller_with_other_claims_gets_other_rules() -> None:
    planner = Planner(LimitsSettings(rules=RULES))
    free = AdmissionRequest(Identity("u", "jwt", claims={"plan": "free"}), "sales")
    pro = AdmissionRequest(Identity("u", "jwt", claims={"plan": "pro"}), "sales")
    assert [r.name for r in planner.select(free)] == ["free", "all"]
    assert [r.name for r in planner.select(pro)] == ["pro", "all"]
    assert [r.name for r in planner.select(free)] == ["free", "all"]


def test_caches_stay_bounded() -> None:
    planner = Planner(LimitsSettings(rules=RULES))
    for i in range(CACHE_ENTRIES + 50):
        req = AdmissionRequest(Identity(f"u{i}", "jwt", tenant=f"t{i}"), "support")
        planner.plan(planner.select(req), req, 1_780_000_000.0)
    assert len(planner._selected) <= CACHE_ENTRIES
    assert len(planner._keys) <= CACHE_ENTRIES


def test_plan_keys_are_the_scope_keys() -> None:
    settings = LimitsSettings(rules=RULES, namespace="ns")
    planner = Planner(settings)
    ident = Identity(
        "bob", "jwt", tenant="acme", claims={"plan": "pro"}, issuer="https://i.example/"
    )
    req = AdmissionRequest(ident, "support", worst_case_seconds=90)
    now = utc("2026-05-01T10:30:15")
    rules = planner.select(req)
    for _ in range(2):
        plan = planner.plan(rules, req, now)
        keys = [h.key for h in plan.holds]
        expected = []
        for rule in rules:
            base = f"ns:{rule.name}:{scope_key(rule, req)}:call"
            if rule.rate is not None:
                expected.append(f"{base}:rate:minute:{math.floor(now / 6)}")
            if rule.quota is not None:
                period, wid = ("day", "2026-05-01") if rule.quota.per_day else ("month", "2026-05")
                expected.append(f"{base}:quota:{period}:{wid}")
        expected += [f"ns:{r.name}:{scope_key(r, req)}:call:slots" for r in rules if r.concurrency]
        assert keys == expected
        assert plan.holds == tuple(c.hold for c in plan.counters) + tuple(
            s.hold for s in plan.slots
        )


def test_a_rule_from_elsewhere_is_compiled_not_mistaken_for_a_cached_one() -> None:
    planner = Planner(LimitsSettings(rules=RULES))
    other = LimitRule.model_validate({"name": "other", "quota": {"per_day": 1}})
    req = AdmissionRequest(Identity("u", "jwt"), "support")
    plan = planner.plan([other], req, 1_780_000_000.0)
    assert [(c.hold.rule, c.limit, c.period) for c in plan.counters] == [("other", 1, "day")]


def test_reservation_ids_are_unique_and_uuid_shaped() -> None:
    ids = {new_reservation_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


# --- the same across every backend, through the limiter ----------------------------------------

DAY_BOUNDARIES = [
    ("Europe/Paris", "2026-03-29"),  # the spring-forward day (23 hours)
    ("Europe/Paris", "2026-10-26"),  # the day after the fall-back day (25 hours)
    ("America/Santiago", "2026-09-06"),  # midnight does not exist: the day starts at 01:00
    ("UTC", "2027-01-01"),  # month and year end
]


@pytest.mark.parametrize(("zone", "day"), DAY_BOUNDARIES)
async def test_quotas_turn_over_exactly_at_local_midnight(
    make_limiter: MakeLimiter, clock: FakeClock, zone: str, day: str
) -> None:
    midnight = local_midnights(zone, day, 1)[0]
    rules = [{"name": "q", "quota": {"per_day": 1, "per_month": 40}}]
    limiter = await make_limiter(rules, time_zone=zone)
    me = AdmissionRequest(Identity("alice", "jwt"), "support")
    clock.t = midnight - 0.6
    await limiter.reserve(me)
    for before in (midnight - 0.4, midnight - 0.000001):
        clock.t = before
        with pytest.raises(TooManyRequestsError) as info:
            await limiter.reserve(me)
        assert info.value.retry_after == 1
    clock.t = midnight
    await limiter.reserve(me)  # a new day, counted in the same month unless it is a new one
    with pytest.raises(TooManyRequestsError):
        await limiter.reserve(me)
    clock.t = midnight + 0.5
    with pytest.raises(TooManyRequestsError):
        await limiter.reserve(me)
    usage = {u.period: u for u in await limiter.usage(me.identity, "support")}
    new_month = datetime.fromtimestamp(midnight, ZoneInfo(zone)).day == 1
    assert usage["day"].used == 1
    assert usage["month"].used == (1 if new_month else 2)
