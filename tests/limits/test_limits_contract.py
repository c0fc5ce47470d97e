"""One contract for every limits backend (memory, SQLite, PostgreSQL, Redis): same inputs, same
admissions, same refusals."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.limits import FakeClock, MakeLimiter
from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import TooManyRequestsError
from vapi_proxy.limits import AdmissionRequest, Limiter, Reservation

ALICE = Identity(subject="alice", method="jwt", tenant="acme", claims={"plan": "free"})
BOB = Identity(subject="bob", method="jwt", tenant="acme", claims={"plan": "pro"})
CAROL = Identity(subject="carol", method="api_key", tenant=None, claims={"roles": ["ops", "x"]})


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def req(identity: Identity = ALICE, **kw: Any) -> AdmissionRequest:
    kw.setdefault("profile", "support")
    return AdmissionRequest(identity=identity, **kw)


async def refused(limiter: Limiter, request: AdmissionRequest) -> TooManyRequestsError:
    with pytest.raises(TooManyRequestsError) as info:
        await limiter.reserve(request)
    return info.value


async def start(limiter: Limiter, call_id: str, request: AdmissionRequest) -> Reservation:
    r = await limiter.reserve(request)
    await limiter.commit(r, call_id)
    return r


async def test_no_applicable_rule_admits(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(
        [{"name": "pro", "match": {"claims": {"plan": ["pro"]}}, "quota": {"per_day": 0}}]
    )
    for _ in range(5):
        r = await limiter.reserve(req())
        assert r.holds == ()
    await refused(limiter, req(BOB))


async def test_rate_per_minute_slides(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    clock.t = at("2026-05-01T10:00:15")
    limiter = await make_limiter([{"name": "r", "rate": {"per_minute": 3}}])
    for _ in range(3):
        await limiter.reserve(req())
    err = await refused(limiter, req())
    # The window is counted in 6 s buckets: the three leave it when their bucket
    # (10:00:12-10:00:18) is more than a minute old, at 10:01:18.
    assert err.retry_after == 63
    assert err.headers["Retry-After"] == "63"
    assert err.message == "Too many calls: the limit is 3 per minute. Try again in 63 seconds."
    await limiter.reserve(req(BOB))  # another identity has its own counter
    clock.advance(45)  # 10:01:00, where a fixed window would start afresh
    err = await refused(limiter, req())
    assert err.retry_after == 18
    clock.advance(18)
    await limiter.reserve(req())


async def test_rate_boundary_lets_no_burst_through(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """The limit at 10:00:59 and again at 10:01:00 would be 2x in two seconds with fixed
    windows. Sliding, no span of one window holds more than the limit, wherever the burst
    falls, and a steady caller still gets the rate, a bucket (a tenth of a window) late."""
    clock.t = at("2026-05-01T10:00:59")
    limiter = await make_limiter([{"name": "r", "rate": {"per_minute": 10, "per_second": 4}}])
    admitted: list[float] = []
    waits: list[int] = []
    for _ in range(3 * 120 + 1):  # 5 attempts every half second for three minutes
        for _ in range(5):
            try:
                await limiter.reserve(req())
                admitted.append(clock.t)
            except TooManyRequestsError as exc:
                waits.append(exc.retry_after)
        clock.advance(0.5)
    assert min(waits) >= 1
    assert admitted[:4] == [at("2026-05-01T10:00:59")] * 4  # 4 per second
    assert at("2026-05-01T10:01:00") not in admitted  # the boundary admits nothing more
    for t in admitted:
        assert sum(1 for u in admitted if t - 60 < u <= t) <= 10
        assert sum(1 for u in admitted if t - 1 < u <= t) <= 4
    # In three minutes of trying, the rate is what is admitted: a window's 10 per 66 s.
    assert len(admitted) == 30


async def test_quota_resets_at_local_midnight(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    clock.t = at("2026-03-10T22:30:00")  # 23:30 in Paris (UTC+1 in March before DST)
    limiter = await make_limiter([{"name": "q", "quota": {"per_day": 5}}], time_zone="Europe/Paris")
    for _ in range(5):
        await limiter.reserve(req())
    err = await refused(limiter, req())
    assert err.message == (
        "You have used your 5 calls for today; the quota resets at 00:00 Europe/Paris."
    )
    assert err.retry_after == 1800
    clock.advance(1799)
    await refused(limiter, req())
    clock.advance(1)
    await limiter.reserve(req())


async def test_quota_default_zone_message(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    clock.t = at("2026-05-01T23:00:00")
    limiter = await make_limiter([{"name": "q", "quota": {"per_day": 1}}])
    await limiter.reserve(req())
    err = await refused(limiter, req())
    assert err.message == "You have used your 1 call for today; the quota resets at 00:00 UTC."
    assert err.retry_after == 3600


async def test_quota_month_rollover(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    clock.t = at("2026-01-31T23:00:00")
    limiter = await make_limiter([{"name": "m", "scope": "tenant", "quota": {"per_month": 2}}])
    await limiter.reserve(req(ALICE))
    await limiter.reserve(req(BOB))  # same tenant: one counter
    err = await refused(limiter, req(ALICE))
    assert err.message == (
        "Your organisation has used its 2 calls for this month; "
        "the quota resets on 1 February at 00:00 UTC."
    )
    assert err.retry_after == 3600
    await limiter.reserve(req(CAROL))  # no tenant: counted on its own
    clock.t = at("2026-02-01T00:00:00")
    await limiter.reserve(req(ALICE))


async def test_concurrency_held_until_settle(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter([{"name": "c", "concurrency": 2}])
    await start(limiter, "call-1", req(worst_case_seconds=600))
    await start(limiter, "call-2", req(worst_case_seconds=600))
    err = await refused(limiter, req(worst_case_seconds=600))
    assert err.message == (
        "You have 2 calls in progress, the most allowed at once; try again when one ends."
    )
    assert 1 <= err.retry_after <= 30
    await limiter.settle("call-1", duration_seconds=30, cost_usd=0.1)
    await start(limiter, "call-3", req(worst_case_seconds=600))
    await refused(limiter, req(worst_case_seconds=600))


async def test_release_gives_back_everything(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(
        [
            {
                "name": "all",
                "quota": {"per_day": 1},
                "rate": {"per_second": 1},
                "concurrency": 1,
                "budget": {"minutes_per_day": 5},
            },
        ]
    )
    r = await limiter.reserve(req(worst_case_seconds=300))
    await refused(limiter, req(worst_case_seconds=300))
    await limiter.release(r)
    await limiter.release(r)  # twice is harmless
    r2 = await limiter.reserve(req(worst_case_seconds=300))
    assert {h.what for h in r2.holds} == {"quota", "rate", "concurrency", "minutes"}


async def test_minutes_budget_settles_actual_and_is_idempotent(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter([{"name": "b", "budget": {"minutes_per_day": 10}}])
    four = {"worst_case_seconds": 240}
    await start(limiter, "a", req(**four))
    await start(limiter, "b", req(**four))  # 8 of 10 minutes held
    err = await refused(limiter, req(**four))
    assert "You have used 8 of your 10 call minutes for today" in err.message
    assert "could cost up to 4 minutes" in err.message
    await limiter.settle("a", duration_seconds=60, cost_usd=None)  # 4 → 1: 5 held
    await start(limiter, "c", req(**four))  # 9 held
    await limiter.settle("a", duration_seconds=0, cost_usd=None)  # second settle: ignored
    await limiter.settle("unknown-call", duration_seconds=0, cost_usd=None)
    err = await refused(limiter, req(**four))
    assert "used 9 of your 10 call minutes" in err.message


async def test_usd_budget_uses_estimate_then_actual(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter([{"name": "u", "budget": {"usd_per_day": 1.0}}])
    est = {"estimated_cost_usd": 0.4}
    await start(limiter, "a", req(**est))
    await start(limiter, "b", req(**est))
    err = await refused(limiter, req(**est))
    assert "You have used $0.80 of your $1.00 USD budget for today" in err.message
    await limiter.settle("a", duration_seconds=10, cost_usd=0.1)
    await start(limiter, "c", req(**est))  # 0.1 + 0.4 + 0.4


async def test_budget_without_worst_case_admits_while_anything_left(
    make_limiter: MakeLimiter,
) -> None:
    limiter = await make_limiter(
        [{"name": "b", "budget": {"minutes_per_day": 10, "admit_worst_case": False}}]
    )
    await start(limiter, "a", req(worst_case_seconds=540))  # 9 of 10
    await start(limiter, "b", req(worst_case_seconds=540))  # 1 minute left: admitted anyway
    err = await refused(limiter, req(worst_case_seconds=60))
    assert err.message.startswith("You have used all your 10 call minutes for today;")


async def test_expiry_after_max_duration_plus_grace(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = await make_limiter(
        [{"name": "c", "concurrency": 1, "budget": {"minutes_per_day": 100}}], grace_seconds=60
    )
    t0 = clock.t
    await start(limiter, "lost", req(worst_case_seconds=300))
    clock.t = t0 + 359
    assert await limiter.expire() == 0
    await refused(limiter, req(worst_case_seconds=300))
    clock.t = t0 + 360
    assert await limiter.expire() == 1
    assert await limiter.expire() == 0
    await start(limiter, "next", req(worst_case_seconds=300))
    # A late end-of-call-report still trues up the budget of the expired call.
    await limiter.settle("lost", duration_seconds=6000, cost_usd=None)  # 100 minutes
    await limiter.settle("next", duration_seconds=0, cost_usd=None)
    err = await refused(limiter, req(worst_case_seconds=60))
    assert "used all your 100 call minutes" in err.message


async def test_slot_frees_itself_without_expire_call(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = await make_limiter([{"name": "c", "concurrency": 1}], grace_seconds=0)
    await start(limiter, "x", req(worst_case_seconds=10))
    await refused(limiter, req(worst_case_seconds=10))
    clock.advance(10.5)
    await limiter.reserve(req(worst_case_seconds=10))


async def test_rule_matching_tiers_claims_tenants_profiles(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(
        [
            {
                "name": "pro",
                "group": "plan",
                "match": {"claims": {"plan": ["pro"]}},
                "quota": {"per_day": 3},
            },
            {"name": "free", "group": "plan", "quota": {"per_day": 1}},
            {
                "name": "ops",
                "match": {"claims": {"roles": ["ops"]}, "methods": ["api_key"]},
                "concurrency": 0,
            },
            {
                "name": "sales-tenant",
                "match": {"tenants": ["globex"], "profiles": ["sales"]},
                "scope": "profile",
                "quota": {"per_day": 0},
            },
        ]
    )
    await limiter.reserve(req(ALICE))
    await refused(limiter, req(ALICE))  # free tier
    for _ in range(3):
        await limiter.reserve(req(BOB))  # pro tier only: not also the catch-all
    await refused(limiter, req(BOB))
    err = await refused(limiter, req(CAROL))  # list-valued claim matches any item
    assert err.message == "No calls are allowed here."
    globex = Identity(subject="g", method="jwt", tenant="globex")
    err = await refused(limiter, req(globex, profile="sales"))
    assert err.message.startswith("No calls are allowed today")
    await limiter.reserve(req(globex, profile="support"))


async def test_kinds_are_counted_apart(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(
        [
            {"name": "turns", "kinds": ["call", "chat"], "quota": {"per_day": 1}},
            {"name": "calls-only", "rate": {"per_second": 1}},
        ]
    )
    await limiter.reserve(req(kind="call"))
    await limiter.reserve(req(kind="chat"))
    err = await refused(limiter, req(kind="chat"))
    assert err.message.startswith("You have used your 1 chat message for today")
    await refused(limiter, req(kind="call"))


async def test_per_profile_and_global_scopes(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(
        [
            {"name": "pp", "per_profile": True, "quota": {"per_day": 1}},
            {"name": "all", "scope": "global", "quota": {"per_day": 3}},
        ]
    )
    await limiter.reserve(req(profile="support"))
    err = await refused(limiter, req(profile="support"))
    assert "your 1 call on 'support' for today" in err.message
    await limiter.reserve(req(profile="sales"))
    await limiter.reserve(req(BOB))
    err = await refused(limiter, req(CAROL))
    assert err.message.startswith("The service has used its 3 calls for today")


async def test_longest_wait_is_reported(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    clock.t = at("2026-05-01T12:00:00")
    limiter = await make_limiter(
        [{"name": "r", "rate": {"per_minute": 1}, "quota": {"per_day": 1}}]
    )
    await limiter.reserve(req())
    err = await refused(limiter, req())
    assert err.retry_after == 12 * 3600
    assert "quota" in err.message


async def test_request_now_overrides_clock(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    limiter = await make_limiter([{"name": "q", "quota": {"per_day": 1}}])
    await limiter.reserve(req(now=at("2026-05-01T10:00:00")))
    await refused(limiter, req(now=at("2026-05-01T11:00:00")))
    await limiter.reserve(req(now=at("2026-05-02T00:00:00")))


async def test_health_ok(make_limiter: MakeLimiter, backend: str) -> None:
    limiter = await make_limiter([{"name": "q", "quota": {"per_day": 1}}])
    health = await limiter.health()
    assert health.ok, health
    assert health.failure_mode == "closed"


async def test_burst_respects_concurrency_and_quota(make_limiter: MakeLimiter) -> None:
    """200 simultaneous reservations: never more than 3 live, never more than 50 admitted."""
    limiter = await make_limiter([{"name": "burst", "concurrency": 3, "quota": {"per_day": 50}}])
    live = peak = admitted = 0
    refusals: list[BaseException] = []
    counter = iter(range(10_000))

    async def one() -> None:
        nonlocal live, peak, admitted
        try:
            r = await limiter.reserve(req(worst_case_seconds=60))
        except TooManyRequestsError as exc:
            refusals.append(exc)
            return
        admitted += 1
        live += 1
        peak = max(peak, live)
        call_id = f"burst-{next(counter)}"
        await limiter.commit(r, call_id)
        await asyncio.sleep(0)
        live -= 1
        await limiter.settle(call_id, duration_seconds=1, cost_usd=0)

    results = await asyncio.gather(*(one() for _ in range(200)), return_exceptions=True)
    assert [r for r in results if r is not None] == []
    assert 3 <= admitted <= 50
    assert peak <= 3
    assert len(refusals) == 200 - admitted


async def test_burst_takes_exactly_the_quota(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter([{"name": "q", "concurrency": 100, "quota": {"per_day": 50}}])
    results = await asyncio.gather(
        *(limiter.reserve(req(worst_case_seconds=60)) for _ in range(200)),
        return_exceptions=True,
    )
    admitted = [r for r in results if isinstance(r, Reservation)]
    assert len(admitted) == 50
    assert all(isinstance(r, TooManyRequestsError) for r in results if r not in admitted)


async def test_settle_in_two_steps_counts_each_actual_once(make_limiter: MakeLimiter) -> None:
    """status-update `ended` (no cost yet) frees the slot; the end-of-call-report that follows
    brings minutes and cost; any repeat changes nothing."""
    limiter = await make_limiter(
        [{"name": "b", "concurrency": 1, "budget": {"minutes_per_day": 10, "usd_per_day": 1}}]
    )
    worst = {"worst_case_seconds": 300, "estimated_cost_usd": 0.5}
    await start(limiter, "a", req(**worst))
    await refused(limiter, req(**worst))  # slot taken
    await limiter.settle("a", duration_seconds=None, cost_usd=None)
    r = await limiter.reserve(req(**worst))  # slot free; 10 minutes and $1.00 now held
    await limiter.release(r)
    await limiter.settle("a", duration_seconds=60, cost_usd=None)  # minutes land: 1 held
    await limiter.settle("a", duration_seconds=600, cost_usd=0.9)  # minutes again: ignored
    await limiter.settle("a", duration_seconds=None, cost_usd=0.0)  # cost already landed
    err = await refused(limiter, req(worst_case_seconds=60, estimated_cost_usd=0.2))
    assert "$0.90 of your $1.00 USD budget" in err.message  # cost counted once, not zeroed
    await start(limiter, "b", req(worst_case_seconds=300, estimated_cost_usd=0.1))
    await limiter.settle("b", duration_seconds=0, cost_usd=0)
    # 1 minute used (not 10): the second duration was ignored; 9 more fit exactly.
    await limiter.reserve(req(worst_case_seconds=540, estimated_cost_usd=0.1))


async def test_expired_calls_free_their_slots_and_a_late_report_still_settles_them(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = await make_limiter(
        [{"name": "c", "concurrency": 4, "budget": {"minutes_per_day": 30}}], grace_seconds=10
    )
    await start(limiter, "lost-1", req(worst_case_seconds=300))
    await start(limiter, "lost-2", req(worst_case_seconds=300))
    await limiter.reserve(req(worst_case_seconds=300))  # never committed: no call id
    await start(limiter, "fine", req(worst_case_seconds=60))
    await limiter.settle("fine", duration_seconds=30, cost_usd=0.01)
    clock.advance(311)
    assert await limiter.expire() == 3
    assert await limiter.expire() == 0
    for call_id in ("lost-1", "lost-2"):  # their end-of-call reports arrive late
        await limiter.settle(call_id, duration_seconds=120, cost_usd=0.05)
    # Settled: 2 + 2 + 0.5 minutes, plus the uncommitted call's worst case 5 = 9.5 of 30;
    # unsettled it would be 15.5 and 20 more would not fit.
    await limiter.reserve(req(worst_case_seconds=20 * 60))


async def test_nested_claim_rules_apply(make_limiter: MakeLimiter) -> None:
    """A rule on a dotted claim path matches the nested claim, as access rules do (issue 13.3)."""
    limiter = await make_limiter(
        [
            {
                "name": "free",
                "match": {"claims": {"app_metadata.plan": ["free"]}},
                "quota": {"per_day": 1},
            },
            {
                "name": "ops",
                "match": {"claims": {"realm_access.roles": ["ops"]}},
                "concurrency": 0,
            },
        ]
    )
    free = Identity(subject="f", method="jwt", claims={"app_metadata": {"plan": "free"}})
    paid = Identity(subject="p", method="jwt", claims={"app_metadata": {"plan": "pro"}})
    ops = Identity(subject="o", method="jwt", claims={"realm_access": {"roles": ["x", "ops"]}})
    flag = Identity(subject="b", method="jwt", claims={"app_metadata": {"plan": True}})
    await limiter.reserve(req(free))
    err = await refused(limiter, req(free))
    assert err.message.startswith("You have used your 1 call for today")
    for _ in range(3):
        await limiter.reserve(req(paid))
        await limiter.reserve(req(flag))
    err = await refused(limiter, req(ops))
    assert err.message == "No calls are allowed here."


async def test_a_tenant_rule_naming_issuers_counts_each_issuers_tenants_apart(
    make_limiter: MakeLimiter,
) -> None:
    """Two providers' tenants of one name are two counters on every store (issue 13: tenant
    names are each provider's own); the issuer's URL is safe in every store's keys."""
    a, b = "https://a.idp.example/", "https://b.idp.example/t|iss=x:y%"
    limiter = await make_limiter(
        [{"name": "org", "scope": "tenant", "match": {"issuers": [a, b]}, "quota": {"per_day": 1}}]
    )
    first = Identity(subject="1", method="jwt", issuer=a, tenant="acme")
    colleague = Identity(subject="2", method="jwt", issuer=a, tenant="acme")
    namesake = Identity(subject="1", method="jwt", issuer=b, tenant="acme")
    unnamed = Identity(subject="3", method="jwt", issuer="https://c.idp.example/", tenant="acme")
    await limiter.reserve(req(first))
    await refused(limiter, req(colleague))
    await limiter.reserve(req(namesake))
    await refused(limiter, req(namesake))
    for _ in range(2):  # an issuer the rule does not name: the rule does not apply
        await limiter.reserve(req(unnamed))


async def test_usage_reports_each_limit_without_taking_any(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    clock.t = at("2026-05-01T10:00:15")
    limiter = await make_limiter(
        [
            {
                "name": "mine",
                "kinds": ["call", "chat"],
                "rate": {"per_minute": 5},
                "quota": {"per_day": 10},
                "concurrency": 2,
                "budget": {"minutes_per_day": 30, "usd_per_month": 2.0},
            },
            {"name": "sales-only", "match": {"profiles": ["sales"]}, "quota": {"per_day": 1}},
            {"name": "pro", "match": {"claims": {"plan": ["pro"]}}, "quota": {"per_day": 9}},
        ]
    )
    fresh = {(u.rule, u.what, u.kind): u for u in await limiter.usage(ALICE, "support")}
    assert set(fresh) == {
        ("mine", what, kind)
        for what in ("rate", "quota", "minutes", "usd", "concurrency")
        for kind in ("call", "chat")
    }
    assert [u for u in fresh.values() if u.used or u.remaining != u.limit or u.resets_at] == []
    r = await start(limiter, "u-1", req(worst_case_seconds=300, estimated_cost_usd=0.25))
    await start(limiter, "u-2", req(worst_case_seconds=60))
    await limiter.reserve(req(kind="chat"))
    got = {(u.rule, u.what, u.kind): u for u in await limiter.usage(ALICE, "support")}
    quota = got[("mine", "quota", "call")]
    assert (quota.period, quota.limit, quota.used, quota.remaining) == ("day", 10, 2, 8)
    assert quota.resets_at == at("2026-05-02T00:00:00")
    assert quota.scope == "identity"
    assert got[("mine", "quota", "chat")].used == 1
    rate = got[("mine", "rate", "call")]
    assert (rate.period, rate.used, rate.remaining) == ("minute", 2, 3)
    assert rate.resets_at is not None and clock.t < rate.resets_at <= clock.t + 66
    minutes = got[("mine", "minutes", "call")]
    assert (minutes.limit, minutes.used, minutes.remaining) == (30, 6, 24)
    usd = got[("mine", "usd", "call")]
    assert (usd.period, usd.limit, usd.used, usd.remaining) == ("month", 2.0, 0.25, 1.75)
    assert usd.resets_at == at("2026-06-01T00:00:00")
    slots = got[("mine", "concurrency", "call")]
    assert (slots.period, slots.limit, slots.used, slots.remaining) == (None, 2, 2, 0)
    assert slots.resets_at == clock.t + 60 + 120  # the shorter call's slot expires first
    assert got[("mine", "concurrency", "chat")].used == 1
    # Reading took nothing: the second of two slots is still the last one.
    await limiter.release(r)
    await start(limiter, "u-3", req(worst_case_seconds=60))
    await refused(limiter, req(worst_case_seconds=60))
    # The profile decides which rules apply; without one, only profile-free rules.
    sales = {u.rule for u in await limiter.usage(ALICE, "sales")}
    assert sales == {"mine", "sales-only"}
    assert {u.rule for u in await limiter.usage(ALICE)} == {"mine"}
    assert {u.rule for u in await limiter.usage(BOB)} == {"mine", "pro"}
    assert {u.what: u.used for u in await limiter.usage(BOB) if u.kind == "call"}["quota"] == 0
    assert await limiter.usage(CAROL, "support") != []


# Any name authentication lets through (tests/auth/test_jwt.py refuses the rest): up to 256
# characters without control characters, and issuers up to 240 characters percent-encoded.
ODD_CALLERS = [
    Identity(subject=subject, method="jwt")
    for subject in ("zoë", "用户-😀", "{brace}", '"quoted" \\ back', "x:rate:minute:12|p=y")
] + [
    # Limit keys past PostgreSQL's 512-character columns (the store stores a digest's form).
    Identity(subject="s" * 256, method="jwt", issuer="https://" + "i" * 200),
    Identity(subject="s" * 255 + "t", method="jwt", issuer="https://" + "i" * 200),
]


async def test_callers_with_any_subject_are_counted_apart_and_settled(
    make_limiter: MakeLimiter,
) -> None:
    """Subjects are any text a verified token carries: each is its own caller, and a call's
    settlement finds its counters again (the Redis scripts read the keys back from JSON)."""
    limiter = await make_limiter(
        [
            {
                "name": "each",
                "rate": {"per_minute": 5},
                "quota": {"per_day": 1},
                "concurrency": 1,
                "budget": {"minutes_per_day": 10},
            }
        ]
    )
    for n, who in enumerate(ODD_CALLERS):
        await start(limiter, f"odd-{n}", req(who, worst_case_seconds=300))
        assert "your 1 call for today" in (await refused(limiter, req(who))).message
        await limiter.settle(f"odd-{n}", duration_seconds=60, cost_usd=0.01)
        usage = {(u.what, u.period): u for u in await limiter.usage(who, "support")}
        assert usage["quota", "day"].used == 1
        assert usage["minutes", "day"].used == 1  # the settled minute, not the 5 reserved
        assert usage["concurrency", None].used == 0  # the settle freed the slot
    await start(limiter, "plain", req(Identity(subject="zoe", method="jwt")))  # not "zoë"
