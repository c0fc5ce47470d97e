"""Dispatch: fixed paths by one lookup, the same handler Starlette's router would have chosen."""

from __future__ import annotations

import asyncio

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vapi_proxy.edge.routing import FastRouter, fixed_paths


def answer(text: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> Response:
        return Response(text)

    return endpoint


def call(app: FastRouter, method: str, path: str) -> tuple[int, bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


def test_an_earlier_route_that_matches_keeps_the_path() -> None:
    routes = [
        Route("/items/{name}", answer("param"), methods=["GET"]),
        Route("/items/fixed", answer("fixed"), methods=["GET", "POST"]),
    ]
    table = fixed_paths(routes)
    # GET (and HEAD) /items/fixed are the parameterised route's in Starlette's order: not taken.
    assert set(table["/items/fixed"]) == {"POST"}
    app = FastRouter(Router(routes))
    assert call(app, "GET", "/items/fixed") == (200, b"param")
    assert call(app, "POST", "/items/fixed") == (200, b"fixed")


def test_other_methods_and_paths_reach_the_router() -> None:
    routes = [Route("/call/web", answer("web"), methods=["POST"])]
    app = FastRouter(Router(routes, redirect_slashes=False))
    assert call(app, "POST", "/call/web") == (200, b"web")
    assert call(app, "GET", "/call/web")[0] == 405
    assert call(app, "POST", "/call/web/")[0] == 404


def test_the_endpoint_is_in_the_scope_for_the_metrics_label() -> None:
    endpoint = answer("x")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "query_string": b""}
    app = FastRouter(Router([Route("/x", endpoint, methods=["POST"])]))
    asyncio.run(app(scope, receive, send))
    assert scope["endpoint"] is endpoint


def test_a_plain_function_or_a_route_with_middleware_is_left_to_the_router() -> None:
    def blocking(request: Request) -> Response:
        return Response("sync")

    class Tag:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            scope["tagged"] = True
            await self.app(scope, receive, send)

    routes = [
        Route("/sync", blocking, methods=["GET"]),
        Route("/tagged", answer("t"), methods=["GET"], middleware=[Middleware(Tag)]),
        Route("/plain", answer("p"), methods=["GET"]),
    ]
    assert set(fixed_paths(routes)) == {"/plain"}


def test_an_asgi_app_endpoint_is_called_directly() -> None:
    class Hook:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await Response("asgi")(scope, receive, send)

    routes = [Route("/hook", Hook(), methods=["POST"])]
    assert set(fixed_paths(routes)["/hook"]) == {"POST"}
    assert call(FastRouter(Router(routes)), "POST", "/hook") == (200, b"asgi")
