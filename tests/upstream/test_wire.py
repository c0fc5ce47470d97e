"""The connections every Vapi request travels on (upstream/wire.py), through `UpstreamClient.stream`
and `.request`, against raw loopback servers that answer byte for byte: the request leaves as one
block; a reply is handed on as it arrives, or read whole (bounded, within the total timeout); a
connection is reused only after a reply that ended cleanly; silence, refusals, broken and
oversized replies become the usual `UpstreamError`s; and all of it under uvloop as well (its
transports are not asyncio's classes)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from tests.support.tls import self_signed
from vapi_proxy.errors import UpstreamError
from vapi_proxy.upstream.client import USER_AGENT, UpstreamClient
from vapi_proxy.upstream.wire import (
    HIGH_WATER_BYTES,
    MAX_HEADER_BYTES,
    ConnectFailedError,
    Pool,
)

KEY = "dummy-private-key-5e1f"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
JSON_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
    b'content-length: 15\r\n\r\n{"message":"x"}'
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Seen = list[tuple[str, float | None, str | None]]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


async def answering(serve: Callable[[Handler], Awaitable[Server]], reply: bytes) -> Server:
    """A server answering every request on a connection with `reply`, then waiting."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await reader.read()

    return await serve(handler)


async def request_lines(
    serve: Callable[[Handler], Awaitable[Server]],
) -> tuple[Server, list[bytes]]:
    """A server answering every request with JSON_REPLY, and the request lines it was sent."""
    lines: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines.append((await read_request(reader)).split(b"\r\n", 1)[0])
        writer.write(JSON_REPLY)
        await reader.read()

    return await serve(handler), lines


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Server:
        server = Server("")

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            server.connections += 1
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                server.closed.set()
                writer.close()

        listening = await asyncio.start_server(connected, "127.0.0.1", 0)
        servers.append(listening)
        server.url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        return server

    yield start
    for listening in servers:
        listening.close()


def client_for(url: str, seen: Seen | None = None, pool_size: int = 10) -> UpstreamClient:
    observer = None if seen is None else (lambda *item: seen.append(item))
    return UpstreamClient(url, lambda: KEY, pool_size=pool_size, observer=observer)


@contextlib.asynccontextmanager
async def started(client: UpstreamClient) -> AsyncIterator[UpstreamClient]:
    """`client`, started, and closed on the way out."""
    await client.start()
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_request_is_one_block_with_the_key_and_the_body(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    blocks: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        blocks.append(await reader.read(65536))  # the whole request in one read
        writer.write(JSON_REPLY)
        await reader.read()

    server = await serve(handler)
    async with (
        started(client_for(server.url)) as client,
        client.stream("POST", "/chat", b'{"a":1}') as stream,
    ):
        reply = await stream.read()
    host = server.url.removeprefix("http://")
    assert blocks == [
        b"POST /chat HTTP/1.1\r\n"
        + f"Host: {host}\r\nAuthorization: Bearer {KEY}\r\n".encode()
        + b"Accept: text/event-stream, application/json\r\n"
        + f"User-Agent: {USER_AGENT}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 7\r\n\r\n"
        + b'{"a":1}'
    ]
    assert (reply.status, reply.body, reply.content_type) == (
        400,
        b'{"message":"x"}',
        "application/json",
    )


async def test_a_base_url_with_a_path_prefixes_every_request(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    # Vapi behind a gateway's mount point (`vapi.base_url: https://gw.example/vapi`).
    server, lines = await request_lines(serve)
    async with (
        started(client_for(server.url + "/vapi")) as client,
        client.stream("POST", "/chat", b"{}") as stream,
    ):
        await stream.read()
    assert lines == [b"POST /vapi/chat HTTP/1.1"]


async def test_each_chunk_is_handed_on_before_the_next_is_sent(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    got_first = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
        await got_first.wait()
        writer.write(chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        await reader.read()

    server = await serve(handler)
    async with (
        started(client_for(server.url)) as client,
        client.stream("POST", "/chat", b"{}") as stream,
    ):
        assert stream.is_sse
        received = []
        async for data in stream.chunks():
            received.append(data)
            got_first.set()
        assert stream.finished
    assert received == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_a_reader_that_is_behind_stops_the_socket_being_read(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    # A slow client must not make the proxy hold whatever Vapi sends: past the high-water mark
    # the connection stops reading (Vapi's writes wait in the kernel), and starts again as the
    # reader catches up, with nothing lost. 32 MiB is far more than loopback's socket buffers.
    piece = b"x" * 65536
    pieces = 512

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD)
        for _ in range(pieces):
            writer.write(chunk(piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    server = await serve(handler)
    async with (
        started(client_for(server.url)) as client,
        client.stream("POST", "/chat", b"{}") as stream,
    ):
        conn = stream._conn
        async with asyncio.timeout(10):
            while not conn._paused:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # what would arrive if the socket were still read
        assert conn.transport is not None and not conn.transport.is_reading()
        # One read past the mark at most (the event loop reads up to 256 KiB at a time).
        assert conn._buffered <= HIGH_WATER_BYTES + 256 * 1024 + len(piece) + 16
        total = 0
        async for data in stream.chunks():
            total += len(data)
        assert stream.finished
    assert total == pieces * len(piece)


async def test_a_connection_is_reused_only_after_a_reply_that_ended(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
            if request.endswith(b'{"hold":1}'):
                await reader.read()  # never ends this reply
            writer.write(b"0\r\n\r\n")

    server = await serve(handler)
    async with started(client_for(server.url)) as client:
        for _ in range(3):
            async with client.stream("POST", "/chat", b"{}") as stream:
                assert [c async for c in stream.chunks()] == [b"data: 1\n\n"]
        assert server.connections == 1
        # Left before the end (the client went away): that connection is closed, not reused.
        async with client.stream("POST", "/chat", b'{"hold":1}') as stream:
            async for _ in stream.chunks():
                break
        await asyncio.wait_for(server.closed.wait(), 5)
        async with client.stream("POST", "/chat", b"{}") as stream:
            assert [c async for c in stream.chunks()] == [b"data: 1\n\n"]
        assert server.connections == 2


@pytest.mark.parametrize(
    "reply",
    [
        # The server says it closes.
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
        # Bytes after the reply: whatever follows would be out of step with the next request.
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n",
    ],
    ids=["connection-close", "bytes-after-the-reply"],
)
async def test_a_connection_is_not_reused_when_it_may_be_out_of_step(
    serve: Callable[[Handler], Awaitable[Server]], reply: bytes
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await reader.read()

    server = await serve(handler)
    async with started(client_for(server.url)) as client:
        for _ in range(2):
            async with client.stream("POST", "/chat", b"{}") as stream:
                assert (await stream.read()).body == b"{}"
    assert server.connections == 2


async def test_a_large_reply_in_the_same_read_as_its_headers_is_read_whole(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    body = b'{"message":"' + b"x" * (2 * MAX_HEADER_BYTES) + b'"}'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await reader.read()

    async with (
        started(client_for((await serve(handler)).url)) as client,
        client.stream("POST", "/chat", b"{}") as stream,
    ):
        assert (await stream.read()).body == body


async def test_an_interim_reply_is_skipped(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async with (
        started(
            client_for(
                (
                    await answering(
                        serve, b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + JSON_REPLY
                    )
                ).url
            )
        ) as client,
        client.stream("POST", "/chat", b"{}") as stream,
    ):
        reply = await stream.read()
    assert (reply.status, reply.body, reply.content_type) == (
        400,
        b'{"message":"x"}',
        "application/json",
    )


async def test_a_reply_without_a_length_ends_with_its_connection(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\n\n")
        await writer.drain()

    server = await serve(handler)
    async with (
        started(client_for(server.url)) as client,
        client.stream("POST", "/chat", b"{}") as stream,
    ):
        assert b"".join([c async for c in stream.chunks()]) == b"data: 1\n\n"
        assert stream.finished


async def test_a_silent_vapi_is_a_504_and_a_broken_reply_a_502(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        writer.transport.abort()

    seen: Seen = []
    async with started(client_for((await serve(silent)).url, seen)) as client:
        with pytest.raises(UpstreamError) as silence:
            async with client.stream("POST", "/chat", b"{}", idle_timeout=0.05):
                pass
    assert (silence.value.status_code, silence.value.maybe_sent) == (504, True)

    async with (
        started(client_for((await serve(broken)).url, seen)) as client,
        client.stream("POST", "/chat", b"{}") as stream,
    ):
        with pytest.raises(UpstreamError) as breaking:
            async for _ in stream.chunks():
                pass
    assert (breaking.value.status_code, breaking.value.maybe_sent) == (502, True)
    assert [kind for _, _, kind in seen] == ["timeout", None, "disconnect"]


async def test_an_unreachable_vapi_was_provably_not_sent_anything() -> None:
    listening = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    listening.close()
    await listening.wait_closed()
    seen: Seen = []
    async with started(client_for(f"http://127.0.0.1:{port}", seen)) as client:
        with pytest.raises(UpstreamError) as refused:
            async with client.stream("POST", "/chat", b"{}"):
                pass
    assert (refused.value.status_code, refused.value.maybe_sent) == (502, False)
    assert [kind for _, _, kind in seen] == ["connect"]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nx: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n", "failed"),
        (b"NOT HTTP AT ALL\r\n\r\n", "failed"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\n"
            b"content-length: 0\r\n\r\n",
            "compressed",
        ),
    ],
    ids=["headers-too-large", "not-http", "compressed"],
)
async def test_replies_the_proxy_cannot_read_are_refused(
    serve: Callable[[Handler], Awaitable[Server]], reply: bytes, message: str
) -> None:
    async with started(client_for((await answering(serve, reply)).url)) as client:
        with pytest.raises(UpstreamError, match=message) as refused:
            async with client.stream("POST", "/chat", b"{}"):
                pass
    assert (refused.value.status_code, refused.value.maybe_sent) == (502, True)


async def test_no_more_connections_than_the_pool_size(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    release = asyncio.Event()
    answering = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
            answering.set()
            await release.wait()
            writer.write(b"0\r\n\r\n")

    server = await serve(handler)
    client = client_for(server.url, pool_size=1)
    await client.start()

    async def turn() -> list[bytes]:
        async with client.stream("POST", "/chat", b"{}") as stream:
            return [c async for c in stream.chunks()]

    try:
        first = asyncio.ensure_future(turn())
        second = asyncio.ensure_future(turn())
        await asyncio.wait_for(answering.wait(), 5)
        for _ in range(20):
            await asyncio.sleep(0)
        # The second waits for the first's connection instead of opening another.
        assert server.connections == 1
        assert not second.done()
        release.set()
        assert await first == [b"data: 1\n\n"]
        assert await second == [b"data: 1\n\n"]
        assert server.connections == 1
    finally:
        await client.aclose()


def test_under_uvloop() -> None:
    async def main() -> bytes:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(SSE_HEAD + chunk(b"data: 1\n\n") + b"0\r\n\r\n")
            await reader.read()
            writer.close()

        listening = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        try:
            async with (
                started(client_for(f"http://127.0.0.1:{port}")) as client,
                client.stream("POST", "/chat", b"{}") as stream,
            ):
                return b"".join([c async for c in stream.chunks()])
        finally:
            listening.close()

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == b"data: 1\n\n"
    finally:
        loop.close()


async def test_an_idle_connection_past_its_keepalive_is_not_reused(
    serve: Callable[[Handler], Awaitable[Server]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(JSON_REPLY)

    monkeypatch.setattr("vapi_proxy.upstream.wire.KEEPALIVE_SECONDS", -1.0)
    server = await serve(handler)
    async with started(client_for(server.url)) as client:
        for _ in range(2):
            async with client.stream("POST", "/chat", b"{}") as stream:
                assert (await stream.read()).status == 400
    assert server.connections == 2


def _tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for `localhost` and a client context that trusts
    only it (cryptography is there through the JWT dependencies)."""
    cert_file, key_file = self_signed(tmp_path, "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_tls_with_the_certificate_checked_for_the_host(tmp_path: Path) -> None:
    server_tls, client_tls = _tls_pair(tmp_path)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            writer.write(SSE_HEAD + chunk(b"data: 1\n\n") + b"0\r\n\r\n")
            await writer.drain()
            await reader.read()
        finally:
            writer.close()  # Python 3.13 reports a writer left to the collector

    listening = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_tls)
    port = listening.sockets[0].getsockname()[1]
    try:
        trusted = Pool(
            f"https://localhost:{port}", size=1, connect_timeout=5, ssl_context=client_tls
        )
        conn = await trusted.take()
        conn.send(b"POST /chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        await conn.head(5)
        assert (conn.status, await conn.chunk(5)) == (200, b"data: 1\n\n")
        trusted.give_back(conn)
        trusted.close()
        # The same server is refused to a client that does not trust its certificate.
        default = Pool(
            f"https://localhost:{port}",
            size=1,
            connect_timeout=5,
            ssl_context=ssl.create_default_context(),
        )
        with pytest.raises(ConnectFailedError):
            await default.take()
    finally:
        listening.close()


# --- buffered requests (`UpstreamClient.request`) --------------------------------------------


def buffered_client(
    url: str, seen: Seen | None = None, *, timeout: float = 30.0, connect_timeout: float = 5.0
) -> UpstreamClient:
    observer = None if seen is None else (lambda *item: seen.append(item))
    return UpstreamClient(
        url,
        lambda: KEY,
        timeout=timeout,
        connect_timeout=connect_timeout,
        max_response_bytes=1024,
        observer=observer,
    )


async def test_a_buffered_request_is_one_block_asking_for_no_compression(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    blocks: list[bytes] = []
    quoted = f'{{"message":"bad key {KEY}"}}'.encode()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            blocks.append(await read_request(reader))
            writer.write(
                b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
                b"retry-after: 7\r\ncontent-length: %d\r\n\r\n%s" % (len(quoted), quoted)
            )

    server = await serve(handler)
    async with started(buffered_client(server.url)) as client:
        replies = [
            await client.request("POST", "/call/web", b'{"a":1}'),
            await client.request("GET", "/call?limit=2"),
            await client.request("PATCH", "/call/c1", b"{}"),
            await client.request("DELETE", "/call/c1"),
            await client.request("POST", "/call/c1/end"),
        ]
    host = server.url.removeprefix("http://")
    common = (
        f"Host: {host}\r\nAuthorization: Bearer {KEY}\r\nAccept: application/json\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
    ).encode()
    typed = b"Content-Type: application/json\r\n"
    assert blocks == [
        b"POST /call/web HTTP/1.1\r\n" + common + typed + b'Content-Length: 7\r\n\r\n{"a":1}',
        b"GET /call?limit=2 HTTP/1.1\r\n" + common + b"\r\n",
        b"PATCH /call/c1 HTTP/1.1\r\n" + common + typed + b"Content-Length: 2\r\n\r\n{}",
        b"DELETE /call/c1 HTTP/1.1\r\n" + common + b"\r\n",
        b"POST /call/c1/end HTTP/1.1\r\n" + common + b"Content-Length: 0\r\n\r\n",
    ]
    assert server.connections == 1  # each reply ended cleanly: one connection kept alive
    for reply in replies:
        assert (reply.status, reply.content_type, reply.retry_after) == (
            429,
            "application/json",
            "7",
        )
        assert reply.body == b'{"message":"bad key [redacted]"}'
    assert [r.endpoint for r in replies] == [
        "/call/web",
        "/call",
        "/call/{id}",
        "/call/{id}",
        "/call/{id}/end",
    ]


async def test_a_path_with_characters_a_request_line_cannot_hold_is_percent_encoded(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    server, lines = await request_lines(serve)
    async with started(buffered_client(server.url)) as client:
        reply = await client.request("GET", "/call/a b\r\nX-Evil: 1\u00e9%41")
    assert reply.status == 400
    assert lines == [b"GET /call/a%20b%0D%0AX-Evil:%201%C3%A9%41 HTTP/1.1"]


async def test_a_buffered_reply_that_arrives_in_pieces_is_read_whole(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: 20\r\n\r\n" + b"a" * 10)
        await writer.drain()
        await asyncio.sleep(0.02)  # the rest in a read of its own
        writer.write(b"b" * 10)
        await reader.read()

    server = await serve(handler)
    async with started(buffered_client(server.url)) as client:
        reply = await client.request("POST", "/call/web", b"{}")
    assert (reply.status, reply.body) == (201, b"a" * 10 + b"b" * 10)


async def test_a_redirect_is_handed_back_not_followed(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 302 Found\r\nlocation: http://elsewhere.invalid/steal\r\n"
                b"content-length: 0\r\n\r\n"
            )

    server = await serve(handler)
    async with started(buffered_client(server.url)) as client:
        reply = await client.request("GET", "/call/c1")
    assert (reply.status, reply.body) == (302, b"")
    assert server.connections == 1


async def test_a_buffered_reply_past_the_total_timeout_is_a_504_and_not_retried(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # The headers arrive; the rest of the body never does.
        writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: 10\r\n\r\n{")
        await reader.read()

    seen: Seen = []
    server = await serve(handler)
    async with started(buffered_client(server.url, seen, timeout=0.05)) as client:
        with pytest.raises(UpstreamError) as slow:
            await client.request("POST", "/call/web", b"{}")
    assert (slow.value.status_code, slow.value.maybe_sent) == (504, True)
    assert "did not answer in time" in slow.value.message
    assert [kind for _, _, kind in seen] == ["timeout"]
    assert server.connections == 1


@pytest.mark.parametrize("after_headers", [False, True])
async def test_a_buffered_reply_that_breaks_off_is_a_502_and_not_retried(
    serve: Callable[[Handler], Awaitable[Server]], after_headers: bool
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if after_headers:
            writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: 10\r\n\r\n{")
            await writer.drain()
        writer.transport.abort()

    seen: Seen = []
    server = await serve(handler)
    async with started(buffered_client(server.url, seen)) as client:
        with pytest.raises(UpstreamError) as broken:
            await client.request("POST", "/call/web", b"{}")
    assert (broken.value.status_code, broken.value.maybe_sent) == (502, True)
    assert broken.value.message == "The connection to Vapi failed. Try again later."
    assert [kind for _, _, kind in seen] == ["disconnect"]
    assert server.connections == 1


async def test_a_connection_that_cannot_be_opened_is_retried_once_and_a_502() -> None:
    # TLS to a server that accepts and never answers the handshake: the connection is never
    # opened, so nothing was sent and one retry is safe (and only one).
    accepted: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        try:
            await reader.read()
        finally:
            writer.close()

    listening = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    seen: Seen = []
    async with started(
        buffered_client(f"https://127.0.0.1:{port}", seen, connect_timeout=0.05)
    ) as client:
        with pytest.raises(UpstreamError) as refused:
            await client.request("POST", "/call/web", b"{}")
        listening.close()
        await listening.wait_closed()
    assert (refused.value.status_code, refused.value.maybe_sent) == (502, False)
    assert refused.value.message == "Could not reach Vapi. Try again later."
    assert [kind for _, _, kind in seen] == ["connect"]
    assert len(accepted) == 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1025\r\n\r\n" + b"x" * 1025, "larger"),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            + chunk(b"x" * 600)
            + chunk(b"x" * 600),
            "larger",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
            b"content-length: 0\r\n\r\n",
            "compressed",
        ),
    ],
    ids=["too-large", "too-large-chunked", "compressed"],
)
async def test_buffered_replies_the_proxy_cannot_read_are_refused(
    serve: Callable[[Handler], Awaitable[Server]], reply: bytes, message: str
) -> None:
    seen: Seen = []
    async with started(buffered_client((await answering(serve, reply)).url, seen)) as client:
        with pytest.raises(UpstreamError, match=message) as refused:
            await client.request("GET", "/call/c1")
    assert (refused.value.status_code, refused.value.maybe_sent) == (502, True)
    assert [kind for _, _, kind in seen] == ["bad_reply"]


async def test_streams_holding_every_connection_do_not_hold_up_a_buffered_request(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            if request.startswith(b"POST /chat "):
                writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
                await release.wait()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(JSON_REPLY)

    server = await serve(handler)
    async with (
        started(client_for(server.url, pool_size=1)) as client,
        client.stream("POST", "/chat", b"{}") as stream,
    ):
        # The stream's pool is full; the buffered pool is its own.
        assert (await client.request("GET", "/call/c1")).status == 400
        release.set()
        assert [c async for c in stream.chunks()] == [b"data: 1\n\n"]
    assert server.connections == 2


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE"])
async def test_a_read_on_a_kept_alive_connection_vapi_closed_is_sent_again_once(
    serve: Callable[[Handler], Awaitable[Server]], method: str
) -> None:
    # Vapi may close an idle kept-alive connection just as the next request is written on it:
    # the request gets no reply byte. A read (GET) is sent again on a new connection, once;
    # anything that may change something (a POST starts a call) is a 502 and never sent twice.
    requests_seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first_connection = server.connections == 1
        requests_seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        if first_connection:
            requests_seen.append(await read_request(reader))
            writer.transport.abort()  # closed with the second request unanswered
            return
        await reader.read()

    seen: Seen = []
    server = await serve(handler)
    client = buffered_client(server.url, seen)
    await client.start()
    body = None if method in ("GET", "DELETE") else b"{}"
    try:
        first = await client.request(method, "/call/x", body)
        assert first.status == 200
        if method == "GET":
            again = await client.request(method, "/call/x", body)
            assert (again.status, again.body) == (200, b"{}")
            assert server.connections == 2
            assert len(requests_seen) == 3  # the unanswered one, sent again once
        else:
            with pytest.raises(UpstreamError) as broken:
                await client.request(method, "/call/x", body)
            assert (broken.value.status_code, broken.value.maybe_sent) == (502, True)
            assert server.connections == 1
            assert len(requests_seen) == 2
    finally:
        await client.aclose()
