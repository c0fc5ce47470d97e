"""The admission interface every limits backend implements (the registry that picks one is
`limits/registry.py`).

One `reserve` checks and takes every applicable limit at once (all or nothing); the HTTP layer
then `commit`s it with Vapi's call id or `release`s it, and webhooks `settle` it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from vapi_proxy.auth.identity import Identity

if TYPE_CHECKING:
    from vapi_proxy.limits.config import Kind, Scope

Clock = Callable[[], float]
"""Seconds since the epoch; tests pass a fake one instead of sleeping."""


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    identity: Identity
    profile: str
    kind: Kind = "call"
    worst_case_seconds: float = 0.0
    """The enforced `maxDurationSeconds`: held against minute budgets and bounding the slot."""
    estimated_cost_usd: float | None = None
    """Held against USD budgets until the end-of-call-report settles the real cost."""
    now: float | None = None
    """Seconds since the epoch; None means the limiter's clock."""


@dataclass(slots=True)
class Hold:
    """One thing a reservation took: a count, an amount, or a concurrency slot. Never changed
    once made (not `frozen` only for its cost: see `limits.core.CounterCheck`)."""

    rule: str
    what: Literal["rate", "quota", "minutes", "usd", "concurrency"]
    key: str
    amount: int
    """1 for counts and slots; milliseconds for minutes; micro-dollars for USD."""


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    holds: tuple[Hold, ...] = ()
    expires_at: float = 0.0
    """When a concurrency slot is given back if the call never reports its end."""
    degraded: bool = False
    """Admitted without counting because the store was down and the rules fail open."""


@dataclass(frozen=True, slots=True)
class HealthStatus:
    ok: bool
    backend: str
    detail: str | None = None
    failure_mode: str = "closed"


@dataclass(frozen=True, slots=True)
class RuleUsage:
    """Where one identity stands against one limit of one rule (read-only; for `/me/usage`
    and the admin console). Counts are admissions; minutes and USD are in those units."""

    rule: str
    what: Literal["rate", "quota", "minutes", "usd", "concurrency"]
    kind: Kind
    """What is counted: `call` starts or `chat` turns."""
    period: Literal["second", "minute", "hour", "day", "month"] | None
    """None for concurrency (calls at once)."""
    scope: Scope
    limit: float
    used: float
    """For concurrency: slots in use now."""
    remaining: float
    resets_at: float | None
    """Epoch seconds when `used` next goes down: the end of a calendar window, when the oldest
    admission leaves a rate window, or when the first live slot expires; None if nothing is
    used."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Limiter(Protocol):
    async def reserve(self, req: AdmissionRequest) -> Reservation:
        """Take every applicable limit or none; raises TooManyRequestsError or, when the store
        is down and a rule fails closed, ServiceUnavailableError."""

    async def commit(self, reservation: Reservation, call_id: str) -> None:
        """The upstream call succeeded: tie the reservation to Vapi's call id."""

    async def release(self, reservation: Reservation) -> None:
        """The upstream call failed: give back everything the reservation took."""

    async def settle(
        self,
        call_id: str,
        *,
        duration_seconds: float | None,
        cost_usd: float | None,
        ended_at: datetime | float | None = None,
    ) -> None:
        """The call ended: free its slot, replace held worst cases with actuals. Idempotent."""

    async def expire(self, now: float | None = None) -> int:
        """Free slots of calls past max duration + grace; returns how many were freed. Call it
        periodically (e.g. every 30 s); slots past expiry stop counting even before it runs."""

    async def usage(self, identity: Identity, profile: str | None = None) -> list[RuleUsage]:
        """For each limit of each rule that applies to `identity` (on `profile`; None: the
        rules that do not depend on the profile), its limit, use and reset time. Changes
        nothing; raises ServiceUnavailableError when the store is down."""

    async def health(self) -> HealthStatus: ...

    async def aclose(self) -> None: ...
