"""Child-process side of the cross-process burst tests: one limiter, many simultaneous reserves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import TooManyRequestsError
from vapi_proxy.limits import AdmissionRequest, LimitsSettings, Reservation, create_limiter


def run(
    url: str, namespace: str, rules: list[dict[str, Any]], n: int, now: float, start_at: float
) -> tuple[int, int, list[str]]:
    """(admitted, refused, other errors) for `n` simultaneous reserves by one identity."""
    return asyncio.run(_run(url, namespace, rules, n, now, start_at))


async def _run(
    url: str, namespace: str, rules: list[dict[str, Any]], n: int, now: float, start_at: float
) -> tuple[int, int, list[str]]:
    settings = LimitsSettings(backend=url, namespace=namespace, rules=rules)
    limiter = create_limiter(settings, clock=lambda: now)
    who = Identity(subject="burst", method="jwt")
    try:
        await limiter.health()  # connect and create tables before the start line
        # Start both processes together so their reservations really overlap (bounded wait).
        await asyncio.sleep(min(5.0, max(0.0, start_at - time.time())))
        results = await asyncio.gather(
            *(
                limiter.reserve(AdmissionRequest(identity=who, profile="p", worst_case_seconds=60))
                for _ in range(n)
            ),
            return_exceptions=True,
        )
    finally:
        await limiter.aclose()
    admitted = sum(isinstance(r, Reservation) for r in results)
    refused = sum(isinstance(r, TooManyRequestsError) for r in results)
    others = [
        f"{r!r} from {r.__cause__!r}"
        for r in results
        if not isinstance(r, Reservation | TooManyRequestsError)
    ]
    return admitted, refused, others
