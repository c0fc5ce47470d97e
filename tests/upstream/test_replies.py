"""Judging Vapi's refusals (pure): whose each one is, what the caller sees, `Retry-After`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vapi_proxy.errors import UpstreamError
from vapi_proxy.policy.compiled import compile_profile
from vapi_proxy.policy.profiles import Profile
from vapi_proxy.upstream.client import UpstreamResponse
from vapi_proxy.upstream.replies import (
    MAX_RETRY_AFTER,
    callers_own,
    client_paths,
    judge,
    named_paths,
    parse_success,
    retry_after_seconds,
    status_label,
)

NOW = datetime(2026, 12, 6, 3, 0, 0, tzinfo=UTC)
SECRET = "0b6c8d1e-private-key-for-tests"


def reply(
    status: int, message: Any = None, retry_after: str | None = None, endpoint: str = "/call/web"
) -> UpstreamResponse:
    body = {"message": message, "error": "x", "statusCode": status} if message is not None else {}
    return UpstreamResponse(
        status, orjson.dumps(body), "application/json", retry_after, 1.0, endpoint
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("7", 7),
        (" 7 ", 7),
        ("0", 1),
        ("86400", MAX_RETRY_AFTER),
        ("-3", None),
        ("1.5", None),
        ("soon", None),
        ("٣", None),  # a non-ASCII digit is not delay-seconds
        ("9" * 80, None),
        ("Sun, 06 Dec 2026 03:00:30 GMT", 30),
        ("Sun, 06 Dec 2026 03:00:00 GMT", 1),
        ("Sun, 06 Dec 2026 02:00:00 GMT", 1),
        ("Mon, 07 Dec 2026 03:00:00 GMT", MAX_RETRY_AFTER),
        ("Sun, 06 Dec 2026 03:00:30 -0000", 30),
        ("Sun, 99 Foo 2026 03:00:30 GMT", None),
    ],
)
def test_retry_after_is_checked_and_bounded(value: str | None, seconds: int | None) -> None:
    assert retry_after_seconds(value, NOW) == seconds


@pytest.mark.parametrize(
    ("message", "paths"),
    [
        ("customer.number must be a valid phone number", {"customer.number"}),
        ("input[0].content should not be empty", {"input.0.content"}),
        ("assistantOverrides.variableValues.firstName must be a string", None),
        ("property customer should not exist", set()),
        ("assistant.property bogus should not exist", set()),
        ("nested property voice must be either object or array", set()),
        ("Couldn't Get Chat. `previousChatId` 0193 Not Found.", {"previousChatId"}),
        (
            "Couldn't Get Assistant. `assistantId` 0000 Not Found.",
            {"assistantId"},
        ),
        ("Rate limit exceeded", set()),
    ],
)
def test_the_paths_a_message_names(message: str, paths: set[str] | None) -> None:
    expected = {"assistantOverrides.variableValues.firstName"} if paths is None else paths
    assert named_paths(message) == expected


CLIENT = frozenset({"assistantOverrides.variableValues.firstName", "customer.number", "input"})


@pytest.mark.parametrize(
    ("message", "caller"),
    [
        ("assistantOverrides.variableValues.firstName must be shorter than 10", True),
        (["customer.number must be E.164", "input.0.content must be a string"], True),
        # One message about the operator's part spoils the lot.
        (["customer.number must be E.164", "assistantId must be a UUID"], False),
        ("assistantOverrides.variableValues must be an object", False),  # a parent: the profile's
        ("assistantOverrides.variableValues.firstNameX must be a string", False),
        ("property firstName should not exist", False),
        ("customer.property number should not exist", False),
        ("Bad Request", False),
        ("", False),
        (None, False),
        ([], False),
    ],
)
def test_only_refusals_naming_nothing_but_the_callers_paths_are_the_callers(
    message: Any, caller: bool
) -> None:
    assert callers_own(message, CLIENT) is caller
    assert callers_own(message, frozenset()) is False


def _profile(**config: Any) -> Any:
    return compile_profile("p", Profile.model_validate(config))


def test_the_callers_paths_follow_the_profile_and_the_endpoint() -> None:
    saved = _profile(
        assistant_id="a1",
        client_variables={
            "firstName": {"type": "string"},
            "tier": {"type": "string", "default": "basic"},
        },
        variables={"plan": "pro"},
        phone_number_id="n1",
        phone={"customer_fields": ["extension"], "allowed_prefixes": ["+1"]},
        allow_reconnect=True,
    )
    mine = "assistantOverrides.variableValues.firstName"
    # A server-owned variable is the profile's; so is one with a default (the proxy may have
    # filled it in).
    assert client_paths(saved, "/call/web") == {mine, "roomDeleteOnUserLeaveEnabled"}
    assert client_paths(saved, "/call") == {mine, "customer.number", "customer.extension"}
    assert client_paths(saved, "/chat/web/responses") == {
        mine,
        "input",
        "previousChatId",
        "sessionId",
    }
    assert client_paths(saved, "/call/{id}") == frozenset()
    assert client_paths(None, "/call/web") == frozenset()
    flow = _profile(workflow_id="w1", client_variables={"city": {"type": "string"}})
    assert client_paths(flow, "/call/web") == {"workflowOverrides.variableValues.city"}
    assert client_paths(flow, "/chat") == {"input", "previousChatId", "sessionId"}


@pytest.mark.parametrize("status", [400, 404, 422, 409, 413, 301])
def test_a_refusal_of_the_profiles_body_is_a_502_with_nothing_of_vapis(status: int) -> None:
    message = f"Couldn't Get Assistant. `assistantId` secret-id-{SECRET} Not Found."
    verdict = judge(reply(status, message), request_id="rid-1", client_paths=CLIENT)
    assert verdict.cause == "config"
    assert isinstance(verdict.error, UpstreamError) and verdict.error.status_code == 502
    assert not verdict.error.maybe_sent
    assert "rid-1" in str(verdict.error.message) and "secret-id" not in str(verdict.error.message)
    # The operator gets Vapi's message (the client already cut the key out: test_client.py).
    assert verdict.detail == message


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_key_is_the_operators(status: int) -> None:
    verdict = judge(reply(status, "Invalid Key."), request_id="r", client_paths=CLIENT)
    assert verdict.cause == "key" and verdict.error.status_code == 502
    assert "Invalid Key" not in str(verdict.error.message)


@pytest.mark.parametrize(
    ("status", "retry_after", "header"),
    [
        (429, "7", "7"),
        (500, None, None),
        (503, "Sun, 06 Dec 2026 03:01:00 GMT", "60"),
        (502, "x", None),
    ],
)
def test_vapi_busy_or_failing_is_503_with_a_checked_retry_after(
    status: int, retry_after: str | None, header: str | None
) -> None:
    verdict = judge(reply(status, "Rate limit exceeded", retry_after), request_id="r", now=NOW)
    assert verdict.cause == "busy" and verdict.error.status_code == 503
    assert verdict.error.headers.get("Retry-After") == header
    assert "Rate limit" not in str(verdict.error.message)


def test_the_callers_own_refusal_shows_vapis_reason_under_vapis_status() -> None:
    message = ["customer.number must be a valid phone number"]
    verdict = judge(reply(422, message), request_id="r", client_paths=CLIENT)
    assert verdict.cause == "caller" and verdict.error.status_code == 422
    assert verdict.error.message == message
    # The same words on a status that is not a refusal of the body stay the operator's.
    assert judge(reply(409, message), request_id="r", client_paths=CLIENT).cause == "config"


def test_status_labels_are_bounded() -> None:
    assert [status_label(s) for s in (400, 404, 429, 503, 418, 599, 302)] == [
        "400",
        "404",
        "429",
        "503",
        "4xx",
        "5xx",
        "3xx",
    ]


def test_the_operators_own_tools_read_vapis_reason() -> None:
    assert parse_success(UpstreamResponse(200, b'{"id": "c1"}', "application/json", None, 1.0)) == {
        "id": "c1"
    }
    with pytest.raises(UpstreamError) as refused:
        parse_success(reply(404, "Call not found"))
    assert refused.value.status_code == 502
    assert refused.value.message == "Vapi refused the request (404): Call not found"
    with pytest.raises(UpstreamError) as busy:
        parse_success(reply(429, "Rate limit exceeded", "5"))
    assert busy.value.status_code == 503 and busy.value.headers["Retry-After"] == "5"


_PATHS = st.sampled_from(
    [
        "assistantId",
        "assistant.model",
        "assistantOverrides.variableValues.firstName",
        "assistantOverrides.variableValues",
        "customer.number",
        "phoneNumberId",
        "input.0.content",
        "property firstName",
    ]
)
_MESSAGES = st.one_of(
    st.text(max_size=60),
    st.builds(lambda p, t: f"{p} must {t}", _PATHS, st.text(max_size=30)),
    st.builds(lambda p, t: f"Couldn't Get X. `{p}` {t}", _PATHS, st.text(max_size=30)),
)


@settings(max_examples=300, deadline=None)
@given(
    status=st.integers(min_value=300, max_value=599),
    messages=st.lists(_MESSAGES, min_size=1, max_size=4),
)
def test_vapis_text_reaches_the_caller_only_when_it_names_only_the_callers_paths(
    status: int, messages: list[str]
) -> None:
    marker = "SERVER-SIDE-7f3a"
    sent = [f"{m} {marker}" for m in messages]
    verdict = judge(reply(status, sent), request_id="r", client_paths=CLIENT)
    shown = orjson.dumps(verdict.error.message).decode()
    if marker in shown:
        assert verdict.cause == "caller" and status in (400, 404, 422)
        for text in sent:
            names = named_paths(text)
            assert names and all(n in CLIENT or n.startswith("input.") for n in names)
    else:
        assert verdict.cause != "caller"
        assert verdict.error.status_code in (502, 503)
