"""The edge: one pure ASGI middleware in front of every route.

In order: a request id (`X-Request-ID` in and out); path normalisation (a configured prefix,
`//call/web` from a trailing-slash base URL); CORS against the explicit origin list, answering
preflights before any authentication and refusing state-changing requests from other origins;
the one JSON error envelope for every failure, never a stack trace; one access log line.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vapi_proxy.edge.client_address import ClientAddressResolver
from vapi_proxy.errors import ProxyError, TooManyRequestsError, envelope
from vapi_proxy.logs import ACCESS_LOGGER
from vapi_proxy.metrics import Metrics

logger = logging.getLogger("vapi_proxy.edge")
access_logger = logging.getLogger(ACCESS_LOGGER)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_SLASHES = re.compile(r"/{2,}")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CLIENT_LEFT = 499
"""The status logged and counted for a request whose client went away before the proxy could
answer it (nginx's 499): a 4xx, nobody's server error, and nothing is sent."""
ALLOW_HEADERS = "authorization, content-type, idempotency-key, x-api-key, x-request-id"
EXPOSE_HEADERS = b"x-request-id, retry-after"


@dataclass(slots=True)
class RequestState:
    """Per-request facts the handlers fill in for the access log."""

    request_id: str
    client: str | None = None
    """The client's address as the app's one `ClientAddressResolver` works it out."""
    profile: str | None = None
    identity: str | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None


class _RequestIds:
    """Request ids need to be unique, not secret: a random per-process prefix and a counter
    are as good as uuid4 here without a getrandom() call per request (visible in the profile).
    The prefix is renewed in a forked child (at the fork, not by asking `os.getpid()` per
    request: a system call, and a slow one on some hosts), so pre-forking servers never repeat
    an id."""

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


next_request_id = _RequestIds().next
"""A fresh request id: every request's, and the protocol's for one too malformed to reach the
app (cli/drain.py)."""


def plain_headers(scope: Scope) -> dict[str, str]:
    """The request's headers as a dict of lower-case names, repeated ones joined with ", "
    (RFC 9110 §5.3), built once per request: plain dict lookups, where Starlette's `Headers.get`
    scans every header and raises and catches KeyError for an absent one."""
    cached: dict[str, str] | None = scope.get("vapi_proxy.headers")
    if cached is None:
        cached = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            cached[name] = f"{cached[name]}, {value}" if name in cached else value
        scope["vapi_proxy.headers"] = cached
    return cached


def request_state(scope: Scope) -> RequestState:
    state: RequestState = scope["vapi_proxy.request"]
    return state


class CorsPolicy:
    """An explicit origin list; '*' allows any origin without credentials."""

    def __init__(self, origins: list[str], max_age: int) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.lower() for o in origins if o != "*")
        self.max_age = str(max_age).encode()

    def allows(self, origin: str) -> bool:
        return self.any or origin.lower() in self.origins

    def allow_origin_value(self, origin: bytes) -> bytes:
        return b"*" if self.any else origin


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        cors: CorsPolicy,
        path_prefix: str = "",
        access_log: bool = True,
        metrics: Metrics | None = None,
        route_paths: Mapping[Any, str] | None = None,
        profile_label: Callable[[str | None], str] = lambda name: "",
        client_address: ClientAddressResolver | None = None,
    ) -> None:
        self.app = app
        self.client_address = client_address or ClientAddressResolver(())
        self.cors = cors
        self.prefix = path_prefix
        self.access_log = access_log
        self.metrics = metrics
        # Endpoint → route template, so metrics are labelled by route, never by raw path.
        self.route_paths = dict(route_paths or {})
        self.profile_label = profile_label

    def _client(self, peer: str, scope: Scope) -> str:
        # The headers are needed only when a peer could be a trusted proxy.
        headers = plain_headers(scope) if self.client_address.trusted else {}
        return self.client_address.resolve(peer, headers)

    def _normalise(self, path: str) -> str:
        if "//" in path:
            path = _SLASHES.sub("/", path)
        prefix = self.prefix
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix) :] or "/"
        return path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        origin: bytes | None = None
        preflight_method: bytes | None = None
        request_id: str | None = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"x-request-id":
                text = value.decode("latin-1")
                if _REQUEST_ID.fullmatch(text):
                    request_id = text
            elif name == b"access-control-request-method":
                preflight_method = value
        if request_id is None:
            request_id = next_request_id()
        client = scope.get("client")
        state = RequestState(
            request_id=request_id,
            client=self._client(client[0], scope) if client else None,
        )
        path = self._normalise(scope["path"])
        scope = dict(scope)
        scope["path"] = path
        scope["raw_path"] = path.encode()
        scope["vapi_proxy.request"] = state
        # Starlette's router raises HTTPException (rather than answering in plain text) when
        # it finds "app" in the scope; we turn those into the envelope below.
        scope["app"] = self
        method: str = scope["method"]
        status = 500

        origin_ok = origin is not None and self.cors.allows(origin.decode("latin-1"))
        cors_headers: list[tuple[bytes, bytes]] = []
        # Added to the app's response headers: the request id, then CORS.
        added: list[tuple[bytes, bytes]] = [(b"x-request-id", request_id.encode())]
        if origin is not None:
            cors_headers.append((b"vary", b"Origin"))
            if origin_ok:
                cors_headers.append(
                    (b"access-control-allow-origin", self.cors.allow_origin_value(origin))
                )
                added.append((b"access-control-expose-headers", EXPOSE_HEADERS))
            added.extend(cors_headers)

        metrics = self.metrics
        duration: Any = None
        started_response = False

        def count() -> None:
            # As the response starts (or at the end if none did): a scrape sent after the client
            # read its reply must already see the request.
            nonlocal duration
            if metrics is None or duration is not None:
                return
            if method == "OPTIONS" and preflight_method is not None:
                route = "preflight"
            else:
                route = self.route_paths.get(scope.get("endpoint"), "unmatched")
            duration = metrics.count_request(
                route, method, status, self.profile_label(state.profile)
            )

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                count()
                message = {**message, "headers": [*message.get("headers", ()), *added]}
            await send(message)

        try:
            if method == "OPTIONS" and origin is not None and preflight_method is not None:
                status = await self._preflight(send, origin_ok, cors_headers, request_id)
            elif (
                origin is not None
                and not origin_ok
                and method not in _SAFE_METHODS
                and not _same_origin(origin, scope)
            ):
                await self._error(
                    send_wrapper,
                    ProxyError("This origin is not allowed to use the proxy.", status_code=403),
                    request_id,
                )
            else:
                try:
                    await self.app(scope, receive, send_wrapper)
                except ClientDisconnect:
                    # Raised where the body is read (edge/body.py, or Starlette's own reader):
                    # the client closed its connection mid-request. No one is left to answer,
                    # and it is not the proxy's failure.
                    if not started_response:
                        status = CLIENT_LEFT
                    logger.debug(
                        "client left before sending its whole request",
                        extra={"fields": {"request_id": request_id}},
                    )
                except Exception as exc:
                    refusal = self._refusal(exc, scope, request_id)
                    if started_response:
                        raise
                    await self._error(send_wrapper, refusal, request_id)
                except asyncio.CancelledError as exc:
                    # A cancellation nobody asked this task for (a library's own bug, such as
                    # aiohttp 3.9.0 leaking one into the next request after a timeout) is a
                    # failure like any other: the envelope, not the server's bare 500 text. A
                    # real one (shutdown, a cancel scope) propagates.
                    task = asyncio.current_task()
                    if started_response or task is None or task.cancelling():
                        raise
                    await self._error(
                        send_wrapper, self._refusal(exc, scope, request_id), request_id
                    )
        finally:
            count()
            if duration is not None:
                duration.observe(time.perf_counter() - started)
            if self.access_log and access_logger.isEnabledFor(logging.INFO):
                access_logger.info(
                    "request",
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "method": method,
                            "path": path,
                            "status": status,
                            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                            "profile": state.profile,
                            "identity": state.identity,
                            "upstream_status": state.upstream_status,
                            "upstream_ms": state.upstream_ms,
                        }
                    },
                )

    def _refusal(self, exc: BaseException, scope: Scope, request_id: str) -> ProxyError:
        """What the client is told of a failure (if its response has not started yet); a
        limit's refusal is counted and an unexpected error logged either way."""
        if isinstance(exc, ProxyError):
            if isinstance(exc, TooManyRequestsError) and exc.limit and self.metrics is not None:
                kind = "chat" if scope["path"].startswith("/chat") else "call"
                self.metrics.limit_refusals.labels(exc.limit, kind).inc()
            return exc
        if isinstance(exc, HTTPException):
            return _from_http_exception(exc, scope)
        logger.exception("unhandled error", extra={"fields": {"request_id": request_id}})
        return ProxyError(f"Internal error. Quote request id {request_id} when reporting it.")

    async def _preflight(
        self,
        send: Send,
        origin_ok: bool,
        cors_headers: list[tuple[bytes, bytes]],
        request_id: str,
    ) -> int:
        headers = [
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
            (b"x-request-id", request_id.encode()),
            (b"content-length", b"0"),
        ]
        if not origin_ok:
            # No CORS headers: the browser blocks the real request; say why to curl users.
            body = orjson.dumps(
                envelope(403, "This origin is not allowed to use the proxy.", request_id)
            )
            headers[-1] = (b"content-length", str(len(body)).encode())
            headers.append((b"content-type", b"application/json"))
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return 403
        headers.extend(h for h in cors_headers if h[0] != b"vary")
        headers += [
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", self.cors.max_age),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return 204

    @staticmethod
    async def _error(send: Send, exc: ProxyError, request_id: str) -> None:
        body = orjson.dumps(envelope(exc.status_code, exc.message, request_id, exc.reason))
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        headers.extend((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
        await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _same_origin(origin: bytes, scope: Scope) -> bool:
    """Whether `Origin` names this very host (a page the proxy serves itself, such as the
    operator console, posting back to it): not a cross-origin request, so not CORS's business."""
    authority = origin.partition(b"://")[2]
    if not authority:
        return False
    for name, value in scope["headers"]:
        if name == b"host":
            return bool(value.lower() == authority.lower())
    return False


def _from_http_exception(exc: HTTPException, scope: Scope) -> ProxyError:
    headers: dict[str, Any] = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"Cannot {scope['method']} {scope['path']}: no such route."
    elif exc.status_code == 405:
        allowed = headers.get("Allow", "")
        message = f"Method {scope['method']} is not allowed here; use {allowed}."
    else:
        message = str(exc.detail)
    return ProxyError(message, status_code=exc.status_code, headers=headers)
