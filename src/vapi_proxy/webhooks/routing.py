"""Inbound routing: which action an `assistant-request` gets, from the numbers and the time.

Pure and table-tested: the called number (`phoneNumber.id` / `.number`), the caller's number
(`customer.number`: deny lists first, then exact numbers and prefixes per rule) and the local
time in `inbound.time_zone`. The first rule whose conditions all hold wins; then `default`;
then the spoken `error_message`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from vapi_proxy.auth.identity import unusable_name
from vapi_proxy.webhooks.config import DAYS, HoursWindow, InboundAction, InboundSettings, PhoneMatch


@dataclass(frozen=True, slots=True)
class InboundCall:
    """The facts of an inbound call that rules look at."""

    call_id: str | None
    phone_number_id: str | None
    called_number: str | None
    caller_number: str | None

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> InboundCall:
        call = message.get("call")
        number = message.get("phoneNumber")
        customer = message.get("customer")
        if not isinstance(customer, Mapping) and isinstance(call, Mapping):
            customer = call.get("customer")
        return cls(
            call_id=_text(call.get("id")) if isinstance(call, Mapping) else None,
            phone_number_id=_text(number.get("id")) if isinstance(number, Mapping) else None,
            called_number=_text(number.get("number")) if isinstance(number, Mapping) else None,
            caller_number=_text(customer.get("number")) if isinstance(customer, Mapping) else None,
        )


@dataclass(frozen=True, slots=True)
class Route:
    """The chosen action and why (`rule` is a rule name, `default`, `denied` or `none`)."""

    rule: str
    action: InboundAction | None
    """None: speak `message` (denied caller or nothing matched)."""
    message: str | None = None


def _text(value: Any) -> str | None:
    # A number or id with control characters, or longer than a caller's name may be, is
    # treated as withheld: it would become the caller's identity (a key in every store), and
    # no real one is like that.
    if isinstance(value, str) and value and unusable_name(value) is None:
        return value
    return None


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def in_window(window: HoursWindow, local: datetime) -> bool:
    """Whether `local` falls in the window; a start after the end wraps past midnight and then
    belongs to the day it opened on."""
    start, end = _minutes(window.start), _minutes(window.end)
    now = local.hour * 60 + local.minute
    today = DAYS[local.weekday()]
    if start <= end:
        return today in window.days and start <= now < end
    yesterday = DAYS[(local.weekday() - 1) % 7]
    return (today in window.days and now >= start) or (yesterday in window.days and now < end)


def matches(match: PhoneMatch, call: InboundCall, local: datetime) -> bool:
    if match.phone_number_ids is not None and call.phone_number_id not in match.phone_number_ids:
        return False
    if match.called_numbers is not None and call.called_number not in match.called_numbers:
        return False
    caller = call.caller_number
    if match.caller_numbers is not None or match.caller_prefixes is not None:
        exact = caller is not None and caller in (match.caller_numbers or [])
        prefixed = caller is not None and any(
            caller.startswith(p) for p in match.caller_prefixes or []
        )
        if not (exact or prefixed):
            return False
    return match.hours is None or any(in_window(w, local) for w in match.hours)


def choose(settings: InboundSettings, call: InboundCall, now: float) -> Route:
    """The route for `call` at `now` (epoch seconds)."""
    caller = call.caller_number
    if caller is not None and (
        caller in settings.deny_numbers or any(caller.startswith(p) for p in settings.deny_prefixes)
    ):
        return Route("denied", None, settings.denied_message)
    local = datetime.fromtimestamp(now, ZoneInfo(settings.time_zone))
    for rule in settings.rules:
        if matches(rule.match, call, local):
            return Route(rule.name, rule)
    if settings.default is not None:
        return Route("default", settings.default)
    return Route("none", None, settings.error_message)
