"""The connections every Vapi request travels on: HTTP/1.1, kept alive, one reply at a time.

Each request (buffered or streamed) waits for every step between the client's request and
Vapi's reply, so it is written here as one pre-assembled block (one write) and its reply parsed
by httptools, instead of through aiohttp's general-purpose client (redirects, cookies, proxies,
tracing: nothing a request to Vapi uses). A connection goes back to the pool only when its reply
ended cleanly (whole, nothing after it, keep-alive); anything else closes it, so a reply can
never be read on behalf of the next request. Failures are plain `OSError`s and `TimeoutError`s,
which `response.mapped_errors` maps; `ConnectFailedError` means nothing was sent.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import cast
from urllib.parse import urlsplit

import httptools

MAX_HEADER_BYTES = 64 * 1024
"""More reply header than this (status line and fields) is refused: a broken or hostile peer."""
KEEPALIVE_SECONDS = 15.0
"""An idle connection older than this is closed instead of reused (aiohttp's default): Vapi's
side may be about to close it, and a request written as it does could not be retried."""
DNS_TTL_SECONDS = 300.0
"""How long Vapi's resolved addresses are reused for new connections (aiohttp's setting here)."""
HIGH_WATER_BYTES = 256 * 1024
"""Body bytes held for a reader that is behind (a slow client): past this, the socket is not
read until the reader catches up, so Vapi waits instead of the proxy's memory growing."""


class ConnectFailedError(OSError):
    """The TCP (and TLS) connection could not be opened: the request never left."""


class ReplyError(ConnectionError):
    """The reply broke the protocol (or was refused by `MAX_HEADER_BYTES`); the connection is
    closed."""


class Connection(asyncio.Protocol):
    """One connection to Vapi and the reply being read on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.complete = False
        """The whole reply was read (the body's end, by length, chunking or close)."""
        self.broken = False
        """Lost, refused or past its reply: never reused."""
        self.requests = 0
        """Requests written on this connection (more than one: it was kept alive for this one)."""
        self.received = 0
        """Bytes received since the current request was written."""
        self._parser: httptools.HttpResponseParser | None = None
        self._head: asyncio.Future[None] | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        """Bytes in `_chunks`."""
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._header_bytes = 0
        """The reply's header fields, name and value (what httptools hands over)."""
        self._head_bytes = 0
        """Bytes received while the reply's head was still incomplete."""
        self._error: BaseException | None = None
        self._extra = False
        self._interim = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        parser = self._parser
        if parser is None or self.complete:
            # Bytes nobody asked for (between replies, or after one): the stream is out of step.
            self._fail(ReplyError("Vapi sent bytes outside a reply."))
            return
        head = self._head
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ReplyError("Vapi's reply asked for a protocol upgrade."))
            return
        except httptools.HttpParserError as exc:
            self._fail(ReplyError(f"Vapi's reply could not be parsed: {exc}"))
            return
        if head is not None and not head.done():
            # Still in the headers (or refused them): what the parser holds is bounded too.
            self._head_bytes += len(data)
            if max(self._head_bytes, self._header_bytes) > MAX_HEADER_BYTES:
                self._fail(ReplyError("Vapi's reply headers were too large."))

    def eof_received(self) -> bool | None:
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A second reply in the same bytes: nothing asked for it. It is ignored (below)
            # and the connection never reused.
            self._extra = self.broken = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._extra:
            self.headers[name.lower()] = value
            self._header_bytes += len(name) + len(value)

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        if self._extra or self._header_bytes > MAX_HEADER_BYTES:
            return  # the head is not answered: refused once this read is parsed
        status = self._parser.get_status_code()
        if status < 200:
            self._interim = True  # `103 Early Hints` and the like: the reply is still to come
            self.headers = {}
            return
        self.status = status
        if not self._parser.should_keep_alive():
            self.broken = True  # `Connection: close` (or HTTP/1.0): ends with this reply
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if not self._extra:
            self._chunks.append(body)
            self._buffered += len(body)
            if self._buffered > HIGH_WATER_BYTES and not self._paused and self.transport:
                self._paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake()

    # --- the reply --------------------------------------------------------------------------

    def send(self, request: bytes) -> None:
        """Write one request and get ready to read its reply."""
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._head = asyncio.get_running_loop().create_future()
        self.status = 0
        self.headers = {}
        self.complete = False
        self._chunks = []
        self._buffered = 0
        self._header_bytes = self._head_bytes = 0
        self.received = 0
        self.requests += 1
        self.transport.write(request)

    async def head(self, idle: float | None) -> None:
        """Wait for the reply's status and headers (at most `idle` seconds)."""
        assert self._head is not None
        async with asyncio.timeout(idle):
            await self._head

    async def chunk(self, idle: float | None) -> bytes:
        """The body's next bytes as they arrived (b"" once it ended); each wait for them is
        capped at `idle` seconds."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(idle):
                    await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        self._chunks = []
        self._buffered = 0
        if self._paused:
            self._paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def reusable(self) -> bool:
        transport = self.transport
        return (
            self.complete
            and not self.broken
            and self._error is None
            and transport is not None
            and not transport.is_closing()
        )

    def close(self) -> None:
        self.broken = True
        if self.transport is not None:
            self.transport.close()

    # --- internals --------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _lost(self, exc: Exception | None) -> None:
        self.broken = True
        if not self.complete and self._error is None:
            if exc is None and self._delimited_by_close():
                self.complete = True  # a reply without a length ends when the connection does
            else:
                self._error = exc or ConnectionResetError("Vapi closed the connection.")
        self._settle()

    def _delimited_by_close(self) -> bool:
        head = self._head
        headers = self.headers
        return (
            head is not None
            and head.done()
            and b"content-length" not in headers
            and b"chunked" not in headers.get(b"transfer-encoding", b"").lower()
        )

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self.broken = True
        if self.transport is not None:
            self.transport.abort()
        self._settle()

    def _settle(self) -> None:
        error = self._error
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error or ConnectionResetError("Vapi closed the connection."))
            head.exception()  # retrieved: a reply nobody awaits any more must not warn
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Pool:
    """Kept-alive connections to one origin, at most `size` open at once."""

    def __init__(
        self, base_url: str, *, size: int, connect_timeout: float, ssl_context: ssl.SSLContext
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc.rsplit("@", 1)[-1].encode("idna")
        self.prefix = parts.path.rstrip("/")
        """The base URL's own path (a gateway's mount point): every request path goes under it."""
        self._ssl = ssl_context if parts.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[float, Connection]] = []
        self._addresses: list[str] = []
        self._resolved_at = float("-inf")

    async def take(self, *, reuse: bool = True) -> Connection:
        """A connection of one's own: a kept-alive one if any is still open (and `reuse`), else
        a new one."""
        await self._slots.acquire()
        try:
            fresh = asyncio.get_running_loop().time() - KEEPALIVE_SECONDS
            while reuse and self._idle:
                since, conn = self._idle.pop()
                if since > fresh and conn.reusable:
                    return conn
                conn.close()
            return await self._open()
        except BaseException:
            self._slots.release()
            raise

    def give_back(self, conn: Connection) -> None:
        """Keep `conn` for the next request if its reply ended cleanly; close it otherwise."""
        if conn.reusable:
            conn._parser = None  # anything arriving now is out of step
            self._idle.append((asyncio.get_running_loop().time(), conn))
        else:
            conn.close()
        self._slots.release()

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                addresses = await self._resolve(loop)
                for index, address in enumerate(addresses):
                    try:
                        _, conn = await loop.create_connection(
                            Connection,
                            address,
                            self.port,
                            ssl=self._ssl,
                            server_hostname=self.host if self._ssl is not None else None,
                        )
                        return conn
                    except OSError:
                        if index == len(addresses) - 1:
                            raise
                raise OSError(f"no address for {self.host}")
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise ConnectFailedError(f"could not connect to {self.host}:{self.port}") from exc

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        if loop.time() - self._resolved_at < DNS_TTL_SECONDS:
            return self._addresses
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise OSError(f"no address for {self.host}")
        self._addresses, self._resolved_at = addresses, loop.time()
        return addresses
