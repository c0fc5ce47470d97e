"""A small Redis client for the limits store: RESP2 over one pipelined connection.

The limits store sends a handful of commands (four scripts, GET, MGET, ZRANGEBYSCORE, PING), each
on the request path. redis-py's asyncio client costs about 43 µs of the proxy's CPU per command
here (a connection pool, a retry wrapper, observability hooks, each argument encoded in Python);
the same command over one pipelined connection costs about 9 µs (docs/performance.md). Redis
answers a connection's commands in order, so one connection serves every concurrent caller: a
command is written at once and its reply is the next one the connection has not handed out.

What a connection is trusted with:
- a reply the caller stopped waiting for (its deadline ran out) retires the connection: no new
  command goes to it, and it is closed once nothing is in flight. The next command opens a new
  one, so a frozen server costs each caller its own deadline, never a backlog;
- a connection that is gone fails every command in flight (`ConnectionError`). A command is
  never sent twice: whether a lost one ran is unknown, and a reservation must not count twice;
- error replies are `ReplyError`, except those that say the server cannot answer now (loading,
  busy, a replica, a cluster going down) or refused the login: those are `ConnectionError`s,
  which the store reports as unavailable, like a server that is not there.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

Arg = str | bytes | int | float

# Error replies meaning "not now" rather than "wrong command" (redis-py maps these to its
# ConnectionError subclasses too).
_NOT_NOW = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "NOAUTH")

_TLS_OPTIONS = {
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
}


class ReplyError(Exception):
    """An error reply from Redis (`-ERR …`): the command was wrong, not the connection."""


class NotNowError(ConnectionError):
    """An error reply that says the server cannot answer now, or refused the login."""


class ProtocolError(ConnectionError):
    """Bytes that are not a RESP2 reply, or a reply nobody asked for: the connection is dropped."""


class _Incomplete(Exception):
    pass


_INCOMPLETE = _Incomplete()


def _error(text: str) -> Exception:
    if text.startswith((*_NOT_NOW, "WRONGPASS")):
        return NotNowError(f"Redis: {text}")
    return ReplyError(text)


def _parse(buf: bytearray, pos: int, depth: int = 0) -> tuple[Any, int]:
    """The reply starting at `pos`: (value, the position after it). Raises _Incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _INCOMPLETE
    kind = buf[pos]
    if kind == 0x24:  # $ bulk string
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        start = end + 2
        stop = start + n
        if len(buf) < stop + 2:
            raise _INCOMPLETE
        return buf[start:stop].decode(errors="replace"), stop + 2
    if kind == 0x3A:  # : integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 0x2A:  # * array
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        if depth > 8:
            raise ProtocolError("Redis sent an array nested too deep")
        items = []
        at = end + 2
        for _ in range(n):
            item, at = _parse(buf, at, depth + 1)
            items.append(item)
        return items, at
    if kind == 0x2B:  # + simple string
        return buf[pos + 1 : end].decode(errors="replace"), end + 2
    if kind == 0x2D:  # - error
        return _error(buf[pos + 1 : end].decode(errors="replace")), end + 2
    raise ProtocolError(f"Redis sent a reply of unknown type {chr(kind)!r}")


def encode(args: Sequence[Arg]) -> bytes:
    """One command as RESP2: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, bool):
            raise TypeError("a Redis argument cannot be a bool")
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"a Redis argument cannot be a {type(arg).__name__}")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self.gone: str | None = None
        """Why the connection is closed, once it is."""
        self.retired = False

    @property
    def usable(self) -> bool:
        return self.gone is None and not self.retired

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        waiting = self._waiting
        try:
            while pos < len(buf):
                value, pos = _parse(buf, pos)
                if not waiting:
                    raise ProtocolError("Redis sent a reply nobody asked for")
                future = waiting.popleft()
                if not future.done():
                    if isinstance(value, Exception):
                        future.set_exception(value)
                        future.exception()  # retrieved: the caller may have stopped listening
                    else:
                        future.set_result(value)
        except _Incomplete:
            pass
        except (ProtocolError, ValueError) as exc:
            self.drop(f"{type(exc).__name__}: {exc}")
            return
        del buf[:pos]
        if self.retired:
            self._close_if_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "closed by the server"
        self.gone = self.gone or f"the connection to Redis was lost ({reason})"
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError(self.gone))
                future.exception()  # retrieved: a pipeline's caller awaits only the first

    def send(self, packed: bytes, count: int = 1) -> list[asyncio.Future[Any]]:
        """Write one or more packed commands; a future for each reply, in order."""
        if self.gone is not None:
            raise ConnectionError(self.gone)
        assert self._transport is not None
        futures = [self._loop.create_future() for _ in range(count)]
        self._transport.write(packed)
        self._waiting.extend(futures)
        return futures

    def retire(self) -> None:
        """Take no more commands; close once nothing is in flight."""
        self.retired = True
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if all(f.done() for f in self._waiting):
            self.drop("retired")

    def drop(self, reason: str) -> None:
        self.gone = self.gone or reason
        if self._transport is not None:
            self._transport.abort()  # connection_lost fails what is still in flight


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    username: str | None
    password: str | None
    db: int
    tls: ssl.SSLContext | None

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _flag(value: str, name: str) -> bool:
    low = value.lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"Redis URL option {name}={value!r}: use true or false")


def _tls(options: dict[str, str]) -> ssl.SSLContext:
    reqs = options.get("ssl_cert_reqs", "required").lower()
    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    if reqs not in modes:
        raise ValueError(f"Redis URL option ssl_cert_reqs={reqs!r}: use none, optional or required")
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise ValueError("Redis URL option ssl_keyfile needs ssl_certfile")
    try:
        context = ssl.create_default_context(
            cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path")
        )
        if "ssl_certfile" in options:
            context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    except OSError as exc:  # ssl.SSLError too: a file missing, unreadable or not PEM
        named = [k for k in ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile") if k in options]
        raise ValueError(
            f"Redis URL option(s) {', '.join(named)}: the files cannot be used"
            f" ({type(exc).__name__}: {exc.strerror or exc})"
        ) from None
    check = options.get("ssl_check_hostname")
    context.check_hostname = (
        _flag(check, "ssl_check_hostname") if check is not None else reqs != "none"
    )
    context.verify_mode = modes[reqs]
    return context


def parse_url(url: str) -> Target:
    """redis://[[user]:password@]host[:port][/db] or rediss://… (TLS; ssl_* options in the query).

    Raises ValueError, naming what is wrong but never the password."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"redis", "rediss"}:
        raise ValueError("a Redis URL starts with redis:// or rediss://")
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise ValueError("the Redis URL's port is not a number from 1 to 65535") from exc
    options: dict[str, str] = {}
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if len(values) > 1:
            raise ValueError(f"Redis URL option {key} is given twice")
        options[key] = values[0]
    db_text = options.pop("db", None)
    path = parts.path.strip("/")
    if path:
        if db_text is not None:
            raise ValueError("the Redis URL names its database twice (path and ?db=)")
        db_text = path
    try:
        db = int(db_text) if db_text else 0
    except ValueError as exc:
        raise ValueError(f"the Redis URL's database {db_text!r} is not a number") from exc
    if db < 0:
        raise ValueError("the Redis URL's database is negative")
    unknown = sorted(set(options) - _TLS_OPTIONS)
    if unknown:
        raise ValueError(
            f"unsupported Redis URL option(s) {', '.join(unknown)}: the limits store takes db"
            f" and, with rediss://, {', '.join(sorted(_TLS_OPTIONS))}; its timeouts come from"
            " limits.timeout_seconds"
        )
    if options and scheme != "rediss":
        raise ValueError("the ssl_* options of a Redis URL need rediss://")
    return Target(
        host=parts.hostname or "localhost",
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        db=db,
        tls=_tls(options) if scheme == "rediss" else None,
    )


class Script:
    def __init__(self, source: str) -> None:
        self.source = source
        # Redis names a script by its SHA-1 (not a security use).
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class RespClient:
    """Commands over one connection, opened when first needed and again after it is lost."""

    def __init__(self, url: str, *, connect_timeout: float | None = None) -> None:
        self.target = parse_url(url)
        self.connect_timeout = connect_timeout
        """Bounds opening a connection (TCP, TLS, login), which its callers share: a caller
        may stop waiting sooner, but the attempt itself must end for the next one to start."""
        self._conn: _Connection | None = None
        self._opening: asyncio.Future[_Connection] | None = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._opening is None:
            # Opened once for every caller waiting; a caller whose deadline runs out stops
            # waiting without cancelling the others' connection.
            opening = asyncio.ensure_future(self._open())
            opening.add_done_callback(self._opened)
            self._opening = opening
        return await asyncio.shield(self._opening)

    def _opened(self, opening: asyncio.Future[_Connection]) -> None:
        self._opening = None
        if not opening.cancelled():
            opening.exception()  # retrieved here: a failure is the waiters' to report

    async def _open(self) -> _Connection:
        async with asyncio.timeout(self.connect_timeout):
            return await self._open_now()

    async def _open_now(self) -> _Connection:
        t = self.target
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: _Connection(loop),
            t.host,
            t.port,
            ssl=t.tls,
            server_hostname=t.host if t.tls is not None else None,
        )
        try:
            hello: list[bytes] = []
            if t.password is not None:
                auth = ("AUTH", t.username, t.password) if t.username else ("AUTH", t.password)
                hello.append(encode(auth))
            if t.db:
                hello.append(encode(("SELECT", t.db)))
            if hello:
                for future in conn.send(b"".join(hello), len(hello)):
                    try:
                        await future
                    except ReplyError as exc:
                        raise NotNowError(f"Redis refused the connection's set-up: {exc}") from None
        except BaseException:
            conn.drop("set-up failed")
            raise
        self._conn = conn
        return conn

    async def execute(self, *args: Arg) -> Any:
        return (await self.pipeline([args]))[0]

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send every command in one write; their replies, in order. The first error reply
        is raised once all replies are in."""
        conn = await self._connection()
        futures = conn.send(b"".join(map(encode, commands)), len(commands))
        try:
            return [await f for f in futures]
        except asyncio.CancelledError:
            conn.retire()  # a reply that did not come in time: no longer trusted
            raise
        except ReplyError:
            # The rest of the batch still comes: read it before telling the caller.
            await asyncio.gather(*futures, return_exceptions=True)
            raise

    async def script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """EVALSHA, and EVAL once if the server does not have the script (after a restart or
        SCRIPT FLUSH): EVAL also caches it for the next EVALSHA."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def aclose(self) -> None:
        opening = self._opening
        if opening is not None:
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
        if self._conn is not None:
            self._conn.drop("closed")
            self._conn = None
