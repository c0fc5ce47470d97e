"""Streaming through the proxy, measured at both ends: events arrive as the simulator sends
them, a client that leaves closes the upstream stream, a stalled upstream ends the stream with
an error event the client understands."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
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
from tests.support.proxy import SAVED_ASSISTANT_ID
from vapi_proxy.ledger.schema import calls
from vapi_proxy.testing import ServerThread

DELAY = 0.05  # the simulator's pause between deltas


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


def _timed_events(
    url: str, key: str, body: dict[str, Any]
) -> tuple[float, list[tuple[float, bytes]]]:
    """POST and read the SSE reply; (seconds to the response headers, [(arrival, line)])."""
    started = time.perf_counter()
    arrivals: list[tuple[float, bytes]] = []
    with HTTP.stream("POST", url, json=body, headers=bearer(key)) as reply:
        assert reply.status_code == 200, reply.read()
        headers_at = time.perf_counter() - started
        for line in reply.iter_lines():
            if line.startswith("data:"):
                arrivals.append((time.perf_counter() - started, line.encode()))
    return headers_at, arrivals


def test_events_arrive_as_sent_and_the_first_as_fast_as_direct(
    slow: ObservedSandbox, stream_proxy: ServerThread, user_key: str
) -> None:
    text = "x" * 40  # "You said: " + 40 chars = 7 deltas of 8, 50 ms apart
    direct_key = slow.sandbox.settings.private_key.get_secret_value()
    direct_body = {"assistantId": SAVED_ASSISTANT_ID, "input": text, "stream": True}
    proxy_body = {"assistantId": "sales-coach", "input": text, "stream": True}
    direct_first, proxy_first = [], []
    for _ in range(5):
        _, direct = _timed_events(f"{slow.sandbox.url}/chat", direct_key, direct_body)
        _, proxied = _timed_events(f"{stream_proxy.url}/chat", user_key, proxy_body)
        direct_first.append(direct[0][0])
        proxy_first.append(proxied[0][0])
        deltas = [t for t, line in proxied if line != b"data: [DONE]"]
        assert len(deltas) == 7
        gaps = [b - a for a, b in itertools.pairwise(deltas)]
        # Every event arrives when it is sent, not all at the end: the deltas are spread over
        # the time the simulator took to send them, spaced like it spaced them (a scheduling
        # hiccup on a loaded machine may bunch one pair).
        assert deltas[-1] - deltas[0] > 6 * DELAY * 0.8, deltas
        assert sum(gap > DELAY * 0.6 for gap in gaps) >= 5, gaps
    # Loopback medians; the benchmark measures the real margin (bench/stream_bench.py).
    assert statistics.median(proxy_first) < statistics.median(direct_first) + 0.02


def _upstream_chat_keys(slow: ObservedSandbox) -> set[str]:
    return {key for key in slow.log.started if key.endswith(":/chat") or "/chat/" in key}


async def test_a_client_leaving_mid_stream_closes_the_upstream_stream(
    slow: ObservedSandbox, stream_proxy: ServerThread, user_key: str
) -> None:
    _fault(slow, path="/chat", action="stall-stream", after_events=1, stall_seconds=30)
    before = _upstream_chat_keys(slow)
    async with (
        httpx.AsyncClient(timeout=5) as client,
        client.stream(
            "POST",
            f"{stream_proxy.url}/chat",
            json={"assistantId": "sales-coach", "input": "leave early", "stream": True},
            headers=bearer(user_key),
        ) as reply,
    ):
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                break  # one event seen; the client goes away
    left_at = time.monotonic()
    (key,) = _upstream_chat_keys(slow) - before
    assert await wait_for(lambda: key in slow.log.finished, timeout=3)
    assert key in slow.log.disconnected
    # The simulator would have stalled 30 s: it was released by the proxy closing the stream.
    assert slow.log.disconnected[key] - left_at < 1.0


async def test_a_client_leaving_before_vapi_answers_closes_the_upstream_request(
    slow: ObservedSandbox,
    user_key: str,
    other_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = str(tmp_path_factory.mktemp("patient"))
    # A proxy with the default 30 s idle timeout: only the client's leaving can end this.
    with proxy_for(slow.sandbox, user_key, other_key, folder) as proxy:
        # The simulator takes 15 s before answering at all (no headers yet).
        _fault(slow, path="/chat", action="none", latency_seconds=15)
        before = _upstream_chat_keys(slow)
        # The client gives up after 2 s: long enough for the proxy to have asked the simulator
        # even on a busy machine, far shorter than the simulator's delay.
        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=2)) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(
                    f"{proxy.url}/chat",
                    json={"assistantId": "sales-coach", "input": "too slow", "stream": True},
                    headers=bearer(user_key),
                )
            assert await wait_for(lambda: len(_upstream_chat_keys(slow) - before) == 1)
            held = slow.open_connections()
        # The client gave up and its connection closed; the proxy drops the upstream request
        # at once, long before the simulator would have answered.
        assert await wait_for(lambda: slow.open_connections() < held, timeout=5)
        (key,) = _upstream_chat_keys(slow) - before
        assert key not in slow.log.finished


@pytest.mark.parametrize("path", ["/chat", "/chat/responses"])
def test_a_stalled_upstream_ends_the_stream_with_an_error_event(
    slow: ObservedSandbox, stream_proxy: ServerThread, user_key: str, path: str
) -> None:
    _fault(slow, path=path, action="stall-stream", after_events=2, stall_seconds=10)
    before = _upstream_chat_keys(slow)
    started = time.perf_counter()
    _, events = _timed_events(
        stream_proxy.url + path,
        user_key,
        {"assistantId": "sales-coach", "input": "stall me please", "stream": True},
    )
    elapsed = time.perf_counter() - started
    assert elapsed < 3, elapsed  # the idle timeout is 0.5 s
    payloads = [orjson.loads(line[5:]) for _, line in events]
    assert len(payloads) == 3
    last = payloads[-1]
    if path == "/chat":
        assert last["error"]["statusCode"] == 504 and "timed out" in last["error"]["message"]
    else:
        assert last["type"] == "error" and last["code"] == "upstream_timeout"
        assert last["sequence_number"] == 2
    (key,) = _upstream_chat_keys(slow) - before
    # The proxy let go of the stalled stream (the simulator would have held it 10 s).
    assert wait_until(lambda: key in slow.log.disconnected, timeout=3)


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
            httpx.AsyncClient(timeout=5) as client,
            client.stream("POST", proxy.url + path, json=body, headers=headers) as reply,
        ):
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if line.startswith("data:"):
                    break
        # The turn is in the ledger with what is known, and it used up the quota.
        assert await wait_for(lambda: len(_ledger_rows(proxy, "leaver-1")) == 1, timeout=5)
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
            httpx.AsyncClient(timeout=5) as client,
            client.stream("POST", proxy.url + "/chat/responses", json=body, headers=headers) as r,
        ):
            assert r.status_code == 200  # the headers came; the client leaves without an event
        # The proxy has let go of the turn (it closed its stream from Vapi) before asking again.
        (key,) = _upstream_chat_keys(slow) - before
        assert await wait_for(lambda: key in slow.log.disconnected, timeout=5)
        assert _ledger_rows(proxy, "silent-1") == []
        again = HTTP.post(proxy.url + "/chat/responses", json=body, headers=bearer(user_key))
        assert again.status_code == 429, again.text
