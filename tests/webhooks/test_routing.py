"""Inbound routing rules as a table: numbers called, callers (lists and prefixes), time of day."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from vapi_proxy.webhooks.config import InboundSettings
from vapi_proxy.webhooks.routing import InboundCall, choose

BERLIN = ZoneInfo("Europe/Berlin")

SETTINGS = InboundSettings.model_validate(
    {
        "time_zone": "Europe/Berlin",
        "deny_numbers": ["+15550666"],
        "deny_prefixes": ["+1900"],
        "rules": [
            {"name": "vip", "match": {"caller_numbers": ["+4930111"]}, "profile": "vip"},
            {
                "name": "sales-hours",
                "match": {
                    "phone_number_ids": ["pn-sales"],
                    "hours": [
                        {
                            "days": ["mon", "tue", "wed", "thu", "fri"],
                            "start": "09:00",
                            "end": "17:00",
                        }
                    ],
                },
                "profile": "sales",
            },
            {
                "name": "sales-closed",
                "match": {"phone_number_ids": ["pn-sales"]},
                "error": "We are closed. Please call again between nine and five.",
            },
            {
                "name": "night-line",
                "match": {
                    "called_numbers": ["+15550199"],
                    "hours": [{"days": ["fri"], "start": "22:00", "end": "06:00"}],
                },
                "destination": {"type": "number", "number": "+15550123"},
            },
            {"name": "germany", "match": {"caller_prefixes": ["+49"]}, "profile": "german"},
        ],
        "default": {"profile": "support"},
    }
)


def call(
    pn: str | None = "pn-main", called: str | None = "+15550100", caller: str | None = "+15551234"
) -> InboundCall:
    return InboundCall("c1", pn, called, caller)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


def outcome(route: Any) -> str:
    action = route.action
    if action is None:
        return f"say:{route.message}"
    if action.profile:
        return f"profile:{action.profile}"
    if action.destination:
        return f"transfer:{action.destination['number']}"
    return f"say:{action.error}"


MONDAY_NOON = "2026-11-23T12:00"


@pytest.mark.parametrize(
    ("case", "when", "expected", "rule"),
    [
        (call(), MONDAY_NOON, "profile:support", "default"),
        (
            call(caller="+15550666"),
            MONDAY_NOON,
            "say:Sorry, this number cannot take your call.",
            "denied",
        ),
        (
            call(caller="+19005550000"),
            MONDAY_NOON,
            "say:Sorry, this number cannot take your call.",
            "denied",
        ),
        (call(caller="+4930111"), MONDAY_NOON, "profile:vip", "vip"),
        (call(caller="+4930222"), MONDAY_NOON, "profile:german", "germany"),
        (call(pn="pn-sales"), MONDAY_NOON, "profile:sales", "sales-hours"),
        (
            call(pn="pn-sales"),
            "2026-11-23T17:00",
            "say:We are closed. Please call again between nine and five.",
            "sales-closed",
        ),
        (
            call(pn="pn-sales"),
            "2026-11-23T08:59",
            "say:We are closed. Please call again between nine and five.",
            "sales-closed",
        ),
        (
            call(pn="pn-sales"),
            "2026-11-28T12:00",
            "say:We are closed. Please call again between nine and five.",
            "sales-closed",
        ),  # Saturday
        (
            call(called="+15550199"),
            "2026-11-27T23:30",
            "transfer:+15550123",
            "night-line",
        ),  # Friday night
        (
            call(called="+15550199"),
            "2026-11-28T05:59",
            "transfer:+15550123",
            "night-line",
        ),  # wraps into Saturday
        (call(called="+15550199"), "2026-11-28T06:00", "profile:support", "default"),
        (call(called="+15550199"), "2026-11-26T23:30", "profile:support", "default"),  # Thursday
        (call(caller=None), MONDAY_NOON, "profile:support", "default"),  # withheld caller id
    ],
)
def test_routing_table(case: InboundCall, when: str, expected: str, rule: str) -> None:
    route = choose(SETTINGS, case, at(when))
    assert (outcome(route), route.rule) == (expected, rule)


def test_no_rule_and_no_default_speaks_the_error_message() -> None:
    settings = InboundSettings(error_message="Nobody is here.")
    route = choose(settings, call(), at(MONDAY_NOON))
    assert (route.rule, route.action, route.message) == ("none", None, "Nobody is here.")


def test_time_zone_is_applied() -> None:
    settings = InboundSettings.model_validate(
        {
            "time_zone": "America/New_York",
            "rules": [
                {
                    "name": "day",
                    "match": {"hours": [{"start": "09:00", "end": "17:00"}]},
                    "profile": "p",
                }
            ],
        }
    )
    noon_berlin = at(MONDAY_NOON)  # 06:00 in New York
    assert choose(settings, call(), noon_berlin).rule == "none"
    assert choose(settings, call(), noon_berlin + 4 * 3600).rule == "day"


@pytest.mark.parametrize(
    "rule",
    [
        {"name": "x"},
        {"name": "x", "profile": "a", "error": "b"},
        {"name": "x", "error": "  "},
        {"name": "x", "destination": {"type": "email"}},
        {"name": "x", "profile": "a", "match": {"hours": [{"start": "9:00"}]}},
    ],
)
def test_invalid_rules_are_config_errors(rule: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        InboundSettings.model_validate({"rules": [rule]})


def test_from_message_reads_vapi_fields() -> None:
    message = {
        "type": "assistant-request",
        "call": {"id": "call-1"},
        "phoneNumber": {"id": "pn-1", "number": "+15550100"},
        "customer": {"number": "+4930111"},
    }
    assert InboundCall.from_message(message) == InboundCall(
        "call-1", "pn-1", "+15550100", "+4930111"
    )


def test_numbers_with_control_characters_or_too_long_are_withheld() -> None:
    """The caller's number becomes their identity and a key in every store: one with a NUL or
    a line break, or longer than a name may be, is treated as withheld (and such callers share
    the `unknown` identity)."""
    message = {
        "call": {"id": "call-1"},
        "phoneNumber": {"id": "pn-1", "number": "+1555\x000100"},
        "customer": {"number": "+4930\n111"},
    }
    assert InboundCall.from_message(message) == InboundCall("call-1", "pn-1", None, None)
    message["customer"] = {"number": "sip:" + "9" * 300}
    assert InboundCall.from_message(message).caller_number is None
