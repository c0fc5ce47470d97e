"""The limits tests' helpers: the backends every contract runs on, their URLs, a fake clock, the
type of the limiter factory, and the caller and request the failure tests reserve for."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support.services import postgres_url, redis_url
from vapi_proxy.auth.identity import Identity
from vapi_proxy.limits import AdmissionRequest, Limiter

BACKENDS = ["memory", "sqlite", "postgres", "redis"]
SHARED_BACKENDS = ["sqlite", "postgres", "redis"]


class FakeClock:
    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def backend_url(backend: str, tmp_path: Path) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'limits.db'}"
    if backend == "postgres":
        return postgres_url()
    return redis_url()


MakeLimiter = Callable[..., Awaitable[Limiter]]

WHO = Identity(subject="alice", method="jwt")
REQ = AdmissionRequest(identity=WHO, profile="support", worst_case_seconds=60)

# How long a test waits before failing instead of hanging: a test timeout, never a speed
# claim (these machines are shared; speed is measured in `python -m bench`).
HANG_GUARD = 30.0
