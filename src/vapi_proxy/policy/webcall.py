"""Decide a web call: pick the profile, check the caller and the client's fields, build Vapi's body.

Pure: takes a `WebCallIntake`, the compiled profiles (`policy/compiled.py`, shared with phone
calls, chat and `assistant-request` answers) and the caller's identity, returns the exact body
for `POST /call/web` or raises the refusal naming each offending field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vapi_proxy.policy.access import check_access
from vapi_proxy.policy.compiled import (
    CallContext,
    CompiledProfile,
    PlannedCall,
    build_call_body,
    check_client_values,
    lookup_profile,
)
from vapi_proxy.policy.intake import WebCallIntake


def _client_variables(compiled: CompiledProfile, intake: WebCallIntake) -> dict[str, Any]:
    problems = []
    if intake.room_delete_on_user_leave is not None and not compiled.profile.allow_reconnect:
        problems.append(
            "Field 'roomDeleteOnUserLeaveEnabled' may not be set by the client for profile "
            f"'{compiled.name}'."
        )
    # The disallowed paths come first, as before the check was shared.
    return check_client_values(compiled, intake.variables, intake.disallowed, problems)


def plan_web_call(
    profiles: Mapping[str, CompiledProfile], intake: WebCallIntake, ctx: CallContext
) -> PlannedCall:
    """Check the request against its profile and build the body for Vapi's `POST /call/web`."""
    compiled = lookup_profile(profiles, intake.profile)
    check_access(compiled.profile.access, ctx.identity, compiled.name)
    body = build_call_body(compiled, _client_variables(compiled, intake), ctx)
    if intake.room_delete_on_user_leave is not None:
        body["roomDeleteOnUserLeaveEnabled"] = intake.room_delete_on_user_leave
    return PlannedCall(profile=compiled, body=body)
