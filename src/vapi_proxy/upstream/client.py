"""The Vapi client: one pooled aiohttp session per process, errors mapped at this one boundary.

The private key replaces whatever credential the client sent; nothing from the client's headers
is forwarded, and the key is cut out of every reply read here (as `[redacted]`), so nothing
downstream (the refusal judge, logs, the console) ever needs it. A request is retried only
when it provably never left (the connection could not be opened): a retried POST that did
reach Vapi would start a second call.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

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

__all__ = ["USER_AGENT", "UpstreamClient", "UpstreamResponse", "endpoint_label"]

USER_AGENT = f"vapi-proxy/{__version__}"
REDACTED = b"[redacted]"
_TOKEN = re.compile(r"[A-Z]+")
_PATH = re.compile(r"/[!-~]*")  # visible ASCII: no space, no control character
_FIELD_VALUE = re.compile(r"[ !-~]*")


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
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size
        self._max_response_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        self._header_cache: dict[tuple[bool, str], tuple[str, dict[str, str]]] = {}
        self._pool: Pool | None = None
        # Each streamed path's request line and headers, for the current key.
        self._stream_heads: dict[tuple[str, str], tuple[str, bytes]] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            skip_auto_headers=("User-Agent",),
            # Nothing Vapi sets as a cookie may be stored and replayed on later requests made
            # for other users.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            # The key must never follow a redirect to another host.
            requote_redirect_url=False,
        )

        # Streamed replies travel on connections of their own (wire.py): a chat turn waits
        # for every step before its first event, and aiohttp's are many.
        self._pool = Pool(
            self.base_url,
            size=self._pool_size,
            connect_timeout=self._connect_timeout,
            ssl_context=ssl.create_default_context(),
        )

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        return self._session

    def redact(self, data: bytes) -> bytes:
        """`data` with the private key cut out: Vapi may quote a credential in an error."""
        key = self._api_key().encode()
        return data.replace(key, REDACTED) if key and key in data else data

    def _headers(self, has_body: bool, accept: str = "application/json") -> dict[str, str]:
        key = self._api_key()
        cached = self._header_cache.get((has_body, accept))
        if cached is not None and cached[0] == key:
            return cached[1]
        headers = {
            "Authorization": f"Bearer {key}",
            "Accept": accept,
            "User-Agent": USER_AGENT,
        }
        if has_body:
            headers["Content-Type"] = "application/json"
        # Built once per key (it may be rotated): aiohttp copies it into each request.
        self._header_cache[(has_body, accept)] = (key, headers)
        return headers

    async def request(self, method: str, path: str, body: bytes | None = None) -> UpstreamResponse:
        """Send one request to Vapi and read its (bounded) reply."""
        started = time.perf_counter()
        endpoint = endpoint_label(path)
        headers = self._headers(body is not None)
        response = await self._send(method, path, body, headers, started, endpoint=endpoint)
        with mapped_errors(endpoint, started, self.observer):
            async with response:
                data = await response.content.read(self._max_response_bytes + 1)
        if len(data) > self._max_response_bytes:
            self._observe(endpoint, started, "bad_reply")
            raise UpstreamError("Vapi's reply was larger than the proxy accepts.", maybe_sent=True)
        self._observe(endpoint, started, status_kind(response.status))
        reply_headers = response.headers
        return UpstreamResponse(
            status=response.status,
            body=self.redact(data),
            content_type=reply_headers.get("Content-Type", ""),
            retry_after=reply_headers.get("Retry-After"),
            elapsed_ms=(time.perf_counter() - started) * 1000,
            endpoint=endpoint,
        )

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        started: float,
        client_timeout: aiohttp.ClientTimeout | None = None,
        *,
        endpoint: str,
    ) -> aiohttp.ClientResponse:
        """Send the request and return the reply with its headers read (the body is not)."""
        kwargs: dict[str, Any] = {"data": body, "headers": headers, "allow_redirects": False}
        if client_timeout is not None:
            kwargs["timeout"] = client_timeout
        url = self.base_url + path
        with mapped_errors(endpoint, started, self.observer):
            try:
                return await self.session.request(method, url, **kwargs)
            except aiohttp.ClientConnectorError:
                # The TCP connection was never established: nothing reached Vapi, so one
                # immediate retry is safe. A second failure is mapped like any other.
                pass
            return await self.session.request(method, url, **kwargs)

    def _observe(self, endpoint: str, started: float, error: str | None) -> None:
        if self.observer is not None:
            self.observer(endpoint, time.perf_counter() - started, error)

    def _stream_request(self, method: str, path: str, body: bytes | None) -> bytes:
        """The whole request as written: one block, its head built once per path and key."""
        key = self._api_key()
        cached = self._stream_heads.get((method, path))
        if cached is not None and cached[0] == key:
            head = cached[1]
        else:
            assert self._pool is not None
            target = self._pool.prefix + path
            if not _TOKEN.fullmatch(method) or not _PATH.fullmatch(target):
                raise ValueError(f"not a request line: {method} {target}")
            if not _FIELD_VALUE.fullmatch(key):
                raise ValueError("the API key cannot be sent in a header")
            head = b"".join(
                (
                    f"{method} {target} HTTP/1.1\r\n".encode(),
                    b"Host: " + self._pool.host_header + b"\r\n",
                    f"Authorization: Bearer {key}\r\n".encode(),
                    b"Accept: text/event-stream, application/json\r\n",
                    f"User-Agent: {USER_AGENT}\r\n".encode(),
                    b"Content-Type: application/json\r\n",
                )
            )
            if endpoint_label(path) == path:  # the creation paths: a handful, no ids
                self._stream_heads[(method, path)] = (key, head)
        body = body or b""
        return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)

    async def _open_stream(
        self, request: bytes, started: float, idle_timeout: float, endpoint: str
    ) -> Connection:
        """Send `request` on a connection of its own and wait for the reply's headers."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        with mapped_errors(endpoint, started, self.observer):
            try:
                conn = await pool.take()
            except ConnectFailedError:
                # Nothing reached Vapi: one immediate retry is safe (as for buffered requests).
                conn = await pool.take()
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
        request = self._stream_request(method, path, body)
        started = time.perf_counter()
        endpoint = endpoint_label(path)
        conn = await self._open_stream(request, started, idle_timeout, endpoint)
        try:
            # Time to the reply's headers: the stream's own length is not Vapi's latency.
            self._observe(endpoint, started, status_kind(conn.status))
            if conn.headers.get(b"content-encoding", b"identity").lower() != b"identity":
                if self.observer is not None:
                    self.observer(endpoint, None, "bad_reply")
                raise UpstreamError(
                    "Vapi's reply was compressed, which the proxy does not read.",
                    maybe_sent=True,
                )
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
            assert self._pool is not None
            self._pool.give_back(conn)  # kept only if its reply ended cleanly
