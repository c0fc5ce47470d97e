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

    deadline_misses: int
    """How many operations have run out of the deadline (a frozen or overloaded store)."""


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
    stuck pool still fails closed) instead of being refused as "store down".

    But when an operation runs out of the deadline while others wait for a connection, those
    are refused as soon as they get one, without trying: the store has just shown it is not
    answering, and trying would make each wave of a burst wait a whole deadline more (a frozen
    store and a burst three times the pool cost the last caller three deadlines). So a caller
    waits at most about one deadline for a store that does not answer, however long the
    queue."""
    caught: tuple[type[BaseException], ...] = (*failures, OSError, TimeoutError)

    def decorate(fn: Method[S, P, R]) -> Method[S, P, R]:
        @wraps(fn)
        async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
            misses = self.deadline_misses
            slots = self.slots
            if slots.locked():
                try:
                    async with asyncio.timeout(self.queue_timeout):
                        await slots.acquire()
                except TimeoutError as exc:
                    raise StoreUnavailableError(
                        f"no store connection free within {self.queue_timeout:g} s", untried=True
                    ) from exc
            else:
                await slots.acquire()  # free: taken at once, without a timer
            try:
                if self.deadline_misses != misses:
                    raise StoreUnavailableError(
                        "the store missed its deadline while this operation waited for a "
                        "connection",
                        untried=True,
                    )
                try:
                    async with asyncio.timeout(self.deadline):
                        return await fn(self, *args, **kwargs)
                except caught as exc:
                    if isinstance(exc, TimeoutError):
                        self.deadline_misses += 1
                    raise StoreUnavailableError(f"{type(exc).__name__}: {exc}"[:300]) from exc
            finally:
                slots.release()

        return wrapper

    return decorate
