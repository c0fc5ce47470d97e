"""Reading Vapi's webhook messages into ledger events: odd numbers and times never raise."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from vapi_proxy.ledger.records import LedgerEvent


def report(**fields: Any) -> LedgerEvent:
    message = {"type": "end-of-call-report", "call": {"id": "c1"}, **fields}
    return LedgerEvent.from_vapi(message)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12.5, 12.5),
        (0, 0.0),
        ("12.5", 12.5),
        (" 3 ", 3.0),
        # Each of these reached the budget settlement as NaN, infinity or a refund, or raised.
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-Infinity", None),
        ("1e400", None),
        (-5, None),
        ("-5", None),
        (True, None),
        ({"value": 3}, None),
        ([1], None),
        ("²", None),
        ("12,5", None),
        (1e300, None),  # would overflow the limits store's integer columns
    ],
)
def test_cost_and_duration_are_finite_non_negative_numbers(value: Any, expected: Any) -> None:
    event = report(cost=value, durationSeconds=value)
    assert event.cost_usd == expected
    assert event.duration_seconds == expected


@pytest.mark.parametrize("value", [1e20, -1e20, 1e300, True, "yesterday", {"at": 1}])
def test_times_out_of_range_or_of_the_wrong_kind_are_ignored(value: Any) -> None:
    event = report(startedAt=value, endedAt=value)
    assert event.started_at is None
    assert event.ended_at is None


def test_ordinary_times_are_read() -> None:
    event = report(startedAt="2026-12-06T02:00:00.000Z", endedAt=1_765_000_000_000)
    assert event.started_at == datetime(2026, 12, 6, 2, tzinfo=UTC)
    assert event.ended_at == datetime.fromtimestamp(1_765_000_000, UTC)
