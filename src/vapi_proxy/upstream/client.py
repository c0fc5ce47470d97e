"""The Vapi client: kept-alive connections of its own (wire.py), errors mapped at this one boundary.

The private key replaces whatever credential the client sent; nothing from the client's headers
is forwarded, and the key is cut out of every reply read here (as `[redacted]`), so nothing
downstream (the refusal judge, logs, the console) ever needs it. A request is retried only
when it provably never left (the connection could not be opened): a retried POST that did
reach Vapi would start a second call.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import aiohttp

from vapi_proxy import __version__
from vapi_proxy.errors import UpstreamError
from vapi_proxy.upstream.response import (
    Observer,
    UpstreamResponse,
    endpoint_label,
    mapped_errors,
    status_kind,
)
from vapi_proxy.upstream.stream import UpstreamStream
from vapi_proxy.upstream.wire import ConnectFailedError, Connection, Pool

__all__ = ["USER_AGENT", "UpstreamClient", "UpstreamResponse", "call_path", "endpoint_label"]

USER_AGENT = f"vapi-proxy/{__version__}"
REDACTED = b"[redacted]"
_TOKEN = re.compile(r"[A-Z]+")
_PATH = re.compile(r"/[!-~]*")  # visible ASCII: no space, no control character
_VISIBLE = "".join(map(chr, range(0x21, 0x7F)))
_FIELD_VALUE = re.compile(r"[ !-~]*")
_BODILESS = frozenset(("GET", "HEAD", "DELETE", "OPTIONS"))
"""Methods sent without `Content-Length` when they carry no body (as aiohttp did)."""
_READS = frozenset(("GET", "HEAD"))
"""Sent again once when a kept-alive connection turns out closed before any reply byte: Vapi
may close an idle connection just as a request is written on it. Never a method that changes
anything (a POST /call sent twice starts two calls)."""
_BUFFERED_ACCEPT = b"application/json"
_STREAM_ACCEPT = b"text/event-stream, application/json"


def call_path(call_id: str) -> str:
    """Vapi's path for one call. The id is quoted whole, wherever it came from (Vapi's reply,
    the ledger): a `?`, `#`, `%` or `/` in it stays in its one path segment."""
    return "/call/" + quote(call_id, safe="")


class UpstreamClient:
    """Speaks to Vapi's REST API with the private key; one instance per process."""

    def __init__(
        self,
        base_url: str,
        api_key: Callable[[], str],
        *,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        pool_size: int = 100,
        max_response_bytes: int = 4 * 1024 * 1024,
        observer: Observer | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.observer = observer
        """Told (endpoint template, seconds, error kind or None) after each request: metrics."""
        self._api_key = api_key
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size
        self._max_response_bytes = max_response_bytes
        # Two pools of `pool_size` each: a streamed chat turn holds its connection for as long
        # as Vapi talks, and a burst of them must not make call creation wait for a slot.
        self._pool: Pool | None = None
        """Buffered requests (JSON replies read whole)."""
        self._stream_pool: Pool | None = None
        """Streamed requests (SSE replies relayed as they arrive)."""
        # Each fixed path's request line and headers, for the current key (the ids' are not kept).
        self._heads: dict[tuple[str, str, bytes, bool], tuple[str, bytes]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        context = ssl.create_default_context()
        self._pool = Pool(
            self.base_url,
            size=self._pool_size,
            connect_timeout=self._connect_timeout,
            ssl_context=context,
        )
        self._stream_pool = Pool(
            self.base_url,
            size=self._pool_size,
            connect_timeout=self._connect_timeout,
            ssl_context=context,
        )

    async def aclose(self) -> None:
        for pool in (self._pool, self._stream_pool):
            if pool is not None:
                pool.close()
        self._pool = self._stream_pool = None
        # One turn of the loop: the closed connections' transports finish closing before a
        # caller can close the loop itself (uvloop refuses to close with handles still open).
        await asyncio.sleep(0)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """A general HTTP session for the console's live-call control URLs (other hosts than
        Vapi's API, and no key sent): made on first use, closed by `aclose()`. Vapi's API
        itself is never asked through it."""
        if self._pool is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Nothing set as a cookie may be replayed on later requests for other users.
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
                requote_redirect_url=False,
            )
        return self._session

    def redact(self, data: bytes) -> bytes:
        """`data` with the private key cut out: Vapi may quote a credential in an error."""
        key = self._api_key().encode()
        return data.replace(key, REDACTED) if key and key in data else data

    async def request(self, method: str, path: str, body: bytes | None = None) -> UpstreamResponse:
        """Send one request to Vapi and read its (bounded) reply, all within the total timeout.

        Nothing asks Vapi to compress the reply; one that is compressed anyway is refused."""
        started = time.perf_counter()
        endpoint = endpoint_label(path)
        request = self._request_bytes(method, path, body, _BUFFERED_ACCEPT)
        pool = self._pool
        if pool is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        limit, parts, size = self._max_response_bytes, [], 0
        conn: Connection | None = None
        with mapped_errors(endpoint, started, self.observer):
            async with asyncio.timeout(self._timeout):
                conn = await self._take(pool)
                try:
                    try:
                        conn.send(request)
                        await conn.head(None)
                    except ConnectionError:
                        if not (method in _READS and conn.requests > 1 and not conn.received):
                            raise
                        # A kept-alive connection Vapi had closed: the read never arrived.
                        pool.give_back(conn)
                        conn = None
                        conn = await self._take(pool, reuse=False)
                        conn.send(request)
                        await conn.head(None)
                    if _compressed(conn):
                        self._observe(endpoint, started, "bad_reply")
                        raise _compressed_error()
                    while chunk := await conn.chunk(None):
                        size += len(chunk)
                        if size > limit:
                            self._observe(endpoint, started, "bad_reply")
                            raise UpstreamError(
                                "Vapi's reply was larger than the proxy accepts.", maybe_sent=True
                            )
                        parts.append(chunk)
                finally:
                    if conn is not None:
                        pool.give_back(conn)  # kept only if its reply ended cleanly
        assert conn is not None
        self._observe(endpoint, started, status_kind(conn.status))
        headers = conn.headers
        retry_after = headers.get(b"retry-after")
        return UpstreamResponse(
            status=conn.status,
            body=self.redact(parts[0] if len(parts) == 1 else b"".join(parts)),
            content_type=headers.get(b"content-type", b"").decode("latin-1"),
            retry_after=None if retry_after is None else retry_after.decode("latin-1"),
            elapsed_ms=(time.perf_counter() - started) * 1000,
            endpoint=endpoint,
        )

    @staticmethod
    async def _take(pool: Pool, *, reuse: bool = True) -> Connection:
        try:
            return await pool.take(reuse=reuse)
        except ConnectFailedError:
            # The connection was never opened: nothing reached Vapi, so one immediate retry is
            # safe. A second failure is mapped like any other.
            return await pool.take(reuse=False)

    def _observe(self, endpoint: str, started: float, error: str | None) -> None:
        if self.observer is not None:
            self.observer(endpoint, time.perf_counter() - started, error)

    def _request_bytes(self, method: str, path: str, body: bytes | None, accept: bytes) -> bytes:
        """The whole request as written: one block, its head built once per fixed path and key."""
        key = self._api_key()
        typed = body is not None
        cached = self._heads.get((method, path, accept, typed))
        if cached is not None and cached[0] == key:
            head = cached[1]
        else:
            head = self._head(method, path, accept, typed, key)
            if endpoint_label(path) == path:  # the creation paths: a handful, no ids
                self._heads[(method, path, accept, typed)] = (key, head)
        if body is None:
            if method in _BODILESS:
                return head + b"\r\n"
            body = b""
        return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)

    def _head(self, method: str, path: str, accept: bytes, typed: bool, key: str) -> bytes:
        pool = self._pool
        if pool is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        if not _PATH.fullmatch(path):
            # Spaces, control characters and non-ASCII percent-encoded (UTF-8), as aiohttp's
            # URLs did: nothing in a path can break the request line.
            path = quote(path, safe=_VISIBLE)
        target = pool.prefix + path
        if not _TOKEN.fullmatch(method) or not _PATH.fullmatch(target):
            raise ValueError(f"not a request line: {method} {target}")
        if not _FIELD_VALUE.fullmatch(key):
            raise ValueError("the API key cannot be sent in a header")
        return b"".join(
            (
                f"{method} {target} HTTP/1.1\r\n".encode(),
                b"Host: " + pool.host_header + b"\r\n",
                f"Authorization: Bearer {key}\r\n".encode(),
                b"Accept: " + accept + b"\r\n",
                f"User-Agent: {USER_AGENT}\r\n".encode(),
                b"Content-Type: application/json\r\n" if typed else b"",
            )
        )

    async def _open_stream(
        self, request: bytes, started: float, idle_timeout: float, endpoint: str
    ) -> Connection:
        """Send `request` on a connection of its own and wait for the reply's headers."""
        pool = self._stream_pool
        if pool is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        with mapped_errors(endpoint, started, self.observer):
            conn = await self._take(pool)
            try:
                conn.send(request)
                await conn.head(idle_timeout)
            except BaseException:
                pool.give_back(conn)  # not reusable: its reply never ended
                raise
        return conn

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, body: bytes | None = None, *, idle_timeout: float = 30.0
    ) -> AsyncIterator[UpstreamStream]:
        """Send one request whose reply may be streamed (SSE) and hand out the open reply.

        No total timeout: a stream may last as long as Vapi keeps talking, but each wait for
        the headers or the next bytes is capped at `idle_timeout`. Leaving the block before the
        body ended closes the connection (Vapi sees the client go); a finished one is reused.
        Nothing asks Vapi to compress the reply; one that is compressed anyway is refused.
        """
        request = self._request_bytes(method, path, body, _STREAM_ACCEPT)
        started = time.perf_counter()
        endpoint = endpoint_label(path)
        conn = await self._open_stream(request, started, idle_timeout, endpoint)
        try:
            # Time to the reply's headers: the stream's own length is not Vapi's latency.
            self._observe(endpoint, started, status_kind(conn.status))
            if _compressed(conn):
                if self.observer is not None:
                    self.observer(endpoint, None, "bad_reply")
                raise _compressed_error()
            yield UpstreamStream(
                conn,
                started=started,
                max_response_bytes=self._max_response_bytes,
                idle_timeout=idle_timeout,
                endpoint=endpoint,
                observer=self.observer,
                redact=self.redact,
            )
        finally:
            assert self._stream_pool is not None
            self._stream_pool.give_back(conn)  # kept only if its reply ended cleanly


def _compressed(conn: Connection) -> bool:
    return conn.headers.get(b"content-encoding", b"identity").lower() != b"identity"


def _compressed_error() -> UpstreamError:
    return UpstreamError(
        "Vapi's reply was compressed, which the proxy does not read.", maybe_sent=True
    )
