"""The relay: ids found wherever the chunk boundaries fall, in both SSE formats; every JSON
event cut down to the profile's allowlist, each sent as soon as it is whole; chat replies by
allowlist."""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message

from vapi_proxy.errors import UpstreamError
from vapi_proxy.policy.reply import (
    CHAT_EVENT_FIELDS,
    RESPONSE_EVENT_FIELDS,
    RESPONSE_WHOLE,
    ChatView,
)
from vapi_proxy.routes.chat import EventFilter
from vapi_proxy.routes.relay import (
    IdWatcher,
    SseEvents,
    SseFormat,
    SseRelay,
    error_event,
    rewrite,
)

CHAT = (
    b'data: {"id":"c1","path":"chat.output[0].content","delta":"Hel","sessionId":"s1"}\n\n'
    b'data: {"id":"c1","path":"chat.output[0].content","delta":"lo"}\n\n'
    b"data: [DONE]\n\n"
)
RESPONSES = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"item_id":"msg_r1","output_index":0,"content_index":0,"delta":"Hi"}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed",'
    b'"response":{"id":"r1","object":"response","status":"completed"}}\n\n'
)


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
@pytest.mark.parametrize(
    ("stream", "chat_id", "session_id"), [(CHAT, "c1", "s1"), (RESPONSES, "r1", None)]
)
def test_ids_are_found_across_any_chunking(
    stream: bytes, chat_id: str, session_id: str | None, size: int
) -> None:
    watcher = IdWatcher()
    found = [watcher.feed(stream[i : i + size]) for i in range(0, len(stream), size)]
    assert found.count(True) == 1  # reported once, then the stream is no longer parsed
    assert (watcher.chat_id, watcher.session_id) == (chat_id, session_id)


def test_crlf_framing_and_garbage_are_tolerated() -> None:
    watcher = IdWatcher()
    assert not watcher.feed(b'data: {"id": oops}\r\n\r\n: comment\r\n\r\n')
    assert watcher.feed(b'data: {"id":"c2","delta":"x"}\r\n\r\n')
    assert watcher.chat_id == "c2"


def test_error_events_in_each_format() -> None:
    error = UpstreamError("Vapi stopped sending the reply (timed out).", status_code=504)
    chat = error_event("chat", error, "req-1", 3)
    assert chat.startswith(b"data: ") and chat.endswith(b"\n\n")
    assert orjson.loads(chat[6:])["error"] == {
        "message": "Vapi stopped sending the reply (timed out).",
        "error": "Gateway Timeout",
        "statusCode": 504,
        "requestId": "req-1",
    }
    responses = error_event("responses", error, "req-1", 3)
    head, data = responses.split(b"\n", 1)
    assert head == b"event: error"
    payload = orjson.loads(data.removeprefix(b"data: "))
    assert payload["type"] == "error" and payload["code"] == "upstream_timeout"
    assert payload["sequence_number"] == 3


# --- every JSON event through the profile's allowlist (issue 13, point 7) -------------------

VIEW = ChatView("coach", expose=("cost",))


async def _relay(chunks: list[bytes], fmt: SseFormat) -> list[bytes]:
    """The bodies the relay sends, one per ASGI message, for these upstream chunks."""

    async def upstream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    sent: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            sent.append(message["body"])

    async def nothing(*_: Any) -> None:
        return None

    relay = SseRelay(
        upstream(),
        fmt=fmt,
        request_id="rq",
        on_id=nothing,
        finish=nothing,
        transform=functools.partial(VIEW.event, responses=fmt == "responses"),
    )
    await relay.run(send)
    return sent


def _payloads(bodies: list[bytes]) -> list[Any]:
    lines = b"".join(bodies).decode().splitlines()
    return [
        line[6:] if line == "data: [DONE]" else orjson.loads(line[6:])
        for line in lines
        if line.startswith("data: ")
    ]


async def test_chat_events_keep_only_known_fields_and_done_passes() -> None:
    chunks = [
        b'data: {"id":"c1","path":"chat.output[0].content","delta":"Hi",'
        b'"sessionId":"s1","assistantId":"asst-secret","orgId":"org-1","cost":0.01}\n\n',
        b"data: [DONE]\n\n",
    ]
    first, done = _payloads(await _relay(chunks, "chat"))
    assert first == {
        "id": "c1",
        "path": "chat.output[0].content",
        "delta": "Hi",
        "sessionId": "s1",
        "cost": 0.01,  # the profile exposes it
    }
    assert done == "[DONE]"


async def test_responses_events_keep_only_known_fields() -> None:
    completed = {
        "type": "response.completed",
        "sequence_number": 3,
        "brand_new": {"leak": True},
        "response": {
            "id": "r1",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "error": None,
            "assistantId": "asst-secret",
            "instructions": "the system prompt",
            "output": [
                {"role": "system", "type": "message", "content": [{"text": "prompt"}]},
                {
                    "id": "m1",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "metadata": {"x": 1},
                    "content": [{"type": "output_text", "text": "Hi", "annotations": [], "z": 1}],
                },
            ],
        },
    }
    chunks = [
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","item_id":"m1","output_index":0,'
        b'"content_index":0,"delta":"Hi","obfuscation":"x"}\n\n',
        b"event: response.completed\ndata: " + orjson.dumps(completed) + b"\n\n",
    ]
    delta, done = _payloads(await _relay(chunks, "responses"))
    assert delta == {
        "type": "response.output_text.delta",
        "item_id": "m1",
        "output_index": 0,
        "content_index": 0,
        "delta": "Hi",
    }
    assert done == {
        "type": "response.completed",
        "sequence_number": 3,
        "response": {
            "id": "r1",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "error": None,
            "output": [
                {
                    "id": "m1",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
                }
            ],
        },
    }
    assert b"event: response.completed\n" in b"".join(await _relay(chunks, "responses"))


async def test_events_are_sent_as_soon_as_whole_and_never_held_longer() -> None:
    one = b'data: {"id":"c1","path":"p","delta":"a"}\n\n'
    two = b'data: {"id":"c1","path":"p","delta":"b"}\r\n\r\n'
    # An event split over three chunks goes out with its last byte; two events that arrive
    # in one chunk go out together; an unframed tail at the end is still delivered.
    bodies = await _relay([one[:5], one[5:20], one[20:] + two, b"data: [DONE]"], "chat")
    assert [len(_payloads([b])) for b in bodies] == [2, 1]
    assert bodies[-1] == b"data: [DONE]\n\n"


def test_non_json_and_non_object_events() -> None:
    transform = functools.partial(VIEW.event, responses=False)
    assert rewrite(b": keep-alive", transform) == (b": keep-alive\n\n", None)
    assert rewrite(b"data: [DONE]", transform) == (b"data: [DONE]\n\n", None)
    assert rewrite(b'data: ["not", "an", "object"]', transform) == (b"", None)
    multi = b'id: 7\ndata: {"id":"c1",\ndata: "delta":"x","extra":1}'
    data, payload = rewrite(multi, transform)
    assert data == b'id: 7\ndata: {"id":"c1","delta":"x"}\n\n'
    assert payload == {"id": "c1", "delta": "x", "extra": 1}


def test_chat_replies_by_allowlist() -> None:
    reply = {
        "id": "c1",
        "orgId": "org-1",
        "assistantId": "asst-secret",
        "assistantOverrides": {"variableValues": {"plan": "pro"}},
        "sessionId": "s1",
        "messages": [
            {"role": "system", "content": "the prompt"},
            {"role": "user", "content": "hi", "metadata": {"a": 1}},
            {"role": "tool", "content": "db rows"},
        ],
        "output": [{"role": "assistant", "content": "hello", "toolCalls": [{"x": 1}]}],
        "costs": [{"type": "model", "cost": 0.01}],
        "cost": 0.01,
        "newField": "something Vapi adds later",
        "createdAt": "t",
        "updatedAt": "t",
    }
    assert ChatView("coach").reply(reply, responses=False) == {
        "id": "c1",
        "assistantId": "coach",
        "sessionId": "s1",
        "messages": [{"role": "user", "content": "hi"}],
        "output": [{"role": "assistant", "content": "hello"}],
        "createdAt": "t",
        "updatedAt": "t",
    }
    exposed = ChatView("coach", expose=("costs", "cost")).reply(reply, responses=False)
    assert exposed["cost"] == 0.01 and exposed["costs"] == reply["costs"]
    web = {"id": "c2", "sessionId": "s2", "output": [{"role": "assistant", "content": "x"}]}
    assert ChatView("coach").reply(web, responses=False) == web


@pytest.mark.parametrize("fmt", ["chat", "responses"])
def test_an_error_vapi_reports_mid_stream_reaches_the_client_without_its_text(
    fmt: SseFormat, caplog: pytest.LogCaptureFixture
) -> None:
    leak = "custom LLM https://llm.internal.example/v1 refused model gpt-secret"
    if fmt == "responses":
        payload: dict[str, Any] = {
            "type": "error",
            "code": "ERR_MODEL",
            "message": leak,
            "param": "assistant.model",
            "sequence_number": 4,
        }
    else:
        payload = {"error": {"message": leak, "statusCode": 500}}
    transform = EventFilter(ChatView("coach"), fmt, "rq-7")
    with caplog.at_level("WARNING", logger="vapi_proxy.chat"):
        shown = transform(payload)
    assert "llm.internal" not in orjson.dumps(shown).decode()
    # The operator sees Vapi's own words in the log.
    assert any("llm.internal" in str(getattr(r, "fields", "")) for r in caplog.records)
    if fmt == "responses":
        assert shown["type"] == "error" and shown["code"] == "upstream_error"
        assert shown["sequence_number"] == 4 and shown["param"] is None
    else:
        assert shown["error"]["statusCode"] == 502 and shown["error"]["requestId"] == "rq-7"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_known = st.sampled_from(
    ["id", "type", "delta", "text", "response", "output", "content", "role", "item_id", "x"]
)
_payloads_st = st.dictionaries(_known | st.text(max_size=8), _json_values, max_size=6)


def _paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path in a JSON value, list items written `[]`."""
    if isinstance(value, dict):
        out = set()
        for key, child in value.items():
            path = f"{prefix}.{key}" if prefix else key
            out |= {path} | _paths(child, path)
        return out
    if isinstance(value, list):
        return set().union(*(_paths(item, f"{prefix}[]") for item in value)) if value else set()
    return set()


def _allowed(path: str, scalars: tuple[str, ...], whole: tuple[str, ...]) -> bool:
    """`path` is on the way to, or is, an allowed leaf; only `whole` leaves have insides."""
    on_the_way = any(a.startswith((path + ".", path + "[]")) for a in (*scalars, *whole))
    inside_whole = any(path.startswith((w + ".", w + "[]")) for w in whole)
    return path in scalars or path in whole or on_the_way or inside_whole


@given(payload=_payloads_st, responses=st.booleans())
def test_no_event_ever_carries_a_path_off_the_allowlist(
    payload: dict[str, Any], responses: bool
) -> None:
    scalars = RESPONSE_EVENT_FIELDS if responses else CHAT_EVENT_FIELDS
    whole = tuple(f"response.{p}" for p in RESPONSE_WHOLE) if responses else ()
    shown = ChatView("coach").event(payload, responses=responses)
    assert all(_allowed(path, scalars, whole) for path in _paths(shown)), shown
    for key in ("id", "delta", "type"):  # what is allowed and plain passes unchanged
        if key in shown and not isinstance(payload[key], (dict, list)):
            assert shown[key] == payload[key]


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(CHAT + RESPONSES)), max_size=8))
def test_splitting_a_stream_anywhere_gives_the_same_events(cuts: list[int]) -> None:
    stream = CHAT.replace(b"\n", b"\r\n") + RESPONSES
    bounds = [0, *sorted(set(cuts)), len(stream)]
    splitter = SseEvents()
    events = []
    for start, end in itertools.pairwise(bounds):
        events += splitter.feed(stream[start:end])
    whole = SseEvents().feed(stream)
    assert events == whole and len(whole) == 5
