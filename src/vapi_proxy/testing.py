"""Helpers for tests (ours and our users'): run an ASGI app as a real server on loopback.

`ServerThread` starts uvicorn on 127.0.0.1 on a free port in a background thread with its own
event loop, so tests speak real HTTP to it and behaviour that lives in the network (streaming,
disconnects, timeouts, CORS) is exercised for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Any, Literal

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _PromptServer(uvicorn.Server):
    """uvicorn's server, told of its start and its stop at once: uvicorn looks at `should_exit`
    every 0.1 s, which made every test's teardown wait 50 ms on average."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = threading.Event()
        self._wake: asyncio.Event | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # not when the app's start-up failed (the thread then ends)
            self.up.set()

    async def main_loop(self) -> None:
        # As uvicorn's (`on_tick` refreshes the Date header and decides), but woken by `wake`.
        self._wake = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    def wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """From another thread, after setting `should_exit`."""
        if self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(self._wake.set)


class ServerThread:
    """Runs `app` under uvicorn on loopback until `stop()` (or the end of a `with` block)."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        lifespan: Literal["auto", "on", "off"] = "on",
        startup_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.host = host
        # Without a port, the socket is bound here and handed to uvicorn: a port picked with
        # free_port() and bound later can be taken in between by another test's connection.
        self._socket: socket.socket | None = None
        if port is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            # IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off only on
            # sockets whose protocol says TCP, and with it on, every reply after the first on a
            # kept-alive connection waits ≈ 40 ms for the client's delayed ACK.
            self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, 0))
            port = int(self._socket.getsockname()[1])
        self.port = port
        self._config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            lifespan=lifespan,
            log_level="warning",
            access_log=False,
            loop="asyncio",
            timeout_graceful_shutdown=2,
            # As `serve` runs it: the proxy's own resolver reads forwarded headers, never uvicorn
            # (whose default would rewrite the peer from X-Forwarded-For for 127.0.0.1).
            proxy_headers=False,
        )
        self._server = _PromptServer(self._config)
        self._thread: threading.Thread | None = None
        self._startup_timeout = startup_timeout
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            sockets = [self._socket] if self._socket is not None else None
            loop.run_until_complete(self._server.serve(sockets=sockets))
        except SystemExit:
            # uvicorn exits when the app's start-up fails (it has logged why); `start` says so.
            pass
        finally:
            loop.close()
            if self._socket is not None:
                self._socket.close()

    def start(self) -> ServerThread:
        self._thread = threading.Thread(target=self._run, name=f"server-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.up.wait(0.01):
            if not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start in time")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self.loop is not None:
            self._server.wake(self.loop)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        elif self._socket is not None:
            self._socket.close()  # never started

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
