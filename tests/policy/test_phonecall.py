"""Phone-call policy as tables: intake of the SDK's body, destination rules, body building."""

from __future__ import annotations

from typing import Any

import pytest

from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import BadRequestError, ForbiddenError, ProxyError
from vapi_proxy.policy.compiled import CallContext, compile_profiles
from vapi_proxy.policy.phonecall import destination_problem, plan_phone_call, read_phone_call
from vapi_proxy.policy.profiles import PhoneRules, Profile

IDENTITY = Identity(subject="alice", method="api_key")


def _profiles(**phone: Any) -> dict[str, Any]:
    rules = {"allowed_prefixes": ["+1"], **phone}
    return compile_profiles(
        {
            "out": Profile(
                assistant_id="a1",
                phone_number_id="pn1",
                phone=PhoneRules(**rules),
                client_variables={"firstName": {"max_length": 10}},
            ),
            "web-only": Profile(assistant_id="a1"),
        }
    )


def _plan(body: dict[str, Any], **phone: Any) -> list[dict[str, Any]]:
    plans = plan_phone_call(
        _profiles(**phone), read_phone_call(body), CallContext(IDENTITY, "req-1")
    )
    return [p.body for p in plans]


def test_the_python_sdks_body_is_read() -> None:
    intake = read_phone_call({"assistantId": "out", "customer": {"number": "+14155550100"}})
    assert intake.profile == "out" and not intake.batch
    assert [dict(c.fields) for c in intake.callees] == [{"number": "+14155550100"}]


def test_the_body_carries_the_profiles_number_and_the_callee_only() -> None:
    (body,) = _plan(
        {
            "assistantId": "out",
            "customer": {"number": "+14155550100"},
            "assistantOverrides": {"variableValues": {"firstName": "Ann"}},
        }
    )
    assert body["assistantId"] == "a1" and body["phoneNumberId"] == "pn1"
    assert body["customer"] == {"number": "+14155550100"}
    assert body["assistantOverrides"]["variableValues"] == {"firstName": "Ann"}
    assert body["assistantOverrides"]["metadata"]["vapiProxy"]["profile"] == "out"


@pytest.mark.parametrize(
    ("number", "rules", "problem"),
    [
        ("+14155550100", {}, None),
        ("+19005550100", {}, "premium"),
        ("+19765550100", {}, "premium"),
        ("+19005550100", {"default_denylist": False}, None),
        ("+14155550100", {"denied_prefixes": ["+1415"]}, "premium"),
        ("+442071234567", {}, "outside"),
        ("+442071234567", {"allowed_prefixes": ["+"]}, None),
        ("+447012345678", {"allowed_prefixes": ["+"]}, "premium"),
        ("+88212345678", {"allowed_prefixes": ["+"]}, "premium"),
        ("+4915112345678", {"allowed_prefixes": ["+49"]}, None),
        ("+4990012345678", {"allowed_prefixes": ["+49"]}, "premium"),
    ],
)
def test_destination_rules(number: str, rules: dict[str, Any], problem: str | None) -> None:
    found = destination_problem(number, PhoneRules(**{"allowed_prefixes": ["+1"], **rules}))
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        ({"assistantId": "out"}, BadRequestError, "callee"),
        ({"customer": {"number": "+14155550100"}}, BadRequestError, "Name a profile"),
        ({"assistantId": "out", "customer": "x"}, BadRequestError, "object"),
        ({"assistantId": "out", "customers": []}, BadRequestError, "non-empty"),
        (
            {"assistantId": "out", "customer": {"number": "+1"}, "customers": []},
            BadRequestError,
            "not both",
        ),
        ({"assistantId": "out", "customer": {"number": "+1 415"}}, BadRequestError, "E.164"),
        ({"assistantId": "out", "customer": {"number": 14155550100}}, BadRequestError, "E.164"),
        (
            {"assistantId": "out", "customer": {"number": "+14155550100", "name": "A"}},
            BadRequestError,
            "customer.name",
        ),
        (
            {"assistantId": "out", "customer": {"number": "+14155550100"}, "schedulePlan": {}},
            BadRequestError,
            "schedulePlan",
        ),
        (
            {"assistantId": "out", "customer": {"number": "+14155550100"}, "assistant": {"x": 1}},
            BadRequestError,
            "assistant.x",
        ),
        ({"assistantId": "web-only", "customer": {"number": "+1415"}}, ForbiddenError, "phone"),
        (
            {"assistantId": "out", "customers": [{"number": "+14155550100"}]},
            ForbiddenError,
            "batch",
        ),
        (
            {"assistantId": "out", "customer": {"number": "+33612345678"}},
            ForbiddenError,
            "outside",
        ),
    ],
)
def test_refusals(body: dict[str, Any], error: type[ProxyError], fragment: str) -> None:
    with pytest.raises(error) as caught:
        _plan(body)
    assert fragment in str(caught.value)


def test_batches_up_to_the_profiles_maximum() -> None:
    body = {"assistantId": "out", "customers": [{"number": f"+1415555010{i}"} for i in range(3)]}
    assert len(_plan(body, max_batch=3)) == 3
    with pytest.raises(ForbiddenError, match="at most 2"):
        _plan(body, max_batch=2)


def test_allowed_customer_fields_pass_and_are_bounded() -> None:
    body = {"assistantId": "out", "customer": {"number": "+14155550100", "name": "Ann"}}
    (planned,) = _plan(body, customer_fields=["name"])
    assert planned["customer"] == {"number": "+14155550100", "name": "Ann"}
    body["customer"]["name"] = "x" * 41
    with pytest.raises(BadRequestError, match="40 characters"):
        _plan(body, customer_fields=["name"])


def test_a_phone_profile_needs_an_allowlist() -> None:
    with pytest.raises(ValueError, match="allowed_prefixes"):
        Profile(assistant_id="a1", phone_number_id="pn1")
    with pytest.raises(ValueError, match=r"E\.164 prefix"):
        PhoneRules(allowed_prefixes=["1"])
