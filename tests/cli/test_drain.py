"""A stopping worker answers a request already on its way over a kept-alive connection.

uvicorn's own protocol closes every idle keep-alive connection the moment shutdown starts, so a
client that sends its next request right then gets a reset (seen as a rare failure of the
reload-under-traffic test). These tests pin the drain down without racing: the grace is made
long, and the second request is sent only once the server has provably started shutting down
(its listening socket refuses connections).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vapi_proxy.cli.drain import DrainingHttpToolsProtocol

REQUEST = b"POST /call/web HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
HANG_GUARD = 30.0  # seconds: a hung socket fails the test instead of stalling the suite


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"{}"})


class LongGrace(DrainingHttpToolsProtocol):
    idle_grace_seconds = HANG_GUARD


class ShortGrace(DrainingHttpToolsProtocol):
    idle_grace_seconds = 0.05


@contextmanager
def running(protocol: type[HttpToolsProtocol]) -> Iterator[tuple[uvicorn.Server, int]]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=protocol, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    for _ in range(int(HANG_GUARD / 0.01)):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, port
    finally:
        server.should_exit = True
        thread.join(HANG_GUARD)
        assert not thread.is_alive()


def read_reply(conn: socket.socket) -> bytes:
    """One whole reply (headers and the 2-byte body), or what arrived before the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"{}"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def wait_until_listener_closed(port: int) -> None:
    for _ in range(int(HANG_GUARD / 0.01)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the server never stopped listening")


def send_after_shutdown_started(protocol: type[HttpToolsProtocol]) -> bytes:
    with running(protocol) as (server, port):
        conn = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)
        with conn:
            conn.sendall(REQUEST)
            first = read_reply(conn)
            assert first.startswith(b"HTTP/1.1 201"), first
            assert b"connection: close" not in first.lower()  # kept alive
            server.should_exit = True
            wait_until_listener_closed(port)
            try:
                conn.sendall(REQUEST)
                return read_reply(conn)
            except ConnectionError as exc:
                return repr(exc).encode()


def test_a_request_sent_while_the_worker_drains_is_answered_with_connection_close() -> None:
    second = send_after_shutdown_started(LongGrace)
    assert second.startswith(b"HTTP/1.1 201"), second
    assert b"connection: close" in second.lower()


def test_uvicorns_own_protocol_drops_that_request() -> None:
    """The case above is the one that fails without the drain (this test can fail: it shows
    what the fix is for, and breaks if uvicorn itself starts draining gently)."""
    second = send_after_shutdown_started(HttpToolsProtocol)
    assert not second.startswith(b"HTTP/1.1 201"), second


def test_an_idle_connection_is_closed_when_the_grace_ends() -> None:
    with running(ShortGrace) as (server, port):
        conn = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)
        with conn:
            conn.sendall(REQUEST)
            assert read_reply(conn).startswith(b"HTTP/1.1 201")
            server.should_exit = True
            # The server closes it (EOF), rather than holding the worker's exit open.
            try:
                assert conn.recv(4096) == b""
            except ConnectionResetError:
                pytest.fail("the idle connection was reset rather than closed")


@pytest.mark.parametrize(
    "request_bytes",
    [
        # A control character in a header value.
        b"POST /call/web HTTP/1.1\r\nHost: t\r\nX-Request-Id: a\x01b\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        # A chunk size that is not hexadecimal.
        b"POST /call/web HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nab\r\n0\r\n\r\n",
        # A request line that is not one.
        b"POST /call/web HTTX/1.1\r\nHost: t\r\n\r\n",
        # A header line without a colon.
        b"GET /healthz HTTP/1.1\r\nHost t\r\n\r\n",
    ],
    ids=["control-character", "bad-chunk", "request-line", "header-line"],
)
def test_a_request_the_parser_refuses_gets_the_json_envelope(request_bytes: bytes) -> None:
    with running(DrainingHttpToolsProtocol) as (_server, port):
        conn = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)
        with conn:
            conn.sendall(request_bytes)
            reply = b""
            while chunk := conn.recv(4096):  # the server closes the connection after it
                reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 400 Bad Request", reply
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"connection"] == b"close"
    assert int(headers[b"content-length"]) == len(body)
    error = json.loads(body)
    assert set(error) == {"message", "error", "statusCode", "requestId"}
    assert error["statusCode"] == 400 and error["error"] == "Bad Request"
    assert "HTTP/1.1" in error["message"]
    assert error["requestId"] == headers[b"x-request-id"].decode()
    assert len(error["requestId"]) == 32
