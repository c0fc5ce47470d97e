"""A compiled profile carries what every entry point needs from it, reply allowlist included."""

from __future__ import annotations

import pytest

from vapi_proxy.policy.compiled import compile_profile
from vapi_proxy.policy.profiles import Profile
from vapi_proxy.policy.reply import SDK_PATHS, scrub


@pytest.mark.parametrize(
    ("expose", "extra"),
    [
        ([], ()),
        (["endedReason", "id"], (("endedReason",),)),  # `id` is already one of the SDK's
        (["analysis.summary"], (("analysis", "summary"),)),
    ],
)
def test_the_reply_allowlist_is_compiled_with_the_profile(
    expose: list[str], extra: tuple[tuple[str, ...], ...]
) -> None:
    compiled = compile_profile("p", Profile.model_validate({"assistant_id": "a", "expose": expose}))
    assert compiled.reply_paths == SDK_PATHS + extra
    call = {"id": "c1", "endedReason": "x", "orgId": "o", "analysis": {"summary": "s", "k": 1}}
    visible = scrub(call, compiled.reply_paths)
    assert "orgId" not in visible and visible["id"] == "c1"
    assert ("endedReason" in visible) is ("endedReason" in expose)
    assert visible.get("analysis") == (
        {"summary": "s"} if extra[-1:] == (("analysis", "summary"),) else None
    )
