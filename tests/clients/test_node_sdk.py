"""The official npm `@vapi-ai/server-sdk` 2.0.1 pointed at the proxy with an app API key.

`new VapiClient({token: <app API key>, baseUrl: <proxy>})` runs in node (tests/clients/node,
installed by scripts/clients-setup). Each test asserts both sides: what the simulator received
(the private key, the profile's body) and what the SDK got back (scrubbed).
"""

from __future__ import annotations

import json

from tests.support.clients import (
    PHONE_ID,
    clear_requests,
    upstream_requests,
)
from tests.support.node import run_node, sandbox_calls
from tests.support.proxy import SAVED_ASSISTANT_ID
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread

PRIVATE_KEY_SEEN = "Bearer [redacted: private-key]"
# Fields of Vapi's Call (as the simulator holds it) the proxy keeps on the server (docs/api.md,
# `POST /call`): monitor URLs, the org, the real assistant and its overrides (server variables,
# the proxy's metadata), the carrier's ids.
SERVER_ONLY = (
    "monitor",
    "orgId",
    "assistantId",
    "assistantOverrides",
    "phoneCallProvider",
    "phoneCallProviderId",
)


def test_calls_create_get_and_list(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    clear_requests(sandbox)
    number = "+14155550191"
    create = {"assistantId": "outbound", "customer": {"number": number, "name": "Ada"}}
    created, got, listed = run_node(
        phone_proxy.url,
        user_key,
        [
            {"op": "calls.create", "args": create},
            {"op": "calls.get", "args": {"id": "$call"}},
            {"op": "calls.list", "args": {}},
        ],
    )

    # What Vapi received: the private key and the profile's body, not the client's.
    sent = [e for e in upstream_requests(sandbox, "/call") if e["method"] == "POST"]
    assert len(sent) == 1
    assert sent[0]["headers"]["authorization"] == PRIVATE_KEY_SEEN
    body = sent[0]["body"]
    assert body["assistantId"] == SAVED_ASSISTANT_ID and body["phoneNumberId"] == PHONE_ID
    assert body["customer"] == {"number": number, "name": "Ada"}
    assert body["assistantOverrides"]["variableValues"]["caller"] == "alice"
    assert len(sandbox_calls(sandbox, number)) == 1

    # What the SDK got: the call, scrubbed.
    assert created["ok"], created
    call = created["value"]
    assert call["type"] == "outboundPhoneCall" and call["customer"]["number"] == number
    assert call["phoneNumberId"] == PHONE_ID
    assert not set(SERVER_ONLY) & set(call), call
    assert SAVED_ASSISTANT_ID not in json.dumps(call)
    assert got["ok"] and got["value"]["id"] == call["id"]
    assert not set(SERVER_ONLY) & set(got["value"])
    reads = [e for e in upstream_requests(sandbox, "/call/") if e["method"] == "GET"]
    assert [e["headers"]["authorization"] for e in reads] == [PRIVATE_KEY_SEEN]
    assert listed["ok"]
    ids = [c["id"] for c in listed["value"]]
    assert call["id"] in ids
    mine = next(c for c in listed["value"] if c["id"] == call["id"])
    assert mine["assistantId"] == "outbound" and mine["type"] == "outboundPhoneCall"


def test_refusals_reach_the_sdk_as_errors(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str, other_key: str
) -> None:
    clear_requests(sandbox)
    refused, unknown = run_node(
        phone_proxy.url,
        user_key,
        [
            {
                "op": "calls.create",
                "args": {"assistantId": "outbound", "customer": {"number": "+33612345678"}},
            },
            {"op": "calls.get", "args": {"id": "00000000-0000-4000-8000-000000000000"}},
        ],
    )
    assert not refused["ok"] and refused["status"] == 403
    assert not unknown["ok"] and unknown["status"] == 404
    assert unknown["body"]["message"] == "Call not found."
    assert upstream_requests(sandbox, "/call") == []


def test_chats_create(phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str) -> None:
    clear_requests(sandbox)
    (chat,) = run_node(
        phone_proxy.url,
        user_key,
        [{"op": "chats.create", "args": {"assistantId": "sales-coach", "input": "hello node"}}],
    )
    assert chat["ok"], chat
    assert chat["value"]["output"][0]["content"] == "You said: hello node"
    (sent,) = upstream_requests(sandbox, "/chat")
    assert sent["headers"]["authorization"] == PRIVATE_KEY_SEEN
    assert sent["body"]["assistantId"] == SAVED_ASSISTANT_ID
    assert sent["body"]["input"] == "hello node"
    assert sent["body"]["assistantOverrides"]["variableValues"]["plan"] == "pro"


def test_fetch_passthrough_starts_a_web_call(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    clear_requests(sandbox)
    (web,) = run_node(
        phone_proxy.url,
        user_key,
        [{"op": "fetch", "args": {"path": "/call/web", "body": {"assistantId": "sales-coach"}}}],
    )
    assert web["ok"] and web["status"] == 201, web
    assert web["body"]["webCallUrl"] and web["body"]["type"] == "webCall"
    assert not set(SERVER_ONLY) & set(web["body"]), web
    (sent,) = upstream_requests(sandbox, "/call/web")
    assert sent["headers"]["authorization"] == PRIVATE_KEY_SEEN
    assert sent["body"]["assistantId"] == SAVED_ASSISTANT_ID
