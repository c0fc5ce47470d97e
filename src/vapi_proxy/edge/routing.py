"""Dispatch: a request for a fixed path (`POST /call/web`, the chat paths, `/healthz`, ...) goes
straight to its handler by one dict lookup; everything else (paths with parameters, unknown paths,
a method a path does not take) goes through Starlette's `Router`, which holds every route and
answers the 404 and 405 refusals (the edge renders them in the envelope).

Starlette's router tries each route's regex in turn and wraps each handler in an exception layer
that re-raises what it has no handler for (this app registers none); for the paths clients call
all the time that was a measurable share of a request. Nothing about which handler answers
changes: a fixed path is taken here only for a method Starlette's router would have given to that
same route (checked at start-up against every route listed before it), so the two agree on every
request.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette._utils import is_async_callable
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[ASGIApp]]


class _Direct:
    """One handler called as Starlette's `request_response` would, minus its exception layer."""

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["endpoint"] = self.endpoint  # what Starlette sets: metrics label by it
        response = await self.endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


class _DirectApp:
    """A route whose endpoint is itself an ASGI app (Starlette calls it as it is)."""

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: ASGIApp) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["endpoint"] = self.endpoint
        await self.endpoint(scope, receive, send)


class FastRouter:
    """`Router`, with the fixed paths looked up in one dict first."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.fixed = fixed_paths(router.routes)

    @property
    def routes(self) -> list[BaseRoute]:
        """The router's routes (what tools and tests that read an app's routes look at)."""
        return self.router.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            methods = self.fixed.get(scope["path"])
            if methods is not None:
                direct = methods.get(scope["method"])
                if direct is not None:
                    await direct(scope, receive, send)
                    return
        await self.router(scope, receive, send)


def _direct(route: Route) -> _Direct | _DirectApp | None:
    """How to call the route as Starlette would, or None to leave it to the router: a plain
    function (Starlette runs it in a thread) or a route with its own middleware."""
    endpoint = route.endpoint
    if inspect.isfunction(endpoint) or inspect.ismethod(endpoint):
        wrapped = getattr(route.app, "__qualname__", "") == "request_response.<locals>.app"
        return _Direct(endpoint) if wrapped and is_async_callable(endpoint) else None
    return _DirectApp(endpoint) if route.app is endpoint else None


def fixed_paths(routes: Sequence[BaseRoute]) -> dict[str, dict[str, _Direct | _DirectApp]]:
    """path → method → handler, for every route without path parameters that Starlette would
    call plainly, and only for the (path, method) pairs Starlette would give to it: an earlier
    route that also fully matches the pair keeps it (and the router with it)."""
    table: dict[str, dict[str, _Direct | _DirectApp]] = {}
    for index, route in enumerate(routes):
        if not isinstance(route, Route) or route.param_convertors or route.methods is None:
            continue
        direct = _direct(route)
        if direct is None:
            continue
        for method in sorted(route.methods):
            probe: dict[str, Any] = {
                "type": "http",
                "path": route.path,
                "root_path": "",
                "method": method,
            }
            if any(earlier.matches(probe)[0] is Match.FULL for earlier in routes[:index]):
                continue
            table.setdefault(route.path, {}).setdefault(method, direct)
    return table
