"""The limits store's own Redis client (`limits/resp.py`): URLs, replies split anywhere, and a
real redis-server of the test's own for logins, databases, TLS, restarts and late replies."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.redis_server import RedisServer
from tests.support.tls import self_signed
from vapi_proxy.limits.resp import (
    NotNowError,
    ReplyError,
    RespClient,
    Script,
    _Connection,
    encode,
    parse_url,
)

# --- URLs ----------------------------------------------------------------------------------------


def test_urls_name_host_port_login_and_database() -> None:
    t = parse_url("redis://app%40x:p%3Ass%2Fw@cache.internal:6380/4")
    assert (t.host, t.port, t.username, t.password, t.db, t.tls) == (
        "cache.internal",
        6380,
        "app@x",
        "p:ss/w",
        4,
        None,
    )
    t = parse_url("redis://:secret@127.0.0.1")
    assert (t.username, t.password, t.port, t.db) == (None, "secret", 6379, 0)
    assert parse_url("redis://[::1]:7000?db=2").name == "[::1]:7000"
    assert parse_url("redis://[::1]:7000?db=2").db == 2
    tls = parse_url("rediss://h/0?ssl_cert_reqs=none").tls
    assert tls is not None and not tls.check_hostname


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h", "redis:// or rediss://"),
        ("redis://h:99999", "port"),
        ("redis://h/x", "not a number"),
        ("redis://h/1?db=2", "twice"),
        ("redis://h?socket_timeout=3", "unsupported Redis URL option(s) socket_timeout"),
        ("redis://h?ssl_cert_reqs=none", "need rediss://"),
        ("rediss://h?ssl_cert_reqs=maybe", "none, optional or required"),
        ("rediss://h?ssl_keyfile=k.pem", "needs ssl_certfile"),
        ("rediss://h?ssl_ca_certs=/no/such.pem", "ssl_ca_certs: the files cannot be used"),
        ("rediss://h?ssl_certfile=/no/c.pem", "ssl_certfile: the files cannot be used"),
    ],
)
def test_a_wrong_url_is_refused_with_the_reason_and_never_the_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as info:
        parse_url(url.replace("://h", "://u:hunter2@h"))
    assert "hunter2" not in str(info.value)


def test_the_settings_refuse_a_url_the_client_cannot_serve() -> None:
    from pydantic import ValidationError

    from vapi_proxy.limits import LimitsSettings

    with pytest.raises(ValidationError, match="socket_timeout"):
        LimitsSettings(backend="redis://127.0.0.1:6379/0?socket_timeout=1")


# --- replies split anywhere ----------------------------------------------------------------------


class _Wire:
    """What `_Connection` writes to: records the bytes, and whether it was dropped."""

    def __init__(self) -> None:
        self.sent = b""
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.sent += data

    def abort(self) -> None:
        self.aborted = True


def _resp(value: Any) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        data = value.encode()
        return b"$%d\r\n%s\r\n" % (len(data), data)
    if isinstance(value, ReplyError):
        return b"-%s\r\n" % str(value).encode()
    return b"*%d\r\n" % len(value) + b"".join(map(_resp, value))


replies = st.recursive(
    st.none()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=40)  # bulk strings may hold CR LF and any UTF-8
    | st.from_regex(r"ERR [a-z ]{0,20}", fullmatch=True).map(ReplyError),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(replies, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 400)))
def test_replies_split_anywhere_are_read_whole_and_in_order(
    values: list[Any], cuts: list[int]
) -> None:
    async def run() -> None:
        conn = _Connection(asyncio.get_running_loop())
        conn.connection_made(_Wire())  # type: ignore[arg-type]
        futures = conn.send(b"", len(values))
        data = b"".join(map(_resp, values))
        at = 0
        for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
            if cut > at:
                conn.data_received(data[at:cut])
                at = cut
        for future, value in zip(futures, values, strict=True):
            assert future.done()
            if isinstance(value, ReplyError):
                assert _norm(future.exception()) == _norm(value)
            else:
                assert _norm(future.result()) == _norm(value)

    asyncio.run(run())


def _norm(value: Any) -> Any:
    """Errors (a reply, or an element of one) by class and text; the rest as they are."""
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, Exception):
        return (type(value).__name__, str(value))
    return value


def test_an_error_inside_an_array_is_an_element() -> None:
    async def run() -> None:
        conn = _Connection(asyncio.get_running_loop())
        conn.connection_made(_Wire())  # type: ignore[arg-type]
        (future,) = conn.send(b"")
        conn.data_received(b"*2\r\n-ERR inner\r\n:1\r\n")
        inner, one = future.result()
        assert isinstance(inner, ReplyError) and str(inner) == "ERR inner" and one == 1

    asyncio.run(run())


@pytest.mark.parametrize(
    "garbage",
    [b"?what\r\n", b":notanumber\r\n", b"$x\r\n", b":1\r\n:2\r\n"],  # the last: nobody asked
)
def test_bytes_that_are_not_a_reply_drop_the_connection(garbage: bytes) -> None:
    async def run() -> None:
        wire = _Wire()
        conn = _Connection(asyncio.get_running_loop())
        conn.connection_made(wire)  # type: ignore[arg-type]
        (future,) = conn.send(b"")
        conn.data_received(garbage)
        assert wire.aborted and not conn.usable
        conn.connection_lost(None)
        assert future.done()
        with pytest.raises(ConnectionError):
            conn.send(b"")

    asyncio.run(run())


def test_not_now_replies_are_connection_errors() -> None:
    async def run() -> None:
        conn = _Connection(asyncio.get_running_loop())
        conn.connection_made(_Wire())  # type: ignore[arg-type]
        loading, wrong = conn.send(b"", 2)
        conn.data_received(b"-LOADING Redis is loading\r\n-ERR unknown command\r\n")
        assert isinstance(loading.exception(), NotNowError)
        assert isinstance(loading.exception(), ConnectionError)
        assert type(wrong.exception()) is ReplyError

    asyncio.run(run())


def test_arguments_are_bulk_strings() -> None:
    wire = b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n7\r\n$3\r\n1.5\r\n"
    assert encode(["SET", b"k", 7, 1.5]) == wire
    with pytest.raises(TypeError):
        encode(["SET", True])


# --- a real redis-server -------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path, "--requirepass", "root-pw")
    try:
        yield s
    finally:
        s.proc.send_signal(signal.SIGCONT)
        s.stop()


async def test_login_with_a_user_and_a_database(server: RedisServer) -> None:
    admin = RespClient(f"redis://:root-pw@127.0.0.1:{server.port}/0")
    app = RespClient(f"redis://app%40x:p%3Ass%2Fw@127.0.0.1:{server.port}/3")
    try:
        await admin.execute("ACL", "SETUSER", "app@x", "on", ">p:ss/w", "~*", "+@all")
        assert await app.execute("SET", "k", "in-three") == "OK"
        assert await admin.execute("GET", "k") is None  # database 0
        await admin.execute("SELECT", 3)
        assert await admin.execute("GET", "k") == "in-three"
    finally:
        await admin.aclose()
        await app.aclose()


async def test_a_refused_login_is_a_connection_error_without_the_password(
    server: RedisServer,
) -> None:
    client = RespClient(f"redis://:wrong-pw@127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(ConnectionError) as info:
            await client.execute("PING")
        assert "wrong-pw" not in str(info.value)
    finally:
        await client.aclose()


async def test_a_flushed_script_is_sent_whole_again(server: RedisServer) -> None:
    client = RespClient(f"redis://:root-pw@127.0.0.1:{server.port}")
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    try:
        assert await client.script(script, ["n"], [2]) == 2
        await client.execute("SCRIPT", "FLUSH")
        assert await client.script(script, ["n"], [3]) == 5
        assert await client.execute("SCRIPT", "EXISTS", script.sha) == [1]
        with pytest.raises(ReplyError):
            await client.script(Script("return redis.call('NOPE')"), [], [])
        assert await client.execute("GET", "n") == "5"  # the connection still serves
    finally:
        await client.aclose()


async def test_pipelined_replies_come_back_in_order_and_an_error_is_raised_after_all(
    server: RedisServer,
) -> None:
    client = RespClient(f"redis://:root-pw@127.0.0.1:{server.port}")
    try:
        got = await asyncio.gather(*(client.execute("INCR", "c") for _ in range(200)))
        assert got == list(range(1, 201))
        with pytest.raises(ReplyError):
            await client.pipeline([["INCR", "c"], ["HGET", "c", "x"], ["INCR", "c"]])
        assert await client.execute("GET", "c") == "202"  # both INCRs ran, no reply left over
    finally:
        await client.aclose()


async def test_a_restarted_server_is_reconnected_and_nothing_is_sent_twice(
    server: RedisServer,
) -> None:
    client = RespClient(f"redis://:root-pw@127.0.0.1:{server.port}")
    try:
        assert await client.execute("PING") == "PONG"
        first = client._conn
        server.restart()
        await asyncio.sleep(0.2)  # the loop sees the old connection closed
        assert first is not None and not first.usable
        assert await client.execute("INCR", "once") == 1
        assert client._conn is not first

    finally:
        await client.aclose()


async def test_a_command_lost_in_flight_is_an_error_and_never_sent_twice() -> None:
    """A peer that reads one command and closes: whether it ran is unknown, so the caller gets
    a ConnectionError, and the command is not written again (a reservation must not count
    twice). The next command opens a new connection."""
    received: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        data = await reader.read(65536)
        received.append(data)
        if len(received) > 1:
            writer.write(b"+PONG\r\n")
            await writer.drain()
            await reader.read(65536)
        writer.close()

    peer = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = peer.sockets[0].getsockname()[1]
    client = RespClient(f"redis://127.0.0.1:{port}")
    try:
        with pytest.raises(ConnectionError):
            await client.execute("INCR", "once")
        assert received == [encode(["INCR", "once"])]
        assert await client.execute("PING") == "PONG"
        assert received[1:] == [encode(["PING"])]
    finally:
        await client.aclose()
        peer.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await peer.wait_closed()


async def test_a_reply_too_late_retires_the_connection_and_is_never_given_to_another(
    server: RedisServer,
) -> None:
    client = RespClient(f"redis://:root-pw@127.0.0.1:{server.port}")
    try:
        await client.pipeline([["SET", "a", "value of a"], ["SET", "b", "value of b"]])
        first = client._conn
        server.proc.send_signal(signal.SIGSTOP)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.execute("GET", "a")
        assert first is not None and first.retired
        server.proc.send_signal(signal.SIGCONT)
        assert await client.execute("GET", "b") == "value of b"
        assert client._conn is not first
        await asyncio.sleep(0.2)
        assert first.gone is not None  # closed once its late reply was in
    finally:
        await client.aclose()


async def test_tls_verifies_the_servers_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "127.0.0.1")
    tls = RedisServer(
        tmp_path,
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no"),
        tls=True,
    )
    base = f"rediss://127.0.0.1:{tls.port}/0"
    try:
        trusted = RespClient(f"{base}?ssl_ca_certs={cert}")
        unverified = RespClient(f"{base}?ssl_cert_reqs=none")
        unknown = RespClient(base)  # the system's CAs do not know this certificate
        try:
            assert await trusted.execute("PING") == "PONG"
            assert await unverified.execute("PING") == "PONG"
            with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
                await unknown.execute("PING")
        finally:
            for client in (trusted, unverified, unknown):
                await client.aclose()
    finally:
        tls.stop()


async def test_a_set_up_that_never_answers_ends_so_the_next_can_start() -> None:
    """A server that accepts and never answers the login: the shared set-up gives up after its
    own timeout (a caller's shorter deadline does not end it for the others), and the next
    command starts a new one instead of waiting on the stuck one forever."""
    accepted: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(f"redis://:pw@127.0.0.1:{port}", connect_timeout=0.3)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.execute("PING")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.execute("PING"), 5)  # the set-up's own 0.3 s
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.execute("PING"), 5)
        assert len(accepted) == 2  # a new attempt, not the stuck one
    finally:
        await client.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
