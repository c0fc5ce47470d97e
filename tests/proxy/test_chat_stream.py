"""Streaming through the proxy, measured at both ends: events arrive as the simulator sends
them, a client that leaves closes the upstream stream, a stalled upstream ends the stream with
an error event the client understands."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from tests.support.clients import (
    HTTP,
    ObservedSandbox,
    bearer,
    observed_sandbox,
    proxy_for,
    wait_for,
    wait_until,
)
from vapi_proxy.ledger.schema import calls
from vapi_proxy.testing import ServerThread

DELAY = 0.05  # the simulator's pause between deltas
# How long a test waits for something before it fails instead of hanging: a test timeout,
# never a speed claim, and shorter than the simulator's 30 s stalls it is judged against.
HANG_GUARD = 20.0


@pytest.fixture(scope="module")
def slow() -> Iterator[ObservedSandbox]:
    with observed_sandbox(delay=DELAY) as running:
        yield running


@pytest.fixture(scope="module")
def stream_proxy(
    slow: ObservedSandbox, user_key: str, other_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    def patch(config: dict[str, Any]) -> None:
        config["vapi"]["stream_idle_timeout_seconds"] = 0.5

    folder = str(tmp_path_factory.mktemp("stream"))
    with proxy_for(slow.sandbox, user_key, other_key, folder, patch) as proxy:
        yield proxy


def _fault(slow: ObservedSandbox, **spec: Any) -> None:
    reply = HTTP.post(f"{slow.sandbox.url}/__sandbox/faults", json={"count": 1, **spec})
    assert reply.status_code == 201, reply.text


@pytest.fixture(scope="module")
def patient_proxy(
    slow: ObservedSandbox, user_key: str, other_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """A proxy with the default 30 s idle timeout: within a test, only Vapi or the client end
    its streams."""
    folder = str(tmp_path_factory.mktemp("patient-stream"))
    with proxy_for(slow.sandbox, user_key, other_key, folder) as proxy:
        yield proxy


def _events(url: str, key: str, body: dict[str, Any]) -> list[bytes]:
    """POST and read the whole SSE reply; its `data:` lines."""
    with HTTP.stream("POST", url, json=body, headers=bearer(key)) as reply:
        assert reply.status_code == 200, reply.read()
        return [line.encode() for line in reply.iter_lines() if line.startswith("data:")]


@pytest.mark.parametrize("sent", [1, 3])
@pytest.mark.parametrize("path", ["/chat", "/chat/responses"])
async def test_each_event_reaches_the_client_while_vapi_is_still_sending(
    slow: ObservedSandbox, patient_proxy: ServerThread, user_key: str, path: str, sent: int
) -> None:
    """Vapi sends `sent` events and then holds its stream open (30 s): the client has every
    one of them while Vapi's stream is still open, so the proxy passed each on as it came
    instead of gathering the reply. How soon is the benchmark's job (bench/stream_bench.py)."""
    _fault(slow, path=path, action="stall-stream", after_events=sent, stall_seconds=30)
    before = _upstream_chat_keys(slow)
    text = "x" * 40  # "You said: " + 40 chars = 7 deltas of 8
    got: list[str] = []
    # The client's read timeout is a hang guard (a proxy that gathers the reply would hold
    # these events until the stall ends), below the stall so such a proxy fails here.
    async with (
        httpx.AsyncClient(timeout=HANG_GUARD) as client,
        client.stream(
            "POST",
            patient_proxy.url + path,
            json={"assistantId": "sales-coach", "input": text, "stream": True},
            headers=bearer(user_key),
        ) as reply,
    ):
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                got.append(line)
                if len(got) == sent:
                    break
        (key,) = _upstream_chat_keys(slow) - before
        # Vapi has not finished (or been cut off): these events came through while it sends.
        assert key not in slow.log.finished
        assert key not in slow.log.disconnected
    payloads = [orjson.loads(line[5:]) for line in got]
    # In the order sent, unchanged: the first deltas of the reply.
    assert "".join(p["delta"] for p in payloads) == ("You said: " + text)[: 8 * sent]


def test_a_whole_stream_arrives_in_order(
    slow: ObservedSandbox, stream_proxy: ServerThread, user_key: str
) -> None:
    text = "x" * 40
    events = _events(
        f"{stream_proxy.url}/chat",
        user_key,
        {"assistantId": "sales-coach", "input": text, "stream": True},
    )
    assert events[-1] == b"data: [DONE]"
    deltas = [orjson.loads(line[5:])["delta"] for line in events[:-1]]
    assert len(deltas) == 7
    assert "".join(deltas) == "You said: " + text


def _upstream_chat_keys(slow: ObservedSandbox) -> set[str]:
    return {key for key in slow.log.started if key.endswith(":/chat") or "/chat/" in key}


async def test_a_client_leaving_mid_stream_closes_the_upstream_stream(
    slow: ObservedSandbox, patient_proxy: ServerThread, user_key: str
) -> None:
    # The patient proxy's idle timeout (30 s) cannot end this stream within the test: only
    # the client's leaving can.
    _fault(slow, path="/chat", action="stall-stream", after_events=1, stall_seconds=60)
    before = _upstream_chat_keys(slow)
    async with (
        httpx.AsyncClient(timeout=HANG_GUARD) as client,
        client.stream(
            "POST",
            f"{patient_proxy.url}/chat",
            json={"assistantId": "sales-coach", "input": "leave early", "stream": True},
            headers=bearer(user_key),
        ) as reply,
    ):
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                break  # one event seen; the client goes away
    (key,) = _upstream_chat_keys(slow) - before
    assert await wait_for(lambda: key in slow.log.finished, timeout=HANG_GUARD)
    # Neither the simulator's stall (60 s) nor the proxy's idle timeout (30 s) has run out:
    # the proxy closed Vapi's stream because the client left (a disconnect the simulator saw).
    assert key in slow.log.disconnected


async def test_a_client_leaving_before_vapi_answers_closes_the_upstream_request(
    slow: ObservedSandbox, patient_proxy: ServerThread, user_key: str
) -> None:
    # The simulator takes 60 s before answering at all (no headers yet), and the patient
    # proxy's idle timeout is 30 s: only the client's leaving can end this within the test.
    _fault(slow, path="/chat", action="none", latency_seconds=60)
    before = _upstream_chat_keys(slow)
    async with httpx.AsyncClient(timeout=HANG_GUARD) as client:
        asking = asyncio.create_task(
            client.post(
                f"{patient_proxy.url}/chat",
                json={"assistantId": "sales-coach", "input": "too slow", "stream": True},
                headers=bearer(user_key),
            )
        )
        # The client gives up once the proxy has asked the simulator (not after a guessed
        # delay, which a busy machine could outlast before the proxy even asked).
        assert await wait_for(
            lambda: len(_upstream_chat_keys(slow) - before) == 1, timeout=HANG_GUARD
        )
        (waiting,) = _unanswered_chats(slow)  # the simulator's side of that request
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
    # The client's connection closed; the proxy closed the connection of its upstream request,
    # which the simulator had not answered.
    assert await wait_for(lambda: waiting.disconnected, timeout=HANG_GUARD)
    assert not waiting.response_complete
    (key,) = _upstream_chat_keys(slow) - before
    assert key not in slow.log.finished


def _unanswered_chats(slow: ObservedSandbox) -> list[Any]:
    """uvicorn's request cycles in the simulator for `/chat` not answered, on open connections."""
    connections = slow.server._server.server_state.connections
    return [
        c.cycle
        for c in connections
        if c.cycle is not None
        and c.scope["path"] == "/chat"
        and not c.cycle.response_complete
        and not c.cycle.disconnected
    ]


@pytest.mark.parametrize("path", ["/chat", "/chat/responses"])
def test_a_stalled_upstream_ends_the_stream_with_an_error_event(
    slow: ObservedSandbox, stream_proxy: ServerThread, user_key: str, path: str
) -> None:
    _fault(slow, path=path, action="stall-stream", after_events=2, stall_seconds=10)
    before = _upstream_chat_keys(slow)
    # The idle timeout (0.5 s) ends it, not the stall (10 s): the stream has only the two
    # events and the error, and the proxy, not the simulator, let go of Vapi's stream.
    events = _events(
        stream_proxy.url + path,
        user_key,
        {"assistantId": "sales-coach", "input": "stall me please", "stream": True},
    )
    payloads = [orjson.loads(line[5:]) for line in events]
    assert len(payloads) == 3
    last = payloads[-1]
    if path == "/chat":
        assert last["error"]["statusCode"] == 504 and "timed out" in last["error"]["message"]
    else:
        assert last["type"] == "error" and last["code"] == "upstream_timeout"
        assert last["sequence_number"] == 2
    (key,) = _upstream_chat_keys(slow) - before
    # The proxy let go of the stalled stream (the simulator would have ended it after 10 s
    # without seeing a disconnect).
    assert wait_until(lambda: key in slow.log.disconnected, timeout=HANG_GUARD)


def test_a_refusal_from_vapi_before_the_stream_is_the_json_envelope(
    slow: ObservedSandbox, stream_proxy: ServerThread, user_key: str
) -> None:
    _fault(slow, path="/chat", action="status", status=429, retry_after=3)
    reply = HTTP.post(
        f"{stream_proxy.url}/chat",
        json={"assistantId": "sales-coach", "input": "busy", "stream": True},
        headers=bearer(user_key),
    )
    # Vapi busy is the proxy's 503 (docs/api.md "When Vapi refuses"), its Retry-After kept.
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "3"
    assert reply.json()["statusCode"] == 503


# --- a streamed turn counts once Vapi has produced output (issue 13, point 1) ----------------


def _quota_of_one(config: dict[str, Any]) -> None:
    config["limits"] = {
        "backend": "memory://",
        "rules": [{"name": "turns", "kinds": ["chat"], "quota": {"per_day": 1}}],
    }


def _on_server(server: ServerThread, coro: Any) -> Any:
    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(coro, server.loop).result(timeout=10)


def _ledger_rows(server: ServerThread, request_id: str) -> list[Any]:
    runtime = server.app.runtime  # type: ignore[attr-defined]

    async def rows() -> list[Any]:
        async with runtime.ledger.database.read() as conn:
            query = sa.select(calls).where(calls.c.request_id == request_id)
            return list(await conn.execute(query))

    result: list[Any] = _on_server(server, rows())
    return result


@pytest.mark.parametrize(
    ("path", "signed_in"),
    [
        ("/chat/responses", True),
        ("/chat/web/responses", False),  # anonymous, on the widget's endpoint
        ("/chat", True),
        ("/chat/web", False),
    ],
)
async def test_a_client_leaving_mid_stream_is_served_a_counted_recorded_turn(
    slow: ObservedSandbox,
    user_key: str,
    other_key: str,
    tmp_path_factory: pytest.TempPathFactory,
    path: str,
    signed_in: bool,
) -> None:
    folder = str(tmp_path_factory.mktemp("leave-counted"))
    with proxy_for(slow.sandbox, user_key, other_key, folder, _quota_of_one) as proxy:
        # Vapi sends one event and then never finishes (the chat id of `/responses` would
        # only come in the last one): the client reads the answer and leaves.
        _fault(slow, path=path, action="stall-stream", after_events=1, stall_seconds=30)
        headers = {**(bearer(user_key) if signed_in else {}), "X-Request-ID": "leaver-1"}
        body = {"assistantId": "sales-coach" if signed_in else "demo", "input": "free ride?"}
        body["stream"] = True
        async with (
            httpx.AsyncClient(timeout=HANG_GUARD) as client,
            client.stream("POST", proxy.url + path, json=body, headers=headers) as reply,
        ):
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if line.startswith("data:"):
                    break
        # The turn is in the ledger with what is known, and it used up the quota.
        assert await wait_for(lambda: len(_ledger_rows(proxy, "leaver-1")) == 1, timeout=HANG_GUARD)
        (row,) = _ledger_rows(proxy, "leaver-1")
        assert row.kind == "chat"
        assert row.profile == body["assistantId"]
        if signed_in:
            assert row.identity_key == "api_key:alice"
        else:
            assert row.auth_method == "anonymous"
        if path.endswith("/responses"):
            assert row.id.startswith("partial-")
        refused = HTTP.post(proxy.url + path, json={**body, "input": "again"}, headers=headers)
        assert refused.status_code == 429, refused.text


def test_a_turn_vapi_refused_gives_its_reservation_back(
    slow: ObservedSandbox, user_key: str, other_key: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = str(tmp_path_factory.mktemp("refused-free"))
    with proxy_for(slow.sandbox, user_key, other_key, folder, _quota_of_one) as proxy:
        _fault(slow, path="/chat/responses", action="status", status=500)
        body = {"assistantId": "sales-coach", "input": "x", "stream": True}
        failed = HTTP.post(proxy.url + "/chat/responses", json=body, headers=bearer(user_key))
        assert failed.status_code >= 500
        served = HTTP.post(proxy.url + "/chat/responses", json=body, headers=bearer(user_key))
        assert served.status_code == 200, served.text


async def test_a_turn_vapi_accepted_but_sent_nothing_for_keeps_its_reservation(
    slow: ObservedSandbox, user_key: str, other_key: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Vapi answered 200 and then nothing before the client left: not provably nothing (the
    turn may be running), so the quota stays spent; with no output there is nothing to record."""
    folder = str(tmp_path_factory.mktemp("accepted-silent"))
    with proxy_for(slow.sandbox, user_key, other_key, folder, _quota_of_one) as proxy:
        _fault(
            slow, path="/chat/responses", action="stall-stream", after_events=0, stall_seconds=30
        )
        before = _upstream_chat_keys(slow)
        headers = {**bearer(user_key), "X-Request-ID": "silent-1"}
        body = {"assistantId": "sales-coach", "input": "anyone there?", "stream": True}
        async with (
            httpx.AsyncClient(timeout=HANG_GUARD) as client,
            client.stream("POST", proxy.url + "/chat/responses", json=body, headers=headers) as r,
        ):
            assert r.status_code == 200  # the headers came; the client leaves without an event
        # The proxy has let go of the turn (it closed its stream from Vapi) before asking again.
        (key,) = _upstream_chat_keys(slow) - before
        assert await wait_for(lambda: key in slow.log.disconnected, timeout=HANG_GUARD)
        assert _ledger_rows(proxy, "silent-1") == []
        again = HTTP.post(proxy.url + "/chat/responses", json=body, headers=bearer(user_key))
        assert again.status_code == 429, again.text
