"""Decide a server-side phone call (`POST /call`): the profile, the callee, Vapi's body.

Pure, like `webcall`: the profile picks the assistant and the Vapi phone number; the client picks
only whom to call (`customer.number`, plus the `customer` fields the profile allows), and every
number is checked against the profile's destination rules (E.164, allowlist, premium denylist) so
a caller cannot run up the operator's bill on a number of their choosing. A batch
(`customers[]`) is planned as one call per callee, each admitted by the limits on its own.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from vapi_proxy.errors import BadRequestError, ForbiddenError
from vapi_proxy.policy.access import check_access
from vapi_proxy.policy.compiled import (
    CallContext,
    CompiledProfile,
    PlannedCall,
    build_call_body,
    check_client_values,
    lookup_profile,
)
from vapi_proxy.policy.intake import ClientField, one_profile, read_context
from vapi_proxy.policy.profiles import DEFAULT_PREMIUM_PREFIXES, PhoneRules

# ITU-T E.164: a leading +, a non-zero country code digit, at most 15 digits in all. The lower
# bound of 8 digits keeps out short codes and service numbers.
E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_CUSTOMER_KEYS = ("customer", "customers")


@dataclass(frozen=True, slots=True)
class Callee:
    """One `customer` object as the client sent it, with the path it came from."""

    path: str
    fields: Mapping[str, Any]


@dataclass(slots=True)
class PhoneCallIntake:
    profile: str
    callees: list[Callee]
    batch: bool
    variables: list[ClientField] = field(default_factory=list)
    disallowed: list[str] = field(default_factory=list)


def read_phone_call(body: Any, ignored: Collection[str] = ("userId",)) -> PhoneCallIntake:
    """Turn a `POST /call` body into a `PhoneCallIntake`, or refuse malformed input (400).

    `vapi.calls.create(assistant_id="<profile>", customer={"number": "+1..."})` sends
    `{"assistantId": "<profile>", "customer": {"number": "+1..."}}`.
    """
    ctx = read_context(body, ignored, _CUSTOMER_KEYS)
    profile = one_profile(ctx.names)
    if profile is None:
        raise BadRequestError("Name a profile: send assistantId='<profile>'.")
    customer, customers = body.get("customer"), body.get("customers")
    if customer is not None and customers is not None:
        raise BadRequestError("Send either 'customer' or 'customers', not both.")
    callees: list[Callee] = []
    if customers is not None:
        if not isinstance(customers, list) or not customers:
            raise BadRequestError("'customers' must be a non-empty array of objects.")
        for index, item in enumerate(customers):
            callees.append(_callee(item, f"customers[{index}]"))
    elif customer is not None:
        callees.append(_callee(customer, "customer"))
    else:
        raise BadRequestError("Name the callee: send customer={'number': '+<E.164 number>'}.")
    return PhoneCallIntake(
        profile=profile,
        callees=callees,
        batch=customers is not None,
        variables=ctx.variables,
        disallowed=ctx.disallowed,
    )


def _callee(value: Any, path: str) -> Callee:
    if not isinstance(value, Mapping):
        raise BadRequestError(f"'{path}' must be an object.")
    return Callee(path, value)


def destination_problem(number: str, rules: PhoneRules) -> str | None:
    """Why `number` may not be called under `rules`, or None if it may."""
    if not any(number.startswith(prefix) for prefix in rules.allowed_prefixes):
        return "is outside the destinations this profile may call"
    denied = (*DEFAULT_PREMIUM_PREFIXES, *rules.denied_prefixes)
    if not rules.default_denylist:
        denied = tuple(rules.denied_prefixes)
    if any(number.startswith(prefix) for prefix in denied):
        return "is in a premium-rate or otherwise denied range"
    return None


def _customer(compiled: CompiledProfile, callee: Callee, problems: list[str]) -> dict[str, Any]:
    """The `customer` object Vapi gets: the number and the fields the profile allows."""
    rules = compiled.profile.phone
    out: dict[str, Any] = {}
    for key, value in callee.fields.items():
        path = f"{callee.path}.{key}"
        if key == "number":
            continue
        if key not in rules.customer_fields:
            problems.append(
                f"Field '{path}' may not be set by the client for profile '{compiled.name}'."
            )
        elif value is not None:
            if not isinstance(value, str) or len(value) > 40:
                problems.append(f"'{path}' must be a string of at most 40 characters.")
            else:
                out[key] = value
    number = callee.fields.get("number")
    if not isinstance(number, str) or not E164.fullmatch(number):
        problems.append(f"'{callee.path}.number' must be an E.164 number like +14155550100.")
    else:
        out["number"] = number
    return out


def plan_phone_call(
    profiles: Mapping[str, CompiledProfile], intake: PhoneCallIntake, ctx: CallContext
) -> list[PlannedCall]:
    """Check the request against its profile; one planned `POST /call` body per callee.

    Refusals: unknown profile 404; caller not admitted 401/403; profile without a phone number,
    a batch the profile does not allow, or a number outside its destinations 403; malformed or
    disallowed fields 400 (all named at once).
    """
    compiled = lookup_profile(profiles, intake.profile)
    profile = compiled.profile
    check_access(profile.access, ctx.identity, compiled.name)
    if profile.phone_number_id is None:
        raise ForbiddenError(f"The profile '{compiled.name}' does not make phone calls.")
    rules = profile.phone
    if intake.batch and len(intake.callees) > rules.max_batch:
        if rules.max_batch == 0:
            raise ForbiddenError(f"The profile '{compiled.name}' does not allow batch calls.")
        raise ForbiddenError(
            f"The profile '{compiled.name}' allows at most {rules.max_batch} callees per batch."
        )
    problems: list[str] = []
    customers = [_customer(compiled, callee, problems) for callee in intake.callees]
    client_values = check_client_values(compiled, intake.variables, intake.disallowed, problems)
    refused = []
    for callee, customer in zip(intake.callees, customers, strict=True):
        reason = destination_problem(customer["number"], rules)
        if reason is not None:
            refused.append(f"'{callee.path}.number' {reason}.")
    if refused:
        raise ForbiddenError(refused[0] if len(refused) == 1 else refused)
    base = build_call_body(compiled, client_values, ctx)
    base["phoneNumberId"] = profile.phone_number_id
    return [PlannedCall(profile=compiled, body={**base, "customer": c}) for c in customers]
