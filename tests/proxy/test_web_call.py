"""`POST /call/web` through a real proxy in front of the real simulator, over loopback HTTP.

Each body form the Web SDK sends (WEB-SDK.md) must reach Vapi as the profile's body, with the
private key, and the reply must come back scrubbed to what the SDK reads.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.http import post, upstream_bodies
from tests.support.proxy import SAVED_ASSISTANT_ID, ProxyFactory
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread


@pytest.fixture(autouse=True)
def _clear_log(sandbox: RunningSandbox) -> None:
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)


def last_upstream(sandbox: RunningSandbox) -> dict[str, Any]:
    bodies = upstream_bodies(sandbox)
    assert bodies, "the simulator received no /call/web request"
    return bodies[-1]


def test_start_with_a_string_maps_to_the_saved_assistant(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    reply = post(proxy, {"assistantId": "sales-coach"}, user_key)
    assert reply.status_code == 201, reply.text
    call = reply.json()
    assert call["webCallUrl"].startswith("https://vapi.daily.co/")
    assert set(call) <= {
        "id",
        "webCallUrl",
        "transport",
        "artifactPlan",
        "assistant",
        "status",
        "type",
        "createdAt",
    }
    assert "monitor" not in call and "orgId" not in call
    assert set(call.get("transport", {})) <= {"callToken"}

    received = last_upstream(sandbox)
    body = received["body"]
    assert body["assistantId"] == SAVED_ASSISTANT_ID
    overrides = body["assistantOverrides"]
    assert overrides["maxDurationSeconds"] == 600
    assert overrides["variableValues"] == {"plan": "pro", "caller": "alice"}
    assert overrides["metadata"]["vapiProxy"]["profile"] == "sales-coach"
    # The simulator redacts the bearer it received; it only shows it was the private key.
    assert received["headers"]["authorization"] != f"Bearer {user_key}"
    assert user_key not in str(received)


def test_object_form_with_variables_in_the_assistant_object(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    body = {"assistant": {"assistantType": "sales-coach", "firstName": "Ann", "userId": "u1"}}
    reply = post(proxy, body, user_key)
    assert reply.status_code == 201, reply.text
    sent = last_upstream(sandbox)["body"]
    assert "assistant" not in sent
    assert sent["assistantOverrides"]["variableValues"] == {
        "firstName": "Ann",
        "plan": "pro",
        "caller": "alice",
    }
    assert "userId" not in str(sent) and "assistantType" not in str(sent)


def test_variables_in_assistant_overrides(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    body = {
        "assistantId": "sales-coach",
        "assistantOverrides": {"variableValues": {"firstName": "Jo", "language": "de"}},
    }
    reply = post(proxy, body, user_key)
    assert reply.status_code == 201, reply.text
    values = last_upstream(sandbox)["body"]["assistantOverrides"]["variableValues"]
    assert values["firstName"] == "Jo" and values["language"] == "de"


def test_top_level_assistant_type_as_in_vapis_guide(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    reply = post(proxy, {"assistantType": "sales-coach", "userId": "u1"}, user_key)
    assert reply.status_code == 201, reply.text


def test_transient_assistant_profile_enforces_the_smaller_cap(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    reply = post(proxy, {"assistant": {"profile": "support"}}, user_key)
    assert reply.status_code == 201, reply.text
    sent = last_upstream(sandbox)["body"]
    assert sent["assistant"]["model"]["provider"] == "openai"
    # The profile allows 900 s but the transient assistant itself says 300: the least wins.
    assert sent["assistant"]["maxDurationSeconds"] == 300
    assert sent["assistantOverrides"]["maxDurationSeconds"] == 300
    assert "SECRET-PROMPT" not in reply.text


@pytest.mark.parametrize(
    ("body", "target_key", "overrides_key"),
    [
        (
            {"assistant": None, "assistantOverrides": None, "squadId": "team"},
            "squad",
            "squadOverrides",
        ),
        ({"squad": {"assistantType": "team"}}, "squad", "squadOverrides"),
        ({"workflowId": "flow"}, "workflow", "workflowOverrides"),
        ({"workflow": {"assistantType": "flow"}, "workflowOverrides": {}}, "workflow", None),
    ],
)
def test_squad_and_workflow_forms(
    proxy: ServerThread,
    sandbox: RunningSandbox,
    user_key: str,
    body: dict[str, Any],
    target_key: str,
    overrides_key: str | None,
) -> None:
    reply = post(proxy, body, user_key)
    assert reply.status_code == 201, reply.text
    sent = last_upstream(sandbox)["body"]
    assert target_key in sent
    if overrides_key == "squadOverrides":
        assert sent["squadOverrides"]["maxDurationSeconds"] == 600
    if target_key == "workflow":
        assert sent["workflow"]["maxDurationSeconds"] == 600
        assert "assistantOverrides" not in sent


@pytest.mark.parametrize("path", ["//call/web", "/api/vapi/call/web", "/api/vapi//call/web"])
def test_prefix_and_double_slash_paths(make_proxy: ProxyFactory, user_key: str, path: str) -> None:
    server = make_proxy(lambda c: c.update(server={"path_prefix": "/api/vapi"}))
    reply = post(server, {"assistantId": "sales-coach"}, user_key, path=path)
    assert reply.status_code == 201, reply.text


@pytest.mark.parametrize(
    "field",
    [
        "server",
        "serverUrl",
        "model",
        "credentials",
        "credentialIds",
        "tools",
        "hooks",
        "monitorPlan",
        "maxDurationSeconds",
        "firstMessage",
        "voice",
        "serverMessages",
        "tools:append",
    ],
)
def test_dangerous_override_fields_are_refused_by_name(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str, field: str
) -> None:
    body = {"assistantId": "sales-coach", "assistantOverrides": {field: {"url": "https://x"}}}
    reply = post(proxy, body, user_key)
    assert reply.status_code == 400
    error = reply.json()
    assert f"assistantOverrides.{field}" in str(error["message"])
    assert error["error"] == "Bad Request" and error["statusCode"] == 400
    assert error["requestId"] == reply.headers["x-request-id"]
    assert upstream_bodies(sandbox) == []


@pytest.mark.parametrize("field", ["model", "server", "firstMessage", "voice", "tools"])
def test_transient_assistant_content_is_refused(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str, field: str
) -> None:
    body = {"assistant": {"assistantType": "sales-coach", field: {"provider": "evil"}}}
    reply = post(proxy, body, user_key)
    assert reply.status_code == 400
    assert f"assistant.{field}" in str(reply.json()["message"])
    assert upstream_bodies(sandbox) == []


def test_a_transient_assistant_without_a_profile_name_is_refused(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    body = {"assistant": {"model": {"provider": "openai"}, "firstMessage": "hi"}}
    reply = post(proxy, body, user_key)
    assert reply.status_code == 400
    assert "Name a profile" in reply.json()["message"]
    assert upstream_bodies(sandbox) == []


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"assistantId": "nope"}, 404, "Unknown profile 'nope'"),
        ({"assistantId": "sales-coach", "squadId": "team"}, 400, "more than one profile"),
        ({"assistantId": "sales-coach", "customer": {"number": "+1"}}, 400, "'customer'"),
        (
            {"assistantId": "sales-coach", "roomDeleteOnUserLeaveEnabled": False},
            400,
            "roomDeleteOnUserLeaveEnabled",
        ),
        ({"assistantId": 7}, 400, "must be a string"),
        ([1, 2], 400, "JSON object"),
        (
            {
                "assistantId": "sales-coach",
                "assistantOverrides": {"variableValues": {"firstName": "x" * 41}},
            },
            400,
            "longer than 40",
        ),
        (
            {
                "assistantId": "sales-coach",
                "assistantOverrides": {"variableValues": {"language": "es"}},
            },
            400,
            "one of: en",
        ),
        (
            {
                "assistantId": "sales-coach",
                "assistantOverrides": {"variableValues": {"firstName": 5}},
            },
            400,
            "must be a string",
        ),
        (
            {
                "assistantId": "sales-coach",
                "assistantOverrides": {"variableValues": {"plan": "enterprise"}},
            },
            400,
            "variableValues.plan",
        ),
    ],
)
def test_refusals(
    proxy: ServerThread,
    sandbox: RunningSandbox,
    user_key: str,
    body: Any,
    status: int,
    fragment: str,
) -> None:
    reply = post(proxy, body, user_key)
    assert reply.status_code == status, reply.text
    assert fragment in str(reply.json()["message"])
    assert upstream_bodies(sandbox) == []


def test_reconnect_flag_passes_where_the_profile_allows_it(
    proxy: ServerThread, sandbox: RunningSandbox
) -> None:
    reply = post(proxy, {"assistantId": "demo", "roomDeleteOnUserLeaveEnabled": False}, None)
    assert reply.status_code == 201, reply.text
    assert last_upstream(sandbox)["body"]["roomDeleteOnUserLeaveEnabled"] is False
    # This profile exposes the listen URL on purpose; the control URL stays hidden.
    call = reply.json()
    assert call["monitor"]["listenUrl"].startswith("wss://")
    assert "controlUrl" not in call["monitor"]


def test_anonymous_callers_only_where_the_profile_opts_in(
    proxy: ServerThread, sandbox: RunningSandbox
) -> None:
    refused = post(proxy, {"assistantId": "sales-coach"}, None)
    # Not signed in where a profile needs it: 401 with a challenge, so the app can log in.
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer ")
    assert "sales-coach" in refused.json()["message"]
    assert upstream_bodies(sandbox) == []
    assert post(proxy, {"assistantId": "demo"}, None).status_code == 201


def test_an_api_key_limited_to_some_profiles(
    proxy: ServerThread, sandbox: RunningSandbox, other_key: str
) -> None:
    assert post(proxy, {"assistantId": "sales-coach"}, other_key).status_code == 403
    assert post(proxy, {"assistantId": "support"}, other_key).status_code == 201


def test_a_wrong_token_is_401_with_a_challenge(
    proxy: ServerThread, sandbox: RunningSandbox
) -> None:
    reply = post(proxy, {"assistantId": "demo"}, "not-a-real-key-0123456789abcdef")
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith("Bearer ")
    assert "not-a-real-key" not in reply.text
    assert upstream_bodies(sandbox) == []


def test_the_clients_authorization_never_reaches_vapi(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    reply = post(
        proxy,
        {"assistantId": "sales-coach"},
        user_key,
        headers={
            "Cookie": "session=abc",
            "X-Forwarded-Host": "evil.example",
            "Connection": "close",
        },
    )
    assert reply.status_code == 201
    received = last_upstream(sandbox)
    headers = {k.lower() for k in received["headers"]}
    assert "cookie" not in headers and "x-forwarded-host" not in headers
    assert user_key not in str(received)
