"""Property: every backend gives the same answers to the same random sequence of operations."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.limits import BACKENDS, FakeClock, backend_url
from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import TooManyRequestsError
from vapi_proxy.limits import AdmissionRequest, LimitsSettings, Reservation, create_limiter

RULES = [
    {
        "name": "mine",
        "rate": {"per_minute": 4},
        "quota": {"per_day": 6},
        "concurrency": 2,
        "budget": {"minutes_per_day": 12, "usd_per_day": 1.0},
    },
    {"name": "team", "scope": "tenant", "concurrency": 3, "kinds": ["call", "chat"]},
]
PEOPLE = [Identity(subject=s, method="jwt", tenant="t") for s in ("a", "b")]

# Weighted towards reserving for one person, so sequences reach the limits' edges.
reserve = st.tuples(
    st.just("reserve"),
    st.sampled_from([0, 0, 0, 1]),
    st.sampled_from(["call", "call", "chat"]),
    st.sampled_from([0, 60, 120, 300]),
    st.sampled_from([None, 0.2, 0.5]),
)
op = st.one_of(
    reserve,
    reserve,
    reserve,
    st.tuples(st.just("release"), st.integers(0, 6)),
    st.tuples(
        st.just("settle"),
        st.integers(0, 6),
        st.sampled_from([None, 0, 90, 400]),
        st.sampled_from([None, 0.0, 0.3]),
    ),
    st.tuples(st.just("advance"), st.sampled_from([1, 30, 61, 61, 400, 3600, 86400])),
    st.tuples(st.just("expire")),
)


async def play(url: str, ops: list[tuple[Any, ...]]) -> list[Any]:
    clock = FakeClock(1_780_000_000.0)
    limiter = create_limiter(
        LimitsSettings(
            backend=url, namespace=f"h{uuid.uuid4().hex[:10]}", rules=RULES, grace_seconds=30
        ),
        clock=clock,
    )
    held: list[Reservation] = []
    out: list[Any] = []
    try:
        for o in ops:
            if o[0] == "reserve":
                _, who, kind, worst, est = o
                req = AdmissionRequest(PEOPLE[who], "p", kind, worst, est)
                try:
                    r = await limiter.reserve(req)
                except TooManyRequestsError as exc:
                    out.append(("refused", exc.message, exc.retry_after))
                    continue
                await limiter.commit(r, f"call-{len(held)}")
                held.append(r)
                out.append(("admitted", sorted(h.what for h in r.holds)))
            elif o[0] == "release" and o[1] < len(held):
                await limiter.release(held[o[1]])
            elif o[0] == "settle":
                await limiter.settle(f"call-{o[1]}", duration_seconds=o[2], cost_usd=o[3])
            elif o[0] == "advance":
                clock.advance(o[1])
            elif o[0] == "expire":
                out.append(("expired", await limiter.expire()))
    finally:
        await limiter.aclose()
    return out


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(op, min_size=8, max_size=40))
def test_backends_agree(ops: list[tuple[Any, ...]], tmp_path: Path) -> None:
    results = {}
    for backend in BACKENDS:
        url = backend_url(backend, tmp_path / uuid.uuid4().hex)
        (tmp_path / url.rsplit("/", 1)[0].split("///")[-1]).mkdir(
            parents=True, exist_ok=True
        ) if backend == "sqlite" else None
        results[backend] = asyncio.run(play(url, ops))
    assert results["sqlite"] == results["memory"]
    assert results["postgres"] == results["memory"]
    assert results["redis"] == results["memory"]
