"""OpenTelemetry tracing (`tracing.enabled`): the span tree of a request through a real proxy in
front of the simulator, recorded by the real SDK into its in-memory exporter; refusals, trace
ids in the logs, who may continue a trace, the exporters the environment names, and the
untraced path importing nothing of OpenTelemetry."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.http import assert_envelope, post
from tests.support.proxy import ProxyFactory
from vapi_proxy.auth.api_key import generate_key
from vapi_proxy.errors import ProxyError
from vapi_proxy.logs import JsonFormatter, log_trace_ids
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.settings import ConfigError, parse_settings
from vapi_proxy.testing import ServerThread
from vapi_proxy.tracing import resource, span_exporters

INCOMING_TRACE = "ab" * 16
INCOMING_SPAN = "cd" * 8
TRACEPARENT = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """The SDK's in-memory exporter on the process's tracer provider (the one the proxy uses
    when one is already configured, as under `opentelemetry-instrument`)."""
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()  # stops recording; the provider itself lives on with the process
    log_trace_ids(None)


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


def traced(patch: dict[str, Any] | None = None, **tracing: Any) -> Any:
    def apply(config: dict[str, Any]) -> None:
        config["tracing"] = {"enabled": True, **tracing}
        for key, value in (patch or {}).items():
            config[key] = value

    return apply


def request_trace(exporter: InMemorySpanExporter, request_id: str) -> list[ReadableSpan]:
    """The finished spans of the request with `request_id`, server span first. The server span
    ends just after the reply is sent, so it is waited for (at most 10 s, in 200 looks)."""
    for _ in range(200):
        finished = exporter.get_finished_spans()
        servers = [
            s
            for s in finished
            if s.kind is SpanKind.SERVER
            and (s.attributes or {}).get("vapi_proxy.request_id") == request_id
        ]
        if servers:
            server = servers[0]
            assert server.context is not None
            ours = [
                s
                for s in finished
                if s.context is not None and s.context.trace_id == server.context.trace_id
            ]
            return [server, *sorted((s for s in ours if s is not server), key=_start)]
        time.sleep(0.05)
    raise AssertionError(f"no server span for request {request_id}")


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


def children(server: ReadableSpan, spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    assert server.context is not None
    found = {}
    for span in spans:
        if span.parent is not None and span.parent.span_id == server.context.span_id:
            found[span.name] = span
    return found


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_a_web_call_is_one_server_span_with_auth_limits_vapi_and_ledger_under_it(
    make_proxy: ProxyFactory,
    sandbox: RunningSandbox,
    spans: InMemorySpanExporter,
    user_key: str,
) -> None:
    proxy = make_proxy(traced())
    reply = post(proxy, {"assistantId": "sales-coach"}, user_key)
    assert reply.status_code == 201, reply.text
    server, *rest = request_trace(spans, reply.headers["x-request-id"])

    assert server.name == "POST /call/web"
    assert server.parent is None  # a new trace
    assert attrs(server) | {
        "http.request.method": "POST",
        "http.route": "/call/web",
        "http.response.status_code": 201,
        "vapi_proxy.profile": "sales-coach",
        "vapi_proxy.identity.kind": "api_key",
        "vapi_proxy.upstream.status_code": 201,
    } == attrs(server)
    assert server.status.status_code is StatusCode.UNSET

    under = children(server, rest)
    order = [
        "auth",
        "policy",
        "limits reserve",
        "POST /call/web",
        "limits commit",
        "ledger record_call",
    ]
    assert [s.name for s in rest if s.name in order] == order
    assert set(under) >= set(order), sorted(under)
    assert attrs(under["auth"])["vapi_proxy.identity.kind"] == "api_key"
    # The policy step ends before the limits are asked: it is not the place time is lost.
    assert under["policy"].end_time <= under["limits reserve"].start_time
    assert attrs(under["limits reserve"]) == {
        "vapi_proxy.profile": "sales-coach",
        "vapi_proxy.kind": "call",
        "vapi_proxy.limits.outcome": "admitted",
    }
    upstream = under["POST /call/web"]
    assert upstream.kind is SpanKind.CLIENT
    assert attrs(upstream) == {
        "http.request.method": "POST",
        "url.template": "/call/web",
        "server.address": "127.0.0.1",
        "server.port": int(sandbox.url.rsplit(":", 1)[1]),
        "http.response.status_code": 201,
    }
    assert attrs(under["ledger record_call"])["db.system.name"] == "sqlite"
    assert all(s.status.status_code is StatusCode.UNSET for s in rest)

    # Never a credential: the caller's key, the Vapi key, a bearer header.
    vapi_key = sandbox.settings.private_key.get_secret_value()
    for span in [server, *rest]:
        text = span.to_json()
        assert user_key not in text
        assert vapi_key not in text
        assert "Bearer" not in text
        assert "alice" not in text  # the caller's subject is not a span attribute


def test_refusals_mark_the_span_that_refused(
    make_proxy: ProxyFactory, spans: InMemorySpanExporter, user_key: str
) -> None:
    limits = {
        "backend": "memory://",
        "rules": [{"name": "one-a-minute", "rate": {"per_minute": 1}}],
    }
    proxy = make_proxy(traced({"limits": limits}))

    wrong = generate_key()
    refused = post(proxy, {"assistantId": "sales-coach"}, wrong)
    assert_envelope(refused, 401)
    server, *rest = request_trace(spans, refused.headers["x-request-id"])
    assert attrs(server)["http.response.status_code"] == 401
    assert server.status.status_code is StatusCode.UNSET  # a 4xx is the caller's, not ours
    auth = children(server, rest)["auth"]
    assert auth.status.status_code is StatusCode.ERROR
    assert attrs(auth)["vapi_proxy.refusal.status_code"] == 401
    assert attrs(auth)["error.type"] == "UnauthorizedError"
    assert "vapi_proxy.identity.kind" not in attrs(auth)
    assert all(wrong not in s.to_json() for s in [server, *rest])

    assert post(proxy, {"assistantId": "sales-coach"}, user_key).status_code == 201
    limited = post(proxy, {"assistantId": "sales-coach"}, user_key)
    assert_envelope(limited, 429)
    server, *rest = request_trace(spans, limited.headers["x-request-id"])
    under = children(server, rest)
    reserve = under["limits reserve"]
    assert reserve.status.status_code is StatusCode.ERROR
    assert attrs(reserve)["vapi_proxy.limits.outcome"] == "refused"
    assert attrs(reserve)["vapi_proxy.limits.refused_by"] == "rate"
    assert attrs(reserve)["vapi_proxy.refusal.status_code"] == 429
    assert "POST /call/web" not in under  # nothing was sent to Vapi
    assert attrs(server)["http.response.status_code"] == 429

    unknown = post(proxy, {"assistantId": "no-such-profile"}, user_key)
    body = assert_envelope(unknown, 404)  # an unknown profile, refused by the policy
    server, *rest = request_trace(spans, unknown.headers["x-request-id"])
    under = children(server, rest)
    policy = under["policy"]
    assert policy.status.status_code is StatusCode.ERROR
    assert policy.status.description == body["message"]
    assert attrs(policy)["vapi_proxy.refusal.status_code"] == 404
    assert "limits reserve" not in under

    # A phone call's policy is its own span too: this profile makes no phone calls.
    phone = {"assistantId": "sales-coach", "customer": {"number": "+14155550123"}}
    not_phone = post(proxy, phone, user_key, path="/call")
    body = assert_envelope(not_phone, 403)
    server, *rest = request_trace(spans, not_phone.headers["x-request-id"])
    policy = children(server, rest)["policy"]
    assert policy.status.description == body["message"]


def test_a_streamed_chat_has_its_vapi_span_under_the_request(
    make_proxy: ProxyFactory, spans: InMemorySpanExporter, user_key: str
) -> None:
    proxy = make_proxy(traced())
    body = {"assistantId": "sales-coach", "input": "hello there", "stream": True}
    headers = {"Authorization": f"Bearer {user_key}"}
    with httpx.stream("POST", proxy.url + "/chat", json=body, headers=headers, timeout=10) as reply:
        assert reply.status_code == 200
        events = [line for line in reply.iter_lines() if line.startswith("data:")]
    assert events
    server, *rest = request_trace(spans, reply.headers["x-request-id"])
    assert server.name == "POST /chat"
    under = children(server, rest)
    order = ["auth", "policy", "limits reserve", "POST /chat"]
    assert [s.name for s in rest if s.name in order] == order
    assert attrs(under["limits reserve"])["vapi_proxy.kind"] == "chat"
    upstream = under["POST /chat"]
    assert upstream.kind is SpanKind.CLIENT
    assert attrs(upstream)["http.response.status_code"] == 200
    assert upstream.status.status_code is StatusCode.UNSET


def test_log_lines_carry_the_request_s_trace_and_span_ids(
    make_proxy: ProxyFactory, spans: InMemorySpanExporter, user_key: str
) -> None:
    proxy = make_proxy(traced({"logging": {"access_log": True}}))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("vapi_proxy.access")
    level = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        reply = post(proxy, {"assistantId": "sales-coach"}, user_key)
        assert reply.status_code == 201
        server, *_ = request_trace(spans, reply.headers["x-request-id"])
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    line = next(x for x in lines if x["request_id"] == reply.headers["x-request-id"])
    assert server.context is not None
    assert line["trace_id"] == format(server.context.trace_id, "032x")
    assert line["span_id"] == format(server.context.span_id, "016x")


@pytest.mark.parametrize(
    ("accept", "trusted", "continued"),
    [
        ("never", ["127.0.0.1/32"], False),
        ("always", [], True),
        ("trusted_proxies", ["127.0.0.1/32"], True),
        ("trusted_proxies", ["10.0.0.0/8"], False),
    ],
)
def test_an_incoming_traceparent_is_continued_only_where_allowed(
    make_proxy: ProxyFactory,
    spans: InMemorySpanExporter,
    accept: str,
    trusted: list[str],
    continued: bool,
) -> None:
    def patch(config: dict[str, Any]) -> None:
        traced(accept_traceparent=accept)(config)
        config["auth"]["trusted_proxies"] = trusted

    proxy = make_proxy(patch)
    reply = httpx.get(proxy.url + "/healthz", headers={"traceparent": TRACEPARENT}, timeout=10)
    assert reply.status_code == 200
    server, *_ = request_trace(spans, reply.headers["x-request-id"])
    assert server.name == "GET /healthz"
    assert server.context is not None
    if continued:
        assert format(server.context.trace_id, "032x") == INCOMING_TRACE
        assert server.parent is not None
        assert format(server.parent.span_id, "016x") == INCOMING_SPAN
    else:
        assert format(server.context.trace_id, "032x") != INCOMING_TRACE
        assert server.parent is None


def test_a_request_the_sampler_drops_records_no_span(
    make_proxy: ProxyFactory, spans: InMemorySpanExporter, user_key: str
) -> None:
    proxy = make_proxy(traced(accept_traceparent="always"))
    dropped = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-00"  # the caller did not sample it
    body = {"assistantId": "sales-coach"}
    reply = post(proxy, body, user_key, headers={"traceparent": dropped})
    assert reply.status_code == 201
    sampled = post(proxy, body, user_key)
    server, *rest = request_trace(spans, sampled.headers["x-request-id"])
    assert "ledger record_call" in children(server, rest)
    finished = spans.get_finished_spans()
    assert all(format(s.context.trace_id, "032x") != INCOMING_TRACE for s in finished if s.context)
    assert not [s for s in finished if s.parent is None and s.kind is not SpanKind.SERVER]


def test_a_step_span_marks_a_refusal_raised_in_it(
    make_proxy: ProxyFactory, spans: InMemorySpanExporter
) -> None:
    proxy = make_proxy(traced())
    runtime = proxy.app.runtime
    with runtime.span("policy") as outside:  # outside any request: no span of its own
        assert not outside.is_recording()
    request = trace.get_tracer("test").start_as_current_span("request")
    with request, pytest.raises(ProxyError), runtime.span("policy"):
        raise ProxyError("Profile 'x' is not allowed.", status_code=403)
    (policy,) = [s for s in spans.get_finished_spans() if s.name == "policy"]
    assert policy.parent is not None
    assert policy.status.status_code is StatusCode.ERROR
    assert policy.status.description == "Profile 'x' is not allowed."
    assert attrs(policy)["vapi_proxy.refusal.status_code"] == 403


# --- the provider from the environment -----------------------------------------------------


def test_the_exporters_come_from_otel_traces_exporter() -> None:
    assert span_exporters({"OTEL_TRACES_EXPORTER": "none"}) == []
    (console,) = span_exporters({"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(console, ConsoleSpanExporter)
    # The spec's default: OTLP, over HTTP unless the protocol says grpc.
    for environ in ({}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}):
        (otlp,) = span_exporters(environ)
        assert isinstance(otlp, OTLPSpanExporter)
        otlp.shutdown()
    with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-grpc"):
        span_exporters({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"})
    with pytest.raises(ConfigError, match="'zipkin' needs"):
        span_exporters({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="not an OTLP protocol"):
        span_exporters({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_the_service_is_vapi_proxy_unless_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert resource(os.environ).attributes["service.name"] == "vapi-proxy"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-proxy")
    assert resource(os.environ).attributes["service.name"] == "edge-proxy"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=eu-proxy,deployment.env=prod")
    named = resource(os.environ).attributes
    assert (named["service.name"], named["deployment.env"]) == ("eu-proxy", "prod")


def test_accept_traceparent_takes_only_the_documented_values() -> None:
    with pytest.raises(ConfigError, match=r"tracing\.accept_traceparent"):
        parse_settings({"tracing": {"accept_traceparent": "sometimes"}}, environ={})


# --- without the extra, and with tracing off ------------------------------------------------

_SERVE = """
import sys
import httpx
from pydantic import SecretStr
from vapi_proxy.app import create_app
from vapi_proxy.settings import Secrets, parse_settings
from vapi_proxy.testing import ServerThread

config = {
    "vapi": {"base_url": "http://127.0.0.1:9"},
    "ledger": {"url": "sqlite:///" + sys.argv[1] + "/ledger.db"},
    "auth": {"methods": [{"type": "anonymous"}]},
    "tracing": {"enabled": sys.argv[2] == "on"},
}
app = create_app(parse_settings(config, environ={}), Secrets(vapi_api_key=SecretStr("vpk_dummy")))
with ServerThread(app) as server:
    for _ in range(3):
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        assert httpx.post(server.url + "/call/web", json={}, timeout=10).status_code < 500
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry", "vapi_proxy.tracing"))))
"""


def _loaded(tmp_path: Any, tracing: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SERVE), str(tmp_path), tracing],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))
    return loaded


def test_with_tracing_off_nothing_of_opentelemetry_is_imported(tmp_path: Any) -> None:
    assert _loaded(tmp_path, "off") == []
    # The same script does see the imports when tracing is on (the check can fail).
    on = _loaded(tmp_path, "on")
    assert "vapi_proxy.tracing" in on
    assert "opentelemetry.sdk.trace" in on


def test_tracing_without_the_extra_is_a_config_error_that_says_what_to_install() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        from vapi_proxy.settings import ConfigError, parse_settings
        try:
            parse_settings({"tracing": {"enabled": True}}, environ={})
        except ConfigError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("tracing.enabled:"), done.stdout
    assert "pip install 'vapi-proxy[otel]'" in done.stdout


def test_an_untraced_proxy_is_not_wrapped(proxy: ServerThread) -> None:
    runtime = proxy.app.runtime
    assert runtime.tracing is None
    assert type(proxy.app).__name__ == "EdgeMiddleware"
    with runtime.span("policy") as nothing:
        assert nothing is None


# --- packaging: the otel extra in the locks (scripts/lock) ----------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text(encoding="utf-8")
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.MULTILINE)
    return {canonicalize_name(name): version for name, version in found}


def _otel_extra() -> list[Requirement]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        extras = tomllib.load(handle)["project"]["optional-dependencies"]
    return [Requirement(line) for line in extras["otel"]]


def test_the_otel_extra_is_tested_but_not_in_the_runtime_image() -> None:
    runtime, dev, lowest = _pins("runtime.txt"), _pins("dev.txt"), _pins("lowest.txt")
    otel = _pins("otel.txt")
    names = {canonicalize_name(r.name) for r in _otel_extra()}
    assert names == {
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
    }
    assert names <= set(dev)  # the suite runs this file with it
    assert not {n for n in runtime if n.startswith("opentelemetry")}  # the image has none
    for requirement in _otel_extra():  # the lowest leg runs this file at the floors
        floors = [s.version for s in requirement.specifier if s.operator == ">="]
        assert floors, f"{requirement}: declare a floor"
        assert Version(lowest[canonicalize_name(requirement.name)]) == Version(floors[0])
    # requirements/otel.txt (an image with tracing): the runtime pins plus the extra's, as tested.
    assert set(runtime) | names <= set(otel)
    assert {name: dev.get(name) for name in otel} == otel
    text = (ROOT / "requirements" / "otel.txt").read_text(encoding="utf-8")
    assert text.count("--hash=sha256:") >= len(otel)
