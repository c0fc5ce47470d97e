"""The relay's id watcher: ids found wherever the chunk boundaries fall, in both SSE formats."""

from __future__ import annotations

import orjson
import pytest

from vapi_proxy.errors import UpstreamError
from vapi_proxy.routes.relay import IdWatcher, error_event

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
