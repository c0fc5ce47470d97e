"""Fixtures for the limits contract suite: a fake clock and a limiter factory per backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.limits import BACKENDS, FakeClock, MakeLimiter, backend_url
from vapi_proxy.limits import Limiter, LimitsSettings, create_limiter


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_780_000_000.0)  # 2026-05-28 20:26:40 UTC


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_limiter(
    backend: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[MakeLimiter]:
    made: list[Limiter] = []
    namespace = f"t{uuid.uuid4().hex[:10]}"

    async def make(rules: list[dict[str, Any]], **settings: Any) -> Limiter:
        settings.setdefault("backend", backend_url(backend, tmp_path))
        settings.setdefault("namespace", namespace)
        limiter = create_limiter(LimitsSettings(rules=rules, **settings), clock=clock)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()
