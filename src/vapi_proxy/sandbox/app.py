"""The simulator's ASGI app: a Starlette shell around one raw-ASGI dispatcher.

The dispatcher does, per request: admin gate, fault injection, body parsing, routing, auth,
logging, then the handler, rendering any `VapiError` in Vapi's NestJS shape.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware

from . import admin, assistant_routes, call_routes, chat_routes, squad_routes
from .asgi import Message, Receive, Request, Scope, Send, drop_connection, send_json
from .auth import Caller
from .clock import Clock
from .errors import VapiError
from .faults import fault_body
from .handlers import Context, Handler
from .settings import FaultSpec, SandboxSettings
from .state import SandboxState

Access = Literal["key", "none", "admin"]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access = "key"


ROUTES = [
    Route("POST", "/call/web", call_routes.create_web_call),
    Route("POST", "/call", call_routes.create_call),
    Route("POST", "/call/phone", call_routes.create_call),
    Route("GET", "/call", call_routes.list_calls),
    Route("GET", "/call/{id}", call_routes.get_call),
    Route("POST", "/{id}/control", call_routes.control, "none"),
    Route("POST", "/assistant", assistant_routes.create_assistant),
    Route("GET", "/assistant", assistant_routes.list_assistants),
    Route("GET", "/assistant/{id}", assistant_routes.get_assistant),
    Route("GET", "/squad", squad_routes.list_squads),
    Route("GET", "/squad/{id}", squad_routes.get_squad),
    Route("GET", "/workflow/{id}", squad_routes.get_workflow),
    Route("POST", "/chat", chat_routes.create_chat),
    Route("POST", "/chat/responses", chat_routes.create_response),
    Route("POST", "/chat/web", chat_routes.create_web_chat),
    Route("POST", "/chat/web/responses", chat_routes.create_web_response),
    Route("GET", "/chat", chat_routes.list_chats),
    Route("GET", "/chat/{id}", chat_routes.get_chat),
    Route("GET", "/__sandbox/requests", admin.list_requests, "admin"),
    Route("DELETE", "/__sandbox/requests", admin.clear_requests, "admin"),
    Route("GET", "/__sandbox/webhooks", admin.list_webhooks, "admin"),
    Route("DELETE", "/__sandbox/webhooks", admin.clear_webhooks, "admin"),
    Route("GET", "/__sandbox/calls", admin.list_calls, "admin"),
    Route("POST", "/__sandbox/calls/{id}/end", admin.end, "admin"),
    Route("POST", "/__sandbox/inbound", admin.inbound, "admin"),
    Route("GET", "/__sandbox/faults", admin.list_faults, "admin"),
    Route("POST", "/__sandbox/faults", admin.add_fault, "admin"),
    Route("DELETE", "/__sandbox/faults", admin.clear_faults, "admin"),
]


class Router:
    """Exact paths by dict lookup (the hot ones), `{id}` patterns by regex after that."""

    def __init__(self, routes: list[Route]) -> None:
        self._exact: dict[tuple[str, str], Route] = {}
        self._patterns: list[tuple[str, re.Pattern[str], Route]] = []
        for route in routes:
            if "{" in route.path:
                regex = re.escape(route.path).replace(r"\{id\}", r"(?P<id>[^/]+)")
                self._patterns.append((route.method, re.compile(f"^{regex}$"), route))
            else:
                self._exact[(route.method, route.path)] = route

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        found = self._exact.get((method, path))
        if found is not None:
            return found, {}
        for route_method, regex, route in self._patterns:
            if route_method == method:
                m = regex.match(path)
                if m is not None:
                    return route, m.groupdict()
        return None


def _cannot(method: str, path: str) -> VapiError:
    # NestJS's answer for an unknown route.
    return VapiError(404, f"Cannot {method} {path}")


class Dispatcher:
    """Pure ASGI middleware that answers every HTTP request itself."""

    def __init__(self, app: Any, state: SandboxState) -> None:
        self.app = app
        self.state = state
        self.router = Router(ROUTES)
        self._cors = frozenset(state.settings.cors_allow_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if self._cors:
            origin = request.header(b"origin")
            if origin is not None and ("*" in self._cors or origin in self._cors):
                if request.method == "OPTIONS":
                    await _preflight(send, origin)
                    return
                send = _with_cors(send, origin)
        try:
            await self._handle(request, send)
        except VapiError as exc:
            await send_json(send, exc.status, exc.body(), exc.headers)

    async def _handle(self, request: Request, send: Send) -> None:
        state = self.state
        method = request.method
        path = request.path
        if "//" in path:
            # The Web SDK concatenates a base URL with a trailing slash into `//call/web`.
            path = re.sub("/+", "/", path)
        admin_path = path.startswith("/__sandbox")
        if admin_path and not state.settings.admin_enabled:
            raise _cannot(method, path)
        fault = state.faults.take(method, path) if state.faults and not admin_path else None
        matched = self.router.match(method, path)
        keyed = matched is not None and matched[0].access == "key"
        caller: Caller | None = None
        refusal: VapiError | None = None
        if keyed:
            try:
                caller = state.auth.identify(request.header(b"authorization"))
            except VapiError as exc:
                refusal = exc
        if fault is not None and fault.action == "drop-before-body":
            self._record(request, path, None, caller)
            await self._pause(fault.latency_seconds)
            await self._drop(request)
            return
        await request.read()
        body: Any = None
        bad_json = False
        if request.body:
            try:
                body = orjson.loads(request.body)
            except orjson.JSONDecodeError:
                body, bad_json = request.body.decode("utf-8", "replace"), True
        if not admin_path:
            # Recorded on arrival, before any injected delay: a client that gave up on a slow
            # reply must not see its request appear in the log later (another test's view).
            self._record(request, path, body, caller)
        if fault is not None and await self._fault(fault, request, send):
            return
        if bad_json:
            raise VapiError(400, "Unexpected token in JSON")
        if matched is None:
            raise _cannot(method, path)
        if refusal is not None:
            raise refusal
        route, params = matched
        ctx = Context(state, request, body, caller, send, params, fault)
        reply = await route.handler(ctx)
        if reply is not None:
            await send_json(send, reply[0], reply[1])

    def _record(self, request: Request, path: str, body: Any, caller: Caller | None) -> None:
        recorder = self.state.requests
        if recorder.enabled:
            query = request.scope.get("query_string", b"").decode("latin-1")
            kind = caller.kind if caller is not None else None
            recorder.record(
                request.method, path, query, request.headers, body, kind, self.state.clock.now()
            )

    async def _pause(self, seconds: float) -> None:
        """An injected latency, on the simulator's clock (a `ManualClock` test moves it)."""
        clock = self.state.clock
        await clock.sleep_until(clock.now() + seconds)

    async def _fault(self, fault: FaultSpec, request: Request, send: Send) -> bool:
        """Apply a fault once the body is in; True when it has answered (or killed) the request."""
        if fault.latency_seconds:
            await self._pause(fault.latency_seconds)
        if fault.action == "drop-after-body":
            return await self._drop(request)
        if fault.action == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            await send_json(send, fault.status, fault_body(fault.status, fault.message), headers)
            return True
        return False

    @staticmethod
    async def _drop(request: Request) -> bool:
        if not await drop_connection(request.receive):
            # Not under uvicorn: an exception is the closest to a dropped connection.
            raise ConnectionAbortedError("sandbox fault: connection dropped")
        return True


async def _preflight(send: Send, origin: str) -> None:
    """Answer a CORS preflight: the Web SDK sends `Authorization` and JSON, cross-origin."""
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
        (b"access-control-allow-headers", b"authorization, content-type"),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _with_cors(send: Send, origin: str) -> Send:
    extra = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


def create_app(settings: SandboxSettings, *, clock: Clock | None = None) -> Starlette:
    """The simulator as an ASGI app; its state is `app.state.sandbox` (a `SandboxState`)."""
    state = SandboxState(settings, clock)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await state.close()

    app = Starlette(middleware=[Middleware(Dispatcher, state=state)], lifespan=lifespan)
    # The dispatcher answers every HTTP request itself; should one ever reach the router, it
    # must not answer with a redirect built from the Host header.
    app.router.redirect_slashes = False
    app.state.sandbox = state
    return app
