"""`vapi_proxy.testing`, which the suite and users' own tests run the proxy and the simulator
with."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from vapi_proxy.testing import ServerThread

REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    # Two writes, as a streamed or chunked reply makes: with Nagle's algorithm on, the second
    # waits for the client's delayed ACK of the first.
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"{}"})


def read_reply(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"{}"):
        chunk = conn.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_a_server_thread_turns_nagles_algorithm_off_on_its_connections() -> None:
    """With it on (the socket it listens on was made with protocol 0, which asyncio does not
    take for TCP), every reply after the first on a kept-alive connection waited ≈ 40 ms: the
    suite spent much of its time there, and so did the simulator behind `run_sandbox`."""
    with (
        ServerThread(app, lifespan="off") as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn,
    ):
        for _ in range(2):
            conn.sendall(REQUEST)
            assert read_reply(conn).startswith(b"HTTP/1.1 200")
        (served,) = server._server.server_state.connections
        sock = served.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def failing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})


def test_an_app_whose_start_up_fails_is_reported_not_served() -> None:
    server = ServerThread(failing_app)
    with pytest.raises(RuntimeError, match="exited during start-up"):
        server.start()
    server.stop()


def test_a_stopped_server_thread_has_ended_and_refuses_connections() -> None:
    with ServerThread(app, lifespan="off") as server:
        thread = server._thread
        assert thread is not None and thread.is_alive()
    assert not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=30).close()
