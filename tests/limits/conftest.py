"""Fixtures for the limits contract suite: a fake clock and a limiter factory per backend."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest_services

from conftest_services import postgres_url, redis_url
from vapi_proxy.limits import Limiter, LimitsSettings, create_limiter

BACKENDS = ["memory", "sqlite", "postgres", "redis"]
SHARED_BACKENDS = ["sqlite", "postgres", "redis"]


class FakeClock:
    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_780_000_000.0)  # 2026-05-28 20:26:40 UTC


def backend_url(backend: str, tmp_path: Path) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'limits.db'}"
    if backend == "postgres":
        return postgres_url()
    return redis_url()


MakeLimiter = Callable[..., Awaitable[Limiter]]


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
