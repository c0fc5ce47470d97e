"""Chat policy as tables: what the client may send, which profile answers, Vapi's body."""

from __future__ import annotations

from typing import Any

import pytest

from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import BadRequestError, ForbiddenError, NotFoundError, ProxyError
from vapi_proxy.policy.chat import Continuation, plan_chat, read_chat
from vapi_proxy.policy.compiled import CallContext, compile_profiles
from vapi_proxy.policy.profiles import Profile

ALICE = Identity(subject="alice", method="api_key")
PROFILES = compile_profiles(
    {
        "coach": Profile(
            assistant_id="a1",
            client_variables={"firstName": {"max_length": 10}},
            variables={"who": "{{identity.sub}}"},
        ),
        "bot": Profile(assistant={"name": "Bot", "model": {"provider": "openai"}}),
        "team": Profile(squad_id="sq1"),
        "flow": Profile(workflow_id="wf1"),
        "staff": Profile(assistant_id="a2", access={"roles": ["staff"]}),
    }
)


def _plan(
    body: dict[str, Any], *, web: bool = False, responses: bool = False, owner: str | None = None
) -> tuple[dict[str, Any], bool]:
    intake = read_chat(body, web=web, responses=responses)
    found = Continuation(owner) if owner is not None else None
    planned = plan_chat(PROFILES, intake, CallContext(ALICE, "req-1"), found)
    return planned.body, planned.stream


def test_a_chat_body_is_the_profiles_target_plus_input_and_variables() -> None:
    body, stream = _plan(
        {
            "assistantId": "coach",
            "input": "hi",
            "assistantOverrides": {"variableValues": {"firstName": "Ann"}},
        }
    )
    assert stream is False
    assert body == {
        "assistantId": "a1",
        "assistantOverrides": {"variableValues": {"firstName": "Ann", "who": "alice"}},
        "input": "hi",
        "stream": False,
    }


@pytest.mark.parametrize(
    ("responses", "sent", "expected"),
    [(False, None, False), (True, None, True), (True, False, False), (False, True, True)],
)
def test_stream_defaults_follow_vapi(responses: bool, sent: bool | None, expected: bool) -> None:
    body: dict[str, Any] = {"assistantId": "coach", "input": "x"}
    if sent is not None:
        body["stream"] = sent
    assert _plan(body, responses=responses)[1] is expected


def test_a_continuation_takes_its_profile_from_the_ledger() -> None:
    body, _ = _plan({"previousChatId": "c1", "input": "again"}, owner="bot")
    assert body["assistant"]["name"] == "Bot" and body["previousChatId"] == "c1"
    with pytest.raises(BadRequestError, match="belongs to profile 'bot'"):
        _plan({"assistantId": "coach", "previousChatId": "c1", "input": "x"}, owner="bot")


def test_squads_chat_without_overrides_and_the_model_field_is_dropped_for_responses() -> None:
    body, _ = _plan({"assistantId": "team", "input": "x", "model": "gpt-4o"}, responses=True)
    assert body == {"squadId": "sq1", "input": "x", "stream": True}


def test_the_widget_may_end_its_session() -> None:
    body, _ = _plan({"assistantId": "coach", "input": "bye", "sessionEnd": True}, web=True)
    assert body["sessionEnd"] is True


def test_message_arrays_are_checked() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    body, _ = _plan({"assistantId": "coach", "input": messages})
    assert body["input"] == messages


@pytest.mark.parametrize(
    ("body", "kwargs", "error", "fragment"),
    [
        ({"assistantId": "coach"}, {}, BadRequestError, "'input' is required"),
        ({"assistantId": "coach", "input": ""}, {}, BadRequestError, "1 to"),
        ({"assistantId": "coach", "input": "x" * 32_001}, {}, BadRequestError, "1 to"),
        ({"assistantId": "coach", "input": []}, {}, BadRequestError, "array"),
        (
            {"assistantId": "coach", "input": [{"role": "system", "content": "x"}]},
            {},
            BadRequestError,
            "role",
        ),
        (
            {"assistantId": "coach", "input": [{"role": "user", "content": 1}]},
            {},
            BadRequestError,
            "string",
        ),
        (
            {"assistantId": "coach", "input": [{"role": "user", "content": "x", "tool_calls": []}]},
            {},
            BadRequestError,
            "tool_calls",
        ),
        ({"assistantId": "coach", "input": "x", "stream": "yes"}, {}, BadRequestError, "stream"),
        ({"assistantId": "coach", "input": "x", "model": "gpt"}, {}, BadRequestError, "model"),
        ({"assistantId": "coach", "input": "x", "name": "n"}, {}, BadRequestError, "name"),
        (
            {"assistantId": "coach", "input": "x", "sessionEnd": True},
            {},
            BadRequestError,
            "sessionEnd",
        ),
        (
            {"assistantId": "coach", "input": "x", "previousChatId": 5},
            {},
            BadRequestError,
            "id string",
        ),
        (
            {"assistantId": "coach", "input": "x", "previousChatId": "a"},
            {"web": True},
            BadRequestError,
            "previousChatId",
        ),
        (
            {
                "assistantId": "coach",
                "input": "x",
                "assistantOverrides": {"variableValues": {"other": 1}},
            },
            {},
            BadRequestError,
            "other",
        ),
        ({"input": "x"}, {}, BadRequestError, "Name a profile"),
        ({"assistantId": "flow", "input": "x"}, {}, BadRequestError, "workflow"),
        ({"assistantId": "nope", "input": "x"}, {}, NotFoundError, "nope"),
        ({"assistantId": "staff", "input": "x"}, {}, ForbiddenError, "staff"),
    ],
)
def test_refusals(
    body: dict[str, Any], kwargs: dict[str, Any], error: type[ProxyError], fragment: str
) -> None:
    with pytest.raises(error) as caught:
        _plan(body, **kwargs)
    assert fragment in str(caught.value)
