"""What the caller and the operator see when Vapi refuses, fails, is slow or cannot be reached.

A body the proxy built from a profile is the operator's: Vapi's 4xx for it is a 502 for the
caller (the request id, nothing of Vapi's text) and a log line plus a metric for the operator.
Vapi's 429/5xx are a 503 with a checked `Retry-After`; only a refusal of the caller's own input
shows Vapi's reason. Every route that calls Vapi is covered.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.clients import PHONE_ID, bearer, seed_phone_number
from tests.support.http import assert_envelope, post, sample, upstream_bodies
from tests.support.proxy import SAVED_ASSISTANT_ID, TRANSIENT_ASSISTANT, ProxyFactory
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread

GHOST_ID = "00000000-0000-4000-8000-00000000dead"
REFUSALS = "vapi_proxy_upstream_refusals_total"


@pytest.fixture(autouse=True)
def _reset(sandbox: RunningSandbox) -> Iterator[None]:
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)
    httpx.delete(sandbox.url + "/__sandbox/faults", timeout=5)
    yield
    httpx.delete(sandbox.url + "/__sandbox/faults", timeout=5)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self, level: int) -> list[dict[str, Any]]:
        return [dict(getattr(r, "fields", {})) for r in self.records if r.levelno == level]


@pytest.fixture
def operator_log() -> Iterator[_Lines]:
    """The lines the proxy writes for the operator about Vapi's answers."""
    logger = logging.getLogger("vapi_proxy.upstream")
    lines = _Lines()
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(lines)
    logger.setLevel(level)


def inject(sandbox: RunningSandbox, path: str = "/call/web", **fault: Any) -> None:
    reply = httpx.post(sandbox.url + "/__sandbox/faults", json={"path": path, **fault})
    assert reply.status_code in (200, 201), reply.text


def metrics(server: ServerThread) -> str:
    return httpx.get(server.url + "/metrics", timeout=5).text


def refusal_profiles(config: dict[str, Any]) -> None:
    profiles = config["profiles"]
    profiles["ghost"] = {"assistant_id": GHOST_ID, "access": {"anonymous": True}}
    bad = {**TRANSIENT_ASSISTANT, "voicemailDetectionTypo": True}
    profiles["broken"] = {"assistant": bad}
    # Not tests.support.clients.phone_profiles: its `outbound` lets the caller set only
    # `customer.name`, and these tests need an `extension` the proxy passes and Vapi refuses.
    profiles["dial"] = {
        "assistant_id": SAVED_ASSISTANT_ID,
        "phone_number_id": PHONE_ID,
        "phone": {"allowed_prefixes": ["+1"], "customer_fields": ["extension"], "max_batch": 3},
    }


@pytest.fixture
def server(make_proxy: ProxyFactory, sandbox: RunningSandbox) -> ServerThread:
    seed_phone_number(sandbox)
    return make_proxy(refusal_profiles)


def assert_misconfigured(reply: httpx.Response, *hidden: str) -> dict[str, Any]:
    body = assert_envelope(reply, 502)
    assert "misconfigured" in body["message"]
    assert body["requestId"] == reply.headers["x-request-id"]
    assert body["requestId"] in body["message"]
    for text in hidden:
        assert text not in reply.text
    return body


# --- the profile's body refused: 502 for the caller, a warning and a metric for the operator ----


def test_an_unknown_assistant_id_is_the_operators_not_the_callers(
    server: ServerThread, sandbox: RunningSandbox, user_key: str, operator_log: _Lines
) -> None:
    reply = post(server, {"assistantId": "ghost"}, user_key)
    # Vapi's answer (400, naming the server-side id) reached the simulator's log, not the caller.
    assert_misconfigured(reply, GHOST_ID, "Couldn't", "ssistant")
    assert len(upstream_bodies(sandbox)) == 1
    [line] = operator_log.fields(logging.WARNING)
    assert line["request_id"] == reply.json()["requestId"]
    assert line["profile"] == "ghost" and line["route"] == "/call/web"
    assert line["upstream_status"] == 400
    assert GHOST_ID in str(line["vapi_message"])
    assert sandbox.settings.private_key.get_secret_value() not in str(operator_log.records)
    text = metrics(server)
    labels = {"route": "/call/web", "profile": "ghost", "status": "400", "cause": "config"}
    assert sample(text, REFUSALS, **labels) == 1
    assert GHOST_ID not in text


def test_an_invalid_transient_assistant_is_the_operators(
    server: ServerThread, user_key: str, operator_log: _Lines
) -> None:
    reply = post(server, {"assistantId": "broken"}, user_key)
    assert_misconfigured(reply, "voicemailDetectionTypo", "should not exist")
    [line] = operator_log.fields(logging.WARNING)
    assert "voicemailDetectionTypo" in str(line["vapi_message"])


def test_a_rejected_private_key_is_a_502_and_its_own_operator_line(
    make_proxy: ProxyFactory, user_key: str, operator_log: _Lines
) -> None:
    server = make_proxy(api_key="wrong-private-key-for-this-test")
    reply = post(server, {"assistantId": "sales-coach"}, user_key)
    body = assert_misconfigured(reply, "wrong-private-key", "Invalid Key")
    assert "operator" in body["message"]
    [line] = operator_log.fields(logging.ERROR)
    assert line["upstream_status"] == 401 and line["profile"] == "sales-coach"
    assert "private key" in operator_log.records[0].getMessage()
    assert "wrong-private-key" not in str(operator_log.records)
    labels = {"route": "/call/web", "status": "401", "cause": "key"}
    assert sample(metrics(server), REFUSALS, **labels) == 1


@pytest.mark.parametrize("status", [401, 403, 404, 422])
def test_every_other_refusal_of_the_profiles_body_is_a_502(
    server: ServerThread, sandbox: RunningSandbox, user_key: str, status: int
) -> None:
    inject(sandbox, action="status", status=status, message="assistantId must be a UUID", count=1)
    reply = post(server, {"assistantId": "sales-coach"}, user_key)
    assert_misconfigured(reply, "UUID")


# --- the caller's own input refused: Vapi's reason, shown -----------------------------------


def test_a_refused_client_variable_shows_vapis_reason(
    server: ServerThread, sandbox: RunningSandbox, user_key: str, operator_log: _Lines
) -> None:
    reason = "assistantOverrides.variableValues.firstName must be shorter than 20 characters"
    inject(sandbox, action="status", status=400, message=[reason], count=1)
    body = {
        "assistantId": "sales-coach",
        "assistantOverrides": {"variableValues": {"firstName": "x" * 30}},
    }
    reply = post(server, body, user_key)
    assert assert_envelope(reply, 400)["message"] == [reason]
    [line] = operator_log.fields(logging.INFO)
    assert line["upstream_status"] == 400 and line["vapi_message"] == [reason]
    assert operator_log.fields(logging.WARNING) == []
    labels = {"route": "/call/web", "profile": "sales-coach", "status": "400", "cause": "caller"}
    assert sample(metrics(server), REFUSALS, **labels) == 1


@pytest.mark.parametrize(
    "message",
    [
        # The variable is the caller's, the other path the profile's: the operator's.
        [
            "assistantOverrides.variableValues.firstName must be a string",
            "assistantId must be a UUID",
        ],
        # A server-owned variable (sales-coach's `plan`) is the profile's.
        "assistantOverrides.variableValues.plan must be one of: pro",
        # That a field is sent at all is the profile's decision.
        "assistantOverrides.variableValues.property firstName should not exist",
        "Bad Request",
    ],
)
def test_when_in_doubt_the_refusal_is_the_operators(
    server: ServerThread, sandbox: RunningSandbox, user_key: str, message: Any
) -> None:
    inject(sandbox, action="status", status=400, message=message, count=1)
    body = {
        "assistantId": "sales-coach",
        "assistantOverrides": {"variableValues": {"firstName": "Jo"}},
    }
    assert_misconfigured(post(server, body, user_key), "UUID", "plan", "should not exist")


def test_a_callee_vapi_refuses_is_the_callers_and_spares_the_rest_of_a_batch(
    server: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    # The profile lets the caller set `customer.extension` (the proxy allows 40 characters);
    # Vapi takes at most 10 (CreateCustomerDTO) and says so.
    long = {"number": "+14155550111", "extension": "12345678901"}
    reply = httpx.post(
        server.url + "/call",
        json={"assistantId": "dial", "customer": long},
        headers=bearer(user_key),
        timeout=10,
    )
    body = assert_envelope(reply, 400)
    assert body["message"] == ["customer.extension must be shorter than or equal to 10 characters"]

    ok = {"number": "+14155550112", "extension": "12"}
    batch = httpx.post(
        server.url + "/call",
        json={"assistantId": "dial", "customers": [long, ok]},
        headers=bearer(user_key),
        timeout=10,
    )
    assert batch.status_code == 201, batch.text
    result = batch.json()
    assert [c["customer"]["number"] for c in result["results"]] == ["+14155550112"]
    [error] = result["errors"]
    assert error["error"] == ["customer.extension must be shorter than or equal to 10 characters"]


def test_a_batch_item_vapi_refuses_for_the_profile_shows_no_vapi_text(
    server: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    inject(
        sandbox,
        path="/call",
        action="status",
        status=400,
        message="Vapi-side-secret-detail",
        count=1,
    )
    callees = [{"number": "+14155550121"}, {"number": "+14155550122"}]
    batch = httpx.post(
        server.url + "/call",
        json={"assistantId": "dial", "customers": callees},
        headers=bearer(user_key),
        timeout=10,
    )
    assert batch.status_code == 201, batch.text
    [error] = batch.json()["errors"]
    assert "misconfigured" in error["error"] and "Vapi-side-secret" not in batch.text
    assert len(batch.json()["results"]) == 1
    labels = {"route": "/call", "profile": "dial", "status": "400", "cause": "config"}
    assert sample(metrics(server), REFUSALS, **labels) == 1


# --- Vapi busy or failing: 503, with Retry-After where Vapi gave a usable one ---------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_vapi_server_errors_become_503(
    server: ServerThread, sandbox: RunningSandbox, user_key: str, status: int
) -> None:
    inject(sandbox, action="status", status=status, count=1)
    reply = post(server, {"assistantId": "sales-coach"}, user_key)
    assert_envelope(reply, 503)
    assert "retry-after" not in reply.headers
    assert "support@vapi.ai" not in reply.text


@pytest.mark.parametrize(
    ("sent", "passed_on"),
    [("7", "7"), ("100000", "3600"), ("in a while", None), ("Thu, 01 Jan 2015 00:00:00 GMT", "1")],
)
def test_vapi_rate_limit_is_503_with_a_checked_retry_after(
    server: ServerThread, sandbox: RunningSandbox, user_key: str, sent: str, passed_on: str | None
) -> None:
    inject(sandbox, action="status", status=429, retry_after=sent, count=1)
    reply = post(server, {"assistantId": "sales-coach"}, user_key)
    assert_envelope(reply, 503)
    assert reply.headers.get("retry-after") == passed_on
    labels = {"route": "/call/web", "profile": "sales-coach", "status": "429", "cause": "busy"}
    assert sample(metrics(server), REFUSALS, **labels) == 1


# --- every route that calls Vapi -------------------------------------------------------------


def test_reading_a_call_vapi_no_longer_has_is_the_operators(
    server: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    created = post(server, {"assistantId": "sales-coach"}, user_key)
    call_id = created.json()["id"]
    inject(sandbox, path="/call/*", method="GET", action="status", status=404, count=1)
    reply = httpx.get(f"{server.url}/call/{call_id}", headers=bearer(user_key), timeout=10)
    assert_misconfigured(reply)
    inject(sandbox, path="/call/*", method="GET", action="status", status=429, retry_after=2)
    reply = httpx.get(f"{server.url}/call/{call_id}", headers=bearer(user_key), timeout=10)
    assert_envelope(reply, 503)
    assert reply.headers["retry-after"] == "2"
    # (`sample` cannot parse a label value holding braces.)
    line = REFUSALS + '{cause="config",profile="sales-coach",route="/call/{id}",status="404"} 1.0'
    assert line in metrics(server).splitlines()


@pytest.mark.parametrize("path", ["/chat", "/chat/responses", "/chat/web", "/chat/web/responses"])
@pytest.mark.parametrize("stream", [False, True])
def test_chat_refusals_before_the_reply_starts(
    server: ServerThread, sandbox: RunningSandbox, user_key: str, path: str, stream: bool
) -> None:
    body = {"assistantId": "ghost", "input": "hello", "stream": stream}
    assert_misconfigured(
        httpx.post(server.url + path, json=body, headers=bearer(user_key), timeout=10), GHOST_ID
    )
    inject(sandbox, path=path, action="status", status=429, retry_after=4, count=1)
    body["assistantId"] = "sales-coach"
    busy = httpx.post(server.url + path, json=body, headers=bearer(user_key), timeout=10)
    assert_envelope(busy, 503)
    assert busy.headers["retry-after"] == "4"
    reason = "input must be shorter than or equal to 4 characters"
    inject(sandbox, path=path, action="status", status=400, message=[reason], count=1)
    mine = httpx.post(server.url + path, json=body, headers=bearer(user_key), timeout=10)
    assert assert_envelope(mine, 400)["message"] == [reason]


def test_a_refused_turn_gives_its_reservation_back(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str
) -> None:
    def patch(config: dict[str, Any]) -> None:
        refusal_profiles(config)
        config["limits"] = {"rules": [{"name": "one", "quota": {"per_day": 1}}]}

    server = make_proxy(patch)
    for _ in range(2):
        assert post(server, {"assistantId": "ghost"}, user_key).status_code == 502
    inject(sandbox, action="status", status=429, count=1)
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 503
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201


# --- Vapi not there at all ------------------------------------------------------------------


def test_unreachable_vapi_is_502(make_proxy: ProxyFactory, user_key: str) -> None:
    # A port held bound but not listening: connecting is refused, and no other test can take
    # it meanwhile (a port from free_port() could be bound by someone else before the call).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        server = make_proxy(lambda c: c["vapi"].update(base_url=f"http://127.0.0.1:{port}"))
        reply = post(server, {"assistantId": "sales-coach"}, user_key)
    body = assert_envelope(reply, 502)
    assert "Could not reach Vapi" in str(body["message"])


def test_slow_vapi_is_504(make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str) -> None:
    server = make_proxy(lambda c: c["vapi"].update(timeout_seconds=0.3))
    inject(sandbox, latency_seconds=2, count=1)
    reply = post(server, {"assistantId": "sales-coach"}, user_key)
    assert_envelope(reply, 504)


@pytest.mark.parametrize("action", ["drop-before-body", "drop-after-body"])
def test_a_dropped_connection_is_502_and_not_retried(
    proxy: Any, sandbox: RunningSandbox, user_key: str, action: str
) -> None:
    inject(sandbox, action=action, count=1)
    reply = post(proxy, {"assistantId": "sales-coach"}, user_key)
    assert_envelope(reply, 502)
    # The request may have reached Vapi: a retry could start a second call, so none is made.
    assert len(upstream_bodies(sandbox)) <= 1
