"""Build the proxy's ASGI app from `Settings`: routes, edge middleware, lifespan (the runtime
state itself is `runtime.Runtime`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
from collections.abc import AsyncIterator, Iterator

from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp

from vapi_proxy.edge.middleware import CorsPolicy, EdgeMiddleware
from vapi_proxy.edge.routing import FastRouter
from vapi_proxy.logs import configure_logging
from vapi_proxy.routes import admin, calls, chat, health, me, metrics, webhook
from vapi_proxy.runtime import Runtime
from vapi_proxy.settings import ConfigError, Secrets, Settings, load_secrets, load_settings

__all__ = ["Runtime", "app_from_environment", "create_app"]


GC_YOUNG_THRESHOLD = 5000
"""Allocations between collections of the youngest generation (CPython's default is 700)."""


class _LongLivedHeap:
    """The process's collector settings while at least one app serves (see `long_lived_heap`).
    Apps may start and stop in any order (a test's replicas, an embedding server): the first
    to start freezes, the last to stop restores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # apps may run on loops in different threads
        self._holders = 0
        self._threshold = gc.get_threshold()

    def hold(self) -> None:
        with self._lock:
            if self._holders == 0:
                gc.collect()
                gc.freeze()
                self._threshold = gc.get_threshold()
                gc.set_threshold(max(self._threshold[0], GC_YOUNG_THRESHOLD), *self._threshold[1:])
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                gc.set_threshold(*self._threshold)
                gc.unfreeze()


_HEAP = _LongLivedHeap()


@contextlib.contextmanager
def long_lived_heap() -> Iterator[None]:
    """While the app serves: what start-up built (modules, config, pools: most of the heap) is
    moved out of the collector's sight (`gc.freeze()`), and the youngest generation is collected
    less often. Measured under load (bench/path_cost.py --gc): a full collection walked the
    whole start-up heap, 100 ms or more every few thousand requests (the p99 stall) and a third
    of the CPU per request; a request's own objects die by reference counting, so collecting
    them every 700 allocations found little. Undone when the last app of the process stops."""
    _HEAP.hold()
    try:
        yield
    finally:
        _HEAP.release()


def create_app(settings: Settings, secrets: Secrets) -> ASGIApp:
    """The proxy as an ASGI app (runs under uvicorn or any ASGI server)."""
    runtime = Runtime.build(settings, secrets)

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        await runtime.start()
        stack = contextlib.ExitStack()
        stack.enter_context(long_lived_heap())
        tasks = [asyncio.create_task(runtime.maintain())]
        if settings.metrics.enabled and settings.metrics.port is not None:
            tasks.append(asyncio.create_task(metrics.keep_fresh(runtime)))
        if runtime.forwarder is not None and runtime.forwarder.enabled:
            # Drains the webhook outbox: events wait there until the app takes them.
            tasks.append(asyncio.create_task(runtime.forwarder.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runtime.aclose()
            stack.close()

    route_list: list[BaseRoute] = [
        *health.routes(runtime),
        *calls.routes(runtime),
        *chat.routes(runtime),
        *webhook.routes(runtime),
        *admin.routes(runtime),
        *me.routes(runtime),
    ]
    if settings.metrics.port is None:
        route_list.extend(metrics.routes(runtime))
    # No trailing-slash redirect: Starlette's would send `POST /call/web/` to
    # `http://<the client's Host>/call/web`, an open redirect built from a request header and a
    # downgrade to http behind TLS. One path per route; anything else is the 404 envelope.
    router = Router(routes=route_list, lifespan=lifespan, redirect_slashes=False)
    profile_names = frozenset(settings.profiles)
    app = EdgeMiddleware(
        # Fixed paths by one dict lookup; the router for the rest (and every 404/405).
        FastRouter(router),
        cors=CorsPolicy(settings.cors.allow_origins, settings.cors.max_age_seconds),
        path_prefix=settings.server.path_prefix,
        access_log=settings.logging.access_log,
        metrics=runtime.counting,
        route_paths={
            route.endpoint: route.path for route in route_list if isinstance(route, Route)
        },
        profile_label=lambda name: name if name in profile_names else "",
        client_address=runtime.auth.client_address,
    )
    app.runtime = runtime  # type: ignore[attr-defined]
    return runtime.instrument(app)  # one server span per request when tracing is on


def app_from_environment() -> ASGIApp:
    """Factory for ASGI servers and `--workers`: reads the config named by VAPI_PROXY_CONFIG."""
    path = os.environ.get("VAPI_PROXY_CONFIG")
    if not path:
        raise ConfigError(["VAPI_PROXY_CONFIG: not set (the path of the proxy's YAML config)"])
    settings = load_settings(path)
    configure_logging(settings.logging.level, settings.logging.format)
    return create_app(settings, load_secrets())
