"""One boundary for the networked limits stores (PostgreSQL, Redis): a pool slot first, then
the store's deadline, and every driver or network failure as StoreUnavailableError."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from vapi_proxy.limits.core import StoreUnavailableError

P = ParamSpec("P")
R = TypeVar("R")


class Deadlined(Protocol):
    @property
    def deadline(self) -> float | None: ...

    @property
    def slots(self) -> asyncio.Semaphore: ...

    @property
    def queue_timeout(self) -> float: ...


S = TypeVar("S", bound=Deadlined)
Method = Callable[Concatenate[S, P], Awaitable[R]]


def unavailable_on(
    *failures: type[BaseException],
) -> Callable[[Method[S, P, R]], Method[S, P, R]]:
    """A decorator that translates `failures` (the driver's, plus OSError and TimeoutError)
    into StoreUnavailableError at one boundary, and holds the whole operation (connecting, the
    command, a reconnect or retry) to the store's deadline: a frozen server must cost
    `timeout_seconds`, not a multiple of it.

    The deadline starts once the operation holds one of `slots` (as many as the pool has
    connections), so it measures the store's answer, not the queue in front of the pool: a
    burst larger than the pool waits its turn (up to `queue_timeout`, long but finite, so a
    stuck pool still fails closed) instead of being refused as "store down"."""
    caught: tuple[type[BaseException], ...] = (*failures, OSError, TimeoutError)

    def decorate(fn: Method[S, P, R]) -> Method[S, P, R]:
        @wraps(fn)
        async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                async with asyncio.timeout(self.queue_timeout):
                    await self.slots.acquire()
            except TimeoutError as exc:
                raise StoreUnavailableError(
                    f"no store connection free within {self.queue_timeout:g} s"
                ) from exc
            try:
                async with asyncio.timeout(self.deadline):
                    return await fn(self, *args, **kwargs)
            except caught as exc:
                raise StoreUnavailableError(f"{type(exc).__name__}: {exc}"[:300]) from exc
            finally:
                self.slots.release()

        return wrapper

    return decorate
