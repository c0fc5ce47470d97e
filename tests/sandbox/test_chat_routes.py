"""Chat endpoints against API-FACTS §2.7: JSON replies, SSE framing, continuation, public keys."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.sandbox import ASSISTANT_ID, base_settings, private, public, wait_until
from vapi_proxy.sandbox import ManualClock, RunningSandbox, run_sandbox
from vapi_proxy.sandbox.settings import ChatSettings


def sse_events(text: str) -> list[dict[str, Any]]:
    """Split an SSE body into events: {"event": name or None, "data": raw data string}."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event: dict[str, Any] = {"event": None, "data": ""}
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                event["event"] = value
            elif field == "data":
                event["data"] += value
        events.append(event)
    return events


def test_chat_json(sim: RunningSandbox, client: httpx.Client) -> None:
    resp = client.post(
        sim.url + "/chat", json={"assistantId": ASSISTANT_ID, "input": "ping"}, headers=private(sim)
    )
    assert resp.status_code == 201
    chat = resp.json()
    assert chat["output"] == [{"role": "assistant", "content": "You said: ping"}]
    assert chat["assistantId"] == ASSISTANT_ID
    assert chat["messages"] == [{"role": "user", "content": "ping"}]
    assert chat["orgId"] == sim.settings.org_id


def test_chat_continues_with_previous_chat_id(sim: RunningSandbox, client: httpx.Client) -> None:
    first = client.post(
        sim.url + "/chat", json={"assistantId": ASSISTANT_ID, "input": "one"}, headers=private(sim)
    ).json()
    second = client.post(
        sim.url + "/chat",
        json={"previousChatId": first["id"], "input": "two"},
        headers=private(sim),
    ).json()
    assert second["assistantId"] == ASSISTANT_ID
    assert [m["content"] for m in second["messages"]] == ["one", "You said: one", "two"]
    got = client.get(f"{sim.url}/chat/{second['id']}", headers=private(sim)).json()
    assert got == second


def test_chat_message_array_input(sim: RunningSandbox, client: httpx.Client) -> None:
    body = {
        "assistantId": ASSISTANT_ID,
        "input": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    }
    chat = client.post(sim.url + "/chat", json=body, headers=private(sim)).json()
    assert chat["output"][0]["content"] == "You said: c"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"input": "x"}, 400),
        ({"assistantId": ASSISTANT_ID}, 400),
        ({"assistantId": ASSISTANT_ID, "input": "x", "sessionId": "s", "previousChatId": "p"}, 400),
        ({"previousChatId": "missing", "input": "x"}, 400),
        ({"assistantId": ASSISTANT_ID, "input": "x", "metadata": {}}, 400),
    ],
)
def test_chat_errors(
    sim: RunningSandbox, client: httpx.Client, body: dict[str, Any], status: int
) -> None:
    resp = client.post(sim.url + "/chat", json=body, headers=private(sim))
    assert resp.status_code == status
    assert resp.json()["statusCode"] == status


def test_chat_stream_framing(sim: RunningSandbox, client: httpx.Client) -> None:
    body = {"assistantId": ASSISTANT_ID, "input": "stream me please", "stream": True}
    resp = client.post(sim.url + "/chat", json=body, headers=private(sim))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1]["data"] == "[DONE]"
    chunks = [json.loads(e["data"]) for e in events[:-1]]
    assert len(chunks) > 1
    assert {c["path"] for c in chunks} == {"chat.output[0].content"}
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["delta"] for c in chunks) == "You said: stream me please"


def test_responses_stream_is_default_and_framed(sim: RunningSandbox, client: httpx.Client) -> None:
    body = {"assistantId": ASSISTANT_ID, "input": "hello"}
    resp = client.post(sim.url + "/chat/responses", json=body, headers=private(sim))
    events = sse_events(resp.text)
    kinds = [e["event"] for e in events]
    assert kinds[-2:] == ["response.output_text.done", "response.completed"]
    assert set(kinds[:-2]) == {"response.output_text.delta"}
    payloads = [json.loads(e["data"]) for e in events]
    assert all(p["type"] == e["event"] for p, e in zip(payloads, events, strict=True))
    assert "".join(p["delta"] for p in payloads[:-2]) == "You said: hello"
    assert payloads[-2]["text"] == "You said: hello"
    done = payloads[-1]["response"]
    assert done["object"] == "response"
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0] == {
        "type": "output_text",
        "text": "You said: hello",
        "annotations": [],
    }


def test_responses_non_stream(sim: RunningSandbox, client: httpx.Client) -> None:
    body = {"assistantId": ASSISTANT_ID, "input": "hey", "stream": False}
    resp = client.post(sim.url + "/chat/responses", json=body, headers=private(sim))
    assert resp.status_code == 201
    assert resp.json()["output"][0]["content"][0]["text"] == "You said: hey"


def test_web_chat_with_public_key(sim: RunningSandbox, client: httpx.Client) -> None:
    body = {"assistantId": ASSISTANT_ID, "input": "hi"}
    first = client.post(sim.url + "/chat/web", json=body, headers=public(sim))
    assert first.status_code == 201
    reply = first.json()
    assert set(reply) == {"id", "sessionId", "output"}
    again = client.post(
        sim.url + "/chat/web",
        json={"sessionId": reply["sessionId"], "input": "more"},
        headers=public(sim),
    )
    assert again.json()["sessionId"] == reply["sessionId"]
    streamed = client.post(sim.url + "/chat/web/responses", json=body, headers=public(sim))
    assert sse_events(streamed.text)[-1]["event"] == "response.completed"
    assert client.post(sim.url + "/chat", json=body, headers=public(sim)).status_code == 401


def test_web_chat_overrides_are_variable_values_only(
    sim: RunningSandbox, client: httpx.Client
) -> None:
    body = {
        "assistantId": ASSISTANT_ID,
        "input": "hi",
        "assistantOverrides": {"variableValues": {"a": 1}, "model": {}},
    }
    resp = client.post(sim.url + "/chat/web", json=body, headers=public(sim))
    assert resp.json()["message"] == ["assistantOverrides.property model should not exist"]


def test_list_chats_is_paginated(sim: RunningSandbox, client: httpx.Client) -> None:
    client.post(
        sim.url + "/chat", json={"assistantId": ASSISTANT_ID, "input": "x"}, headers=private(sim)
    )
    page = client.get(sim.url + "/chat", params={"limit": 1}, headers=private(sim)).json()
    assert len(page["results"]) == 1
    assert page["metadata"]["itemsPerPage"] == 1
    assert page["metadata"]["hasNextPage"] is (page["metadata"]["totalItems"] > 1)


def test_stream_events_are_spaced_by_the_configured_delay(client: httpx.Client) -> None:
    """On a manual clock: after each delta the simulator waits for exactly the configured
    delay on its clock, and the next delta comes only once the clock has moved that far."""
    clock = ManualClock(start=1_800_000_000.0)
    settings = base_settings(chat=ChatSettings(chunk_chars=4, stream_delay_seconds=0.1))
    with run_sandbox(settings, clock=clock) as sb:
        body = {"assistantId": ASSISTANT_ID, "input": "abcdefgh", "stream": True}
        events: list[str] = []
        with client.stream("POST", sb.url + "/chat", json=body, headers=private(sb)) as resp:
            lines = (line for line in resp.iter_lines() if line.startswith("data: "))
            events.append(next(lines))
            # "You said: abcdefgh" in 4-char deltas = 5, plus [DONE]: four pauses between the
            # deltas and one before [DONE].
            for _ in range(5):
                due = clock.now() + 0.1
                # Raises if the simulator never waits for exactly that (10 s: a hang guard).
                wait_until(lambda due=due: clock.pending() == [pytest.approx(due)], timeout=10)
                clock.advance(0.1)
                events.append(next(lines))
            assert next(lines, None) is None
    assert events[-1] == "data: [DONE]"
    deltas = [json.loads(e[6:])["delta"] for e in events[:-1]]
    assert deltas == ["You ", "said", ": ab", "cdef", "gh"]


def test_chat_store_is_bounded(client: httpx.Client) -> None:
    with run_sandbox(base_settings(max_chats=2)) as sb:
        ids = [
            client.post(
                sb.url + "/chat/web",
                json={"assistantId": ASSISTANT_ID, "input": "x"},
                headers=public(sb),
            ).json()["id"]
            for _ in range(3)
        ]
        first = client.get(f"{sb.url}/chat/{ids[0]}", headers=private(sb))
        assert first.status_code == 404
        assert (len(sb.state.chats), len(sb.state.sessions)) == (2, 2)


def test_responses_stream_events_are_the_specs_in_its_order(
    sim: RunningSandbox, client: httpx.Client
) -> None:
    """Vapi's spec (`ResponseTextDeltaEvent`, `ResponseTextDoneEvent`,
    `ResponseCompletedEvent`): no `response.created`, and the chat id only in the last event."""
    body = {"assistantId": ASSISTANT_ID, "input": "a longer reply to split"}
    resp = client.post(sim.url + "/chat/responses", json=body, headers=private(sim))
    payloads = [json.loads(e["data"]) for e in sse_events(resp.text)]
    delta_keys = {"type", "item_id", "output_index", "content_index", "delta"}
    assert all(set(p) == delta_keys for p in payloads[:-2])
    assert set(payloads[-2]) == {"type", "item_id", "output_index", "content_index", "text"}
    assert set(payloads[-1]) == {"type", "response"}
    response = payloads[-1]["response"]
    assert set(response) == {"id", "object", "created_at", "status", "error", "output"}
    chat_id = response["id"]
    assert all(chat_id not in json.dumps(p) for p in payloads[:-1])
    assert {p["item_id"] for p in payloads[:-1]} == {response["output"][0]["id"]}


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/chat", "page=%C2%B2"),
        ("/chat", "page=0"),
        ("/chat", "page=" + "9" * 5000),
        ("/chat", "limit=inf"),
        ("/call", "limit=1e400"),
    ],
)
def test_bad_list_queries_are_400_not_500(
    sim: RunningSandbox, client: httpx.Client, path: str, query: str
) -> None:
    resp = client.get(f"{sim.url}{path}?{query}", headers=private(sim))
    assert resp.status_code == 400, resp.text
    assert resp.json()["statusCode"] == 400
