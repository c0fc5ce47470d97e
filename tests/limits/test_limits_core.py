"""The pure parts every backend shares: calendar windows, scope keys, rule selection."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from vapi_proxy.auth.identity import Identity
from vapi_proxy.limits import AdmissionRequest
from vapi_proxy.limits.config import LimitRule
from vapi_proxy.limits.core import (
    applicable_rules,
    calendar_window,
    scope_key,
    sliding_buckets,
    true_up,
)


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize(
    ("now", "zone", "period", "window", "end"),
    [
        ("2026-05-01T23:59:59+00:00", "UTC", "day", "2026-05-01", "2026-05-02T00:00:00+00:00"),
        # Spring forward in Paris: the day has 23 hours and still ends at local midnight.
        (
            "2026-03-29T12:00:00+00:00",
            "Europe/Paris",
            "day",
            "2026-03-29",
            "2026-03-30T00:00:00+02:00",
        ),
        # Fall back: 25 hours.
        (
            "2026-10-25T01:30:00+00:00",
            "Europe/Paris",
            "day",
            "2026-10-25",
            "2026-10-26T00:00:00+01:00",
        ),
        # Already tomorrow in Tokyo.
        (
            "2026-05-01T20:00:00+00:00",
            "Asia/Tokyo",
            "day",
            "2026-05-02",
            "2026-05-03T00:00:00+09:00",
        ),
        ("2026-12-31T23:00:00+00:00", "UTC", "month", "2026-12", "2027-01-01T00:00:00+00:00"),
        (
            "2026-01-31T23:30:00+00:00",
            "America/New_York",
            "month",
            "2026-01",
            "2026-02-01T00:00:00-05:00",
        ),
        ("2026-02-28T12:00:00+00:00", "UTC", "month", "2026-02", "2026-03-01T00:00:00+00:00"),
        # Santiago springs forward at midnight: 2026-09-06 00:00 does not exist, so the day
        # ends at the first instant that does (01:00 -03), half an hour after 23:30 -04.
        (
            "2026-09-05T23:30:00-04:00",
            "America/Santiago",
            "day",
            "2026-09-05",
            "2026-09-06T01:00:00-03:00",
        ),
        (
            "2026-09-06T01:30:00-03:00",
            "America/Santiago",
            "day",
            "2026-09-06",
            "2026-09-07T00:00:00-03:00",
        ),
    ],
)
def test_calendar_windows(now: str, zone: str, period: str, window: str, end: str) -> None:
    assert calendar_window(ts(now), ZoneInfo(zone), period) == (window, ts(end))  # type: ignore[arg-type]


def test_sliding_buckets_are_a_tenth_of_the_window() -> None:
    t = datetime(2026, 5, 1, 10, 30, 15, tzinfo=UTC).timestamp()
    index, size = sliding_buckets(t, "minute")
    assert size == 6 and index * size == t - 3  # 10:30:12
    index, size = sliding_buckets(t, "hour")
    assert size == 360 and index * size == t - 15 - 30 * 60 + 30 * 60  # 10:30:00
    assert sliding_buckets(t + 0.25, "second") == (round(t * 10) + 2, 0.1)


ALICE = Identity("alice", "jwt", tenant="acme", claims={"plan": "pro", "roles": ["a", "b"]})
LONE = Identity("lone", "api_key")


def rule(**kw: object) -> LimitRule:
    kw.setdefault("concurrency", 1)
    return LimitRule.model_validate(kw)


def test_scope_keys_keep_namespaces_apart() -> None:
    req = AdmissionRequest(ALICE, "support")
    assert scope_key(rule(name="a"), req) == f"i={ALICE.key}"
    assert scope_key(rule(name="a", scope="tenant"), req) == "t=acme"
    assert (
        scope_key(rule(name="a", scope="tenant"), AdmissionRequest(LONE, "s")) == "i=api_key:lone"
    )
    assert scope_key(rule(name="a", scope="profile"), req) == "p=support"
    assert scope_key(rule(name="a", scope="global", per_profile=True), req) == "*|p=support"
    assert scope_key(rule(name="a", per_profile=True), req) == f"i={ALICE.key}|p=support"


@pytest.mark.parametrize(
    ("match", "applies"),
    [
        ({}, True),
        ({"claims": {"plan": ["pro"]}}, True),
        ({"claims": {"plan": ["free"]}}, False),
        ({"claims": {"roles": ["b", "z"]}}, True),
        ({"claims": {"missing": ["x"]}}, False),
        ({"methods": ["api_key"]}, False),
        ({"tenants": ["acme"], "profiles": ["support"]}, True),
        ({"tenants": ["acme"], "profiles": ["sales"]}, False),
    ],
)
def test_rule_matching(match: dict[str, object], applies: bool) -> None:
    chosen = applicable_rules([rule(name="r", match=match)], AdmissionRequest(ALICE, "support"))
    assert bool(chosen) is applies


def test_groups_pick_the_first_match_and_kinds_filter() -> None:
    rules = [
        rule(name="pro", group="tier", match={"claims": {"plan": ["pro"]}}),
        rule(name="free", group="tier"),
        rule(name="chat", kinds=["chat"]),
        rule(name="all"),
    ]
    names = [r.name for r in applicable_rules(rules, AdmissionRequest(ALICE, "p"))]
    assert names == ["pro", "all"]
    names = [r.name for r in applicable_rules(rules, AdmissionRequest(LONE, "p", kind="chat"))]
    assert names == ["chat"]  # the others count calls only (the default kinds)
    names = [r.name for r in applicable_rules(rules, AdmissionRequest(LONE, "p"))]
    assert names == ["free", "all"]


def test_true_up_counts_each_actual_once() -> None:
    holds = [["minutes", "m", 300_000], ["usd", "u", 500_000], ["quota", "q", 1]]
    assert true_up(holds, "", None, None) == ({}, "", False)
    assert true_up(holds, "", 60_000, None) == ({"m": -240_000}, "m", False)
    assert true_up(holds, "m", 1, 100_000) == ({"u": -400_000}, "mu", True)
    assert true_up(holds, "mu", 1, 1) == ({}, "mu", True)
    assert true_up([["quota", "q", 1]], "", None, None) == ({}, "", True)
