"""Optional OpenTelemetry tracing (`tracing.enabled`, the `otel` extra).

Imported only when tracing is on (`Runtime.build`), so a proxy without it never imports
OpenTelemetry and its request path is the untraced one. When on, the runtime's components are
wrapped in place: the auth chain, the limiter, the Vapi client and the ledger get traced methods
(every holder of the object, the admission unit and the webhook receiver included, sees them),
and the ASGI app gets one server span per request around the edge, so the access log line and
every other line written for the request carry its `trace_id` and `span_id`.

What a span records is chosen, never dumped: method, route, status, profile, the kind of
identity, the limits' outcome, Vapi's status. Never a header, a token, a body, a key, a caller's
subject or address, nor an exception's text (only its type, and a refusal's own message, which
is what the client was told). Nothing is propagated to Vapi: trace ids stay inside.

The tracer provider is the process's global one when something already configured an SDK
provider (`opentelemetry-instrument`, an embedding app); otherwise one is built from the
standard `OTEL_*` variables (`OTEL_TRACES_EXPORTER`, `OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`) and made the global one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vapi_proxy import __version__
from vapi_proxy.edge.middleware import EdgeMiddleware, RequestState
from vapi_proxy.errors import ProxyError, ServiceUnavailableError, TooManyRequestsError
from vapi_proxy.logs import log_trace_ids
from vapi_proxy.settings import ConfigError, TracingSettings
from vapi_proxy.upstream.response import endpoint_label

if TYPE_CHECKING:
    from vapi_proxy.auth.chain import AuthChain
    from vapi_proxy.auth.identity import Identity
    from vapi_proxy.edge.client_address import ClientAddressResolver
    from vapi_proxy.ledger.store import Ledger
    from vapi_proxy.limits.base import AdmissionRequest, Limiter, Reservation
    from vapi_proxy.upstream.client import UpstreamClient, UpstreamResponse
    from vapi_proxy.upstream.stream import UpstreamStream


SERVICE_NAME = "vapi-proxy"
LEDGER_METHODS = (
    "record_call",
    "get_call",
    "session_owner",
    "list_calls",
    "adopt_call",
    "apply_events",
    "usage",
    "idempotency_claim",
    "idempotency_complete",
    "idempotency_abandon",
    "idempotency_get",
)
"""The ledger's request-path operations (maintenance and the outbox drain are left out: they
would start a trace of their own every few seconds)."""
LIMITS_METHODS = ("commit", "release", "settle")
"""Besides `reserve`, which records the outcome."""
_OTLP_EXPORTERS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_EXPORTER_PACKAGES = {
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http (in the otel extra)",
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
}


# --- the provider ---------------------------------------------------------------------------


def resource(environ: Mapping[str, str]) -> Resource:
    """The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named `vapi-proxy`
    and versioned unless those say otherwise."""
    given = environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    defaults: dict[str, str] = {}
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in given:
        defaults["service.name"] = SERVICE_NAME
    if "service.version=" not in given:
        defaults["service.version"] = __version__
    return Resource.create(defaults)


def span_exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters `OTEL_TRACES_EXPORTER` names (default `otlp`; `none`: none), each built by
    the entry point its package registers, so any installed exporter can be named. `otlp` is
    OTLP over HTTP unless `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` says `grpc` (the spec's default,
    and the exporter the extra ships); each reads its own `OTEL_EXPORTER_*` settings."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    exporters: list[SpanExporter] = []
    for name in names:
        if name in ("", "none"):
            continue
        entry = name
        if name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            if protocol not in _OTLP_EXPORTERS:
                raise ConfigError(
                    [
                        f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not an OTLP protocol "
                        "(http/protobuf or grpc)"
                    ]
                )
            entry = _OTLP_EXPORTERS[protocol]
        found = entry_points(group="opentelemetry_traces_exporter", name=entry)
        if not found:
            package = _EXPORTER_PACKAGES.get(entry, f"the package that provides {entry!r}")
            raise ConfigError(
                [f"OTEL_TRACES_EXPORTER: {name!r} needs {package}, which is not installed"]
            )
        exporter_class = next(iter(found)).load()
        exporters.append(exporter_class())
    return exporters


def tracer_provider(environ: Mapping[str, str] | None = None) -> TracerProvider:
    """The process's SDK tracer provider: the one already configured, or a new one from the
    environment (made global, so a later runtime in this process shares it)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    environ = os.environ if environ is None else environ
    provider = TracerProvider(resource=resource(environ))  # sampler: OTEL_TRACES_SAMPLER
    for exporter in span_exporters(environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def recording() -> bool:
    """Whether the current span records (a sampled request): the wrappers add spans only then."""
    return trace.get_current_span().is_recording()


def current_ids() -> tuple[str, str] | None:
    """The current span's (trace id, span id) in hex, for the logs."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# --- spans ----------------------------------------------------------------------------------


def mark_failed(span: Span, exc: BaseException) -> None:
    """A refusal or failure on `span`: ERROR with the exception's type, and a refusal's status
    and message (what the client was told). Never an exception's own text otherwise: a driver's
    error may quote a URL with its password."""
    if isinstance(exc, asyncio.CancelledError):
        span.set_attribute("error.type", "cancelled")
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
        return
    span.set_attribute("error.type", type(exc).__name__)
    if isinstance(exc, ProxyError):
        span.set_attribute("vapi_proxy.refusal.status_code", exc.status_code)
        span.set_status(Status(StatusCode.ERROR, str(exc)[:300]))
    else:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


class Tracing:
    """The tracer and the wrappers that put spans around the runtime's components."""

    def __init__(
        self,
        provider: TracerProvider,
        settings: TracingSettings,
        client_address: ClientAddressResolver,
    ) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("vapi_proxy", __version__)
        self.accept_traceparent = settings.accept_traceparent
        self.client_address = client_address

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        context: Context | None = None,
    ) -> Iterator[Span]:
        """A span around a step; an exception leaving it marks it failed (`mark_failed`).

        A step's span is made only under a recording one (a sampled request): a request the
        sampler dropped, or work outside any request, costs no span per step."""
        if context is None:
            current = trace.get_current_span()
            if not current.is_recording():
                yield current
                return
        with self.tracer.start_as_current_span(
            name,
            context=context,
            kind=kind,
            attributes=dict(attributes) if attributes else None,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                mark_failed(span, exc)
                raise

    def _wrap(self, owner: object, method: str, name: str, **attributes: Any) -> None:
        """Replace `owner.method` (a coroutine method) on the instance with a traced one."""
        inner: Callable[..., Awaitable[Any]] = getattr(owner, method)
        span = self.span

        @functools.wraps(inner)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            if not recording():
                return await inner(*args, **kwargs)
            with span(name, attributes=attributes):
                return await inner(*args, **kwargs)

        setattr(owner, method, traced)

    def instrument_auth(self, auth: AuthChain) -> None:
        inner = auth.authenticate
        span = self.span

        @functools.wraps(inner)
        async def authenticate(
            authorization: str | None,
            client_host: str,
            headers: Mapping[str, str] | None = None,
        ) -> Identity:
            server = trace.get_current_span()
            if not server.is_recording():
                return await inner(authorization, client_host, headers)
            with span("auth") as current:
                identity = await inner(authorization, client_host, headers)
                current.set_attribute("vapi_proxy.identity.kind", identity.method)
            server.set_attribute("vapi_proxy.identity.kind", identity.method)
            return identity

        auth.authenticate = authenticate  # type: ignore[method-assign]

    def instrument_limiter(self, limiter: Limiter) -> None:
        inner = limiter.reserve
        tracer_span = self.span

        @functools.wraps(inner)
        async def reserve(req: AdmissionRequest) -> Reservation:
            if not recording():
                return await inner(req)
            attributes = {"vapi_proxy.profile": req.profile or "", "vapi_proxy.kind": req.kind}
            with tracer_span("limits reserve", attributes=attributes) as span:
                try:
                    reservation = await inner(req)
                except TooManyRequestsError as exc:
                    span.set_attribute("vapi_proxy.limits.outcome", "refused")
                    if exc.limit:
                        span.set_attribute("vapi_proxy.limits.refused_by", exc.limit)
                    raise
                except ServiceUnavailableError:
                    span.set_attribute("vapi_proxy.limits.outcome", "unavailable")
                    raise
                outcome = "degraded" if reservation.degraded else "admitted"
                span.set_attribute("vapi_proxy.limits.outcome", outcome)
                return reservation

        limiter.reserve = reserve  # type: ignore[method-assign]
        for method in LIMITS_METHODS:
            self._wrap(limiter, method, f"limits {method}")

    def instrument_ledger(self, ledger: Ledger) -> None:
        system = ledger.database.dialect
        for method in LEDGER_METHODS:
            self._wrap(ledger, method, f"ledger {method}", **{"db.system.name": system})

    def instrument_upstream(self, upstream: UpstreamClient) -> None:
        base = urlsplit(upstream.base_url)
        server = {"server.address": base.hostname or "", "server.port": base.port or 443}
        if base.port is None and base.scheme == "http":
            server["server.port"] = 80
        request = upstream.request
        stream = upstream.stream
        span = self.span

        def attributes(method: str, path: str) -> dict[str, Any]:
            return {"http.request.method": method, "url.template": endpoint_label(path), **server}

        def answered(current: Span, status: int) -> None:
            current.set_attribute("http.response.status_code", status)
            if status >= 400:  # a client span's error: any 4xx or 5xx (Vapi refused)
                current.set_attribute("error.type", str(status))
                current.set_status(Status(StatusCode.ERROR, f"Vapi answered {status}"))

        @functools.wraps(request)
        async def traced_request(
            method: str, path: str, body: bytes | None = None
        ) -> UpstreamResponse:
            if not recording():
                return await request(method, path, body)
            name = f"{method} {endpoint_label(path)}"
            with span(name, kind=SpanKind.CLIENT, attributes=attributes(method, path)) as current:
                reply = await request(method, path, body)
                answered(current, reply.status)
                return reply

        @contextlib.asynccontextmanager
        async def traced_stream(
            method: str, path: str, body: bytes | None = None, *, idle_timeout: float = 30.0
        ) -> AsyncIterator[UpstreamStream]:
            name = f"{method} {endpoint_label(path)}"
            with span(name, kind=SpanKind.CLIENT, attributes=attributes(method, path)) as current:
                async with stream(method, path, body, idle_timeout=idle_timeout) as reply:
                    answered(current, reply.status)
                    yield reply

        upstream.request = traced_request  # type: ignore[method-assign]
        upstream.stream = traced_stream  # type: ignore[method-assign]

    # --- the server span ---------------------------------------------------------------------

    def parent(self, scope: Scope) -> Context:
        """The context a request's server span starts in: the caller's trace when
        `accept_traceparent` allows it for this peer, else a new trace."""
        mode = self.accept_traceparent
        if mode == "never":
            return Context()
        if mode == "trusted_proxies":
            client = scope.get("client")
            resolver = self.client_address
            if not client or not resolver.is_in(client[0], {}, resolver.trusted):
                return Context()
        carrier = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        return propagate.extract(carrier, context=Context())

    def wrap_app(self, app: ASGIApp) -> ASGIApp:
        """One server span per HTTP request around `app` (the edge), named by its route."""
        if isinstance(app, EdgeMiddleware):
            # Inside the edge, after routing: the route template and the request's facts.
            app.app = _RouteNotes(app.app, app.route_paths)
        return _ServerSpans(app, self)

    async def aclose(self) -> None:
        """Send what is buffered (a stopping worker would lose its last spans)."""
        await asyncio.to_thread(self.provider.force_flush, 5000)


SPAN_KEY = "vapi_proxy.span"


class _ServerSpans:
    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        attributes = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        with self.tracing.span(
            method, kind=SpanKind.SERVER, attributes=attributes, context=self.tracing.parent(scope)
        ) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:  # a server span's error: 5xx only (4xx is the caller's)
                        span.set_attribute("error.type", str(status))
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app({**scope, SPAN_KEY: span}, receive, traced_send)


class _RouteNotes:
    """Names the server span by its route and adds the request's facts as routing ends."""

    def __init__(self, app: ASGIApp, route_paths: Mapping[Any, str]) -> None:
        self.app = app
        self.route_paths = route_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            span: Span | None = scope.get(SPAN_KEY)
            if span is not None and span.is_recording():
                route = self.route_paths.get(scope.get("endpoint"))
                if route is not None:
                    span.update_name(f"{scope['method']} {route}")
                    span.set_attribute("http.route", route)
                state: RequestState | None = scope.get("vapi_proxy.request")
                if state is not None:
                    span.set_attribute("vapi_proxy.request_id", state.request_id)
                    if state.profile is not None:
                        span.set_attribute("vapi_proxy.profile", state.profile)
                    if state.upstream_status is not None:
                        span.set_attribute("vapi_proxy.upstream.status_code", state.upstream_status)


def install(
    settings: TracingSettings,
    *,
    auth: AuthChain,
    limiter: Limiter,
    ledger: Ledger,
    upstream: UpstreamClient,
) -> Tracing:
    """Trace the runtime's components (in place) and add trace ids to the logs."""
    tracing = Tracing(tracer_provider(), settings, auth.client_address)
    tracing.instrument_auth(auth)
    tracing.instrument_limiter(limiter)
    tracing.instrument_ledger(ledger)
    tracing.instrument_upstream(upstream)
    log_trace_ids(current_ids)
    return tracing


__all__ = ["Tracing", "install", "mark_failed", "resource", "span_exporters", "tracer_provider"]
