"""The real `@vapi-ai/web` 2.7.1 in headless Chromium, through the proxy, to the simulator.

The example page (examples/web) is served from one loopback port and the proxy from another, so
each start is a real cross-origin call with a CORS preflight. Every form of `vapi.start(...)`
must reach the simulator as the profile's body with the private key, after which the SDK joins
Daily and, offline, fails there; every refusal must reach the app as the proxy's own message.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from pydantic import SecretStr

from tests.support.browser import (
    BrowserDriver,
    events_named,
    page_tried,
    progress,
    start_in_page,
)
from tests.support.proxy import APP_ORIGIN, SAVED_ASSISTANT_ID, ProxyFactory, base_config
from vapi_proxy.app import create_app
from vapi_proxy.logs import ACCESS_LOGGER
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.settings import Secrets, parse_settings
from vapi_proxy.testing import ServerThread

PREFIX = "/api/vapi"
JWT_ISSUER = "https://issuer.e2e.test/"
JWT_SECRET = "e2e-shared-secret-of-at-least-32-bytes!!"
PRIVATE_KEY_SEEN = "Bearer [redacted: private-key]"


@pytest.fixture(autouse=True)
def _clear_log(sandbox: RunningSandbox) -> None:
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)


def upstream_calls(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    log = httpx.get(sandbox.url + "/__sandbox/requests", timeout=5).json()
    return [entry for entry in log if entry["path"] == "/call/web"]


@pytest.fixture(scope="module")
def proxy_for_page(
    sandbox: RunningSandbox,
    user_key: str,
    other_key: str,
    page_origin: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerThread]]:
    """The base config's proxy letting the page's origin in, also taking HS256 JWTs.

    One per `prefix` (a path the proxy is mounted under) for the module: these cases change no
    proxy state that another reads. Tests that need their own config use `make_proxy`.
    """
    folder = tmp_path_factory.mktemp("page-proxies")
    secret_file = folder / "jwt-secret"
    secret_file.write_text(JWT_SECRET)
    started: dict[str | None, ServerThread] = {}

    def start(prefix: str | None = None) -> ServerThread:
        if prefix in started:
            return started[prefix]
        config = base_config(sandbox.url, user_key, other_key)
        config["ledger"] = {"url": f"sqlite:///{folder}/ledger-{len(started)}.db"}
        config["cors"]["allow_origins"] = [page_origin]
        # Browsers may not cache the preflight: every case makes the real one again.
        config["cors"]["max_age_seconds"] = 0
        config["auth"]["methods"].insert(
            0,
            {
                "type": "jwt",
                "secret_file": str(secret_file),
                "algorithms": ["HS256"],
                "issuer": JWT_ISSUER,
            },
        )
        if prefix is not None:
            config["server"] = {"path_prefix": prefix}
        settings = parse_settings(config, environ={})
        key = SecretStr(sandbox.settings.private_key.get_secret_value())
        server = ServerThread(create_app(settings, Secrets(vapi_api_key=key)))
        server.start()
        started[prefix] = server
        return server

    yield start
    for server in started.values():
        server.stop()


def proxy_posts(result: dict[str, Any]) -> list[str]:
    return [r["url"] for r in result["requests"] if r["method"] == "POST"]


def the_one_upstream_call(sandbox: RunningSandbox, token: str) -> dict[str, Any]:
    calls = upstream_calls(sandbox)
    assert len(calls) == 1, calls
    received = calls[0]
    assert received["headers"]["authorization"] == PRIVATE_KEY_SEEN
    if token:
        assert token not in json.dumps(received)
    return received["body"]


# What the browser may see of Vapi's Call object: what the SDK reads, plus harmless status fields.
REPLY_KEYS = {
    "id",
    "webCallUrl",
    "transport",
    "artifactPlan",
    "assistant",
    "status",
    "type",
    "createdAt",
}


def the_reply_the_page_got(result: dict[str, Any], *, listen_url: bool = False) -> dict[str, Any]:
    """The proxy's answer to the SDK's POST, as the page read it: scrubbed, no secrets.

    `listen_url`: the profile opts in to `monitor.listenUrl` (`demo` has `expose`); never more.
    """
    [reply] = result["replies"]
    assert reply["status"] == 201, reply
    text = reply["body"]
    call: dict[str, Any] = json.loads(text)
    if listen_url:
        assert set(call.pop("monitor")) == {"listenUrl"}
    assert set(call) <= REPLY_KEYS, set(call) - REPLY_KEYS
    assert call["webCallUrl"].startswith("https://vapi.daily.co/")
    assert set(call.get("transport", {})) <= {"callToken"}
    for secret in ("controlUrl", "orgId", "SECRET-PROMPT", "messages"):
        assert secret not in text
    return call


def assert_joining_daily(result: dict[str, Any], *, listen_url: bool = False) -> None:
    """The SDK accepted the proxy's reply and went on to Daily: nothing failed before that."""
    assert result["reachedJoin"], (progress(result), result["console"])
    the_reply_the_page_got(result, listen_url=listen_url)
    created = [
        p
        for p in events_named(result, "call-start-progress")
        if p["stage"] == "web-call-creation" and p["status"] == "completed"
    ]
    assert len(created) == 1 and created[0]["metadata"]["callId"] != "unknown"
    steps = progress(result)
    assert steps.index(("web-call-creation", "completed")) < steps.index(
        ("daily-call-join", "started")
    )
    assert events_named(result, "call-start-failed") == []
    assert events_named(result, "error") == []


def expect_sales_coach(body: dict[str, Any], client: dict[str, Any]) -> None:
    assert body["assistantId"] == SAVED_ASSISTANT_ID
    overrides = body["assistantOverrides"]
    assert overrides["variableValues"] == {**client, "plan": "pro", "caller": "alice"}
    assert overrides["maxDurationSeconds"] == 600
    assert overrides["metadata"]["vapiProxy"]["profile"] == "sales-coach"
    # The profile name was the client's only say: it does not travel on to Vapi as context.
    assert "assistant" not in body and "assistantType" not in json.dumps(body)


def expect_squad(body: dict[str, Any], client: dict[str, Any]) -> None:
    assert body["squad"] == {"members": [{"assistantId": SAVED_ASSISTANT_ID}]}
    assert body["squadOverrides"]["maxDurationSeconds"] == 600
    assert body.get("assistant") is None and "squadId" not in body


def expect_workflow(body: dict[str, Any], client: dict[str, Any]) -> None:
    assert body["workflow"]["name"] == "Flow"
    assert body["workflow"]["maxDurationSeconds"] == 600
    assert "assistantOverrides" not in body and "workflowId" not in body


def expect_support(body: dict[str, Any], client: dict[str, Any]) -> None:
    assert body["assistant"]["model"]["provider"] == "openai"
    assert body["assistant"]["maxDurationSeconds"] == 300
    assert "assistantType" not in json.dumps(body)


def expect_demo(body: dict[str, Any], client: dict[str, Any]) -> None:
    assert body["assistantId"] == SAVED_ASSISTANT_ID
    assert body["assistantOverrides"]["metadata"]["vapiProxy"]["profile"] == "demo"


FORMS = [
    # id, profile, page form, client variables, assistantOverrides, what Vapi must receive
    ("string", "sales-coach", "string", {}, {}, expect_sales_coach),
    (
        "assistant-overrides-variables",
        "sales-coach",
        "string",
        {"firstName": "Jo", "language": "de"},
        {},
        expect_sales_coach,
    ),
    (
        "object-assistant-type",
        "sales-coach",
        "object",
        {"firstName": "Ann"},
        {},
        expect_sales_coach,
    ),
    # start({assistantType, firstName}, {variableValues: {language}}), non-ASCII included.
    (
        "object-and-overrides-variables",
        "sales-coach",
        "object",
        {"firstName": "Zoë 🎙"},
        {"variableValues": {"language": "fr"}},
        expect_sales_coach,
    ),
    ("transient-object", "support", "object", {}, {}, expect_support),
    ("squad-id", "team", "squad", {}, {}, expect_squad),
    ("squad-object", "team", "squad-object", {}, {}, expect_squad),
    ("workflow-id", "flow", "workflow", {}, {}, expect_workflow),
    ("workflow-object", "flow", "workflow-object", {}, {}, expect_workflow),
]


@pytest.mark.parametrize(
    ("profile", "form", "variables", "overrides", "expect"),
    [pytest.param(*case[1:], id=case[0]) for case in FORMS],
)
def test_every_start_form_reaches_vapi_as_the_profile_body(
    browser: BrowserDriver,
    page_server: ServerThread,
    proxy_for_page: Callable[..., ServerThread],
    sandbox: RunningSandbox,
    user_key: str,
    profile: str,
    form: str,
    variables: dict[str, Any],
    overrides: dict[str, Any],
    expect: Callable[[dict[str, Any], dict[str, Any]], None],
) -> None:
    proxy = proxy_for_page()
    result = start_in_page(
        browser,
        page_server,
        proxy.url,
        token=user_key,
        profile=profile,
        form=form,
        variables=variables,
        overrides=overrides,
        until="daily-join",
    )
    assert_joining_daily(result)
    assert proxy_posts(result) == [proxy.url + "/call/web"]
    assert all(r["authorization"] for r in result["requests"] if r["method"] == "POST")
    client = {**variables, **overrides.get("variableValues", {})}
    expect(the_one_upstream_call(sandbox, user_key), client)


@pytest.mark.parametrize(
    ("prefix", "base_path", "posted_path"),
    [
        pytest.param(None, "/", "//call/web", id="trailing-slash"),
        pytest.param(PREFIX, PREFIX, PREFIX + "/call/web", id="path-prefix"),
        pytest.param(PREFIX, PREFIX + "/", PREFIX + "//call/web", id="prefix-trailing-slash"),
    ],
)
def test_base_urls_with_a_prefix_or_a_trailing_slash(
    browser: BrowserDriver,
    page_server: ServerThread,
    proxy_for_page: Callable[..., ServerThread],
    sandbox: RunningSandbox,
    user_key: str,
    prefix: str | None,
    base_path: str,
    posted_path: str,
) -> None:
    proxy = proxy_for_page(prefix)
    result = start_in_page(
        browser,
        page_server,
        proxy.url + base_path,
        token=user_key,
        profile="sales-coach",
        form="object",
        variables={"firstName": "Ann"},
        until="daily-join",
    )
    assert proxy_posts(result) == [proxy.url + posted_path]
    assert_joining_daily(result)
    expect_sales_coach(the_one_upstream_call(sandbox, user_key), {"firstName": "Ann"})


def test_anonymous_caller_on_an_open_profile_sends_no_authorization(
    browser: BrowserDriver,
    page_server: ServerThread,
    proxy_for_page: Callable[..., ServerThread],
    sandbox: RunningSandbox,
) -> None:
    proxy = proxy_for_page()
    result = start_in_page(
        browser,
        page_server,
        proxy.url,
        token="",
        profile="demo",
        form="string",
        until="daily-join",
    )
    assert_joining_daily(result, listen_url=True)
    [post] = [r for r in result["requests"] if r["method"] == "POST"]
    assert post["authorization"] is False
    expect_demo(the_one_upstream_call(sandbox, ""), {})


def test_a_signed_in_jwt_caller_reaches_vapi_under_its_subject(
    browser: BrowserDriver,
    page_server: ServerThread,
    proxy_for_page: Callable[..., ServerThread],
    sandbox: RunningSandbox,
) -> None:
    token = jwt.encode(
        {"sub": "user-42", "iss": JWT_ISSUER, "exp": int(time.time()) + 600},
        JWT_SECRET,
        algorithm="HS256",
    )
    proxy = proxy_for_page()
    result = start_in_page(
        browser,
        page_server,
        proxy.url,
        token=token,
        profile="sales-coach",
        form="string",
        until="daily-join",
    )
    assert_joining_daily(result)
    body = the_one_upstream_call(sandbox, token)
    assert body["assistantOverrides"]["variableValues"]["caller"] == "user-42"


def test_offline_the_start_fails_at_dailys_join_not_at_the_proxy(
    browser: BrowserDriver,
    page_server: ServerThread,
    proxy_for_page: Callable[..., ServerThread],
    sandbox: RunningSandbox,
    user_key: str,
) -> None:
    """Waited out once: daily-js tries its call-machine bundle three times, 3 s apart."""
    proxy = proxy_for_page()
    result = start_in_page(
        browser,
        page_server,
        proxy.url,
        token=user_key,
        profile="sales-coach",
        form="object",
        variables={"firstName": "Ann"},
        timeout=25,
    )
    assert result["done"] and result["result"] == {"resolved": None}
    steps = progress(result)
    assert ("web-call-creation", "completed") in steps
    assert steps[-1] == ("daily-call-join", "failed")
    [failed] = events_named(result, "call-start-failed")
    assert isinstance(failed["error"], str)
    assert "call-machine" in failed["error"] and "c.daily.co" in failed["error"]
    errors = events_named(result, "error")
    assert [e["type"] for e in errors] == [
        "daily-error",
        "daily-call-join-error",
        "start-method-error",
    ]
    tried = page_tried(result)
    assert tried and all(
        url.startswith(("https://c.daily.co/", "https://o77906.ingest.sentry.io/")) for url in tried
    )
    # ... and Daily really was out of reach: Chromium's way out was refused, not just watched.
    assert any(entry["url"] == "https://c.daily.co:443/" for entry in result["refused"])
    expect_sales_coach(the_one_upstream_call(sandbox, user_key), {"firstName": "Ann"})


def _expired_jwt() -> str:
    past = int(time.time()) - 3600  # well beyond the proxy's default 30 s leeway
    claims = {"sub": "user-42", "iss": JWT_ISSUER, "iat": past - 600, "exp": past}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def _forged_jwt() -> str:
    claims = {"sub": "user-42", "iss": JWT_ISSUER, "exp": int(time.time()) + 600}
    return jwt.encode(claims, "not-the-shared-secret-but-32-bytes-long", algorithm="HS256")


# id, token (None: the suite's API key), profile, extra assistantOverrides, words the message must
# hold. Quota exhaustion needs a first call: test_an_exhausted_quota_... below.
REFUSALS = [
    ("unknown-profile", None, "nope", {}, "nope"),
    (
        "disallowed-field",
        None,
        "sales-coach",
        {"model": {"provider": "openai"}},
        "assistantOverrides.model",
    ),
    ("wrong-api-key", "vpk_" + "x" * 43, "sales-coach", {}, "API key"),
    ("expired-jwt", _expired_jwt, "sales-coach", {}, "expired"),
    ("forged-jwt", _forged_jwt, "sales-coach", {}, "signature"),
    ("anonymous-on-signed-in-profile", "", "sales-coach", {}, "Sign in"),
    ("key-not-allowed-this-profile", "OTHER", "sales-coach", {}, "sales-coach"),
    ("variable-too-long", None, "sales-coach", {"variableValues": {"firstName": "x" * 41}}, "40"),
    ("server-owned-variable", None, "sales-coach", {"variableValues": {"plan": "free"}}, "plan"),
    ("variable-not-in-enum", None, "sales-coach", {"variableValues": {"language": "es"}}, "en"),
]


@pytest.mark.parametrize(
    ("token_spec", "profile", "overrides", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSALS],
)
def test_refusals_reach_the_app_as_the_proxys_message(
    browser: BrowserDriver,
    page_server: ServerThread,
    page_origin: str,
    proxy_for_page: Callable[..., ServerThread],
    sandbox: RunningSandbox,
    user_key: str,
    other_key: str,
    token_spec: Any,
    profile: str,
    overrides: dict[str, Any],
    words: str,
) -> None:
    if token_spec is None:
        token = user_key
    elif token_spec == "OTHER":
        token = other_key
    elif callable(token_spec):
        token = token_spec()
    else:
        token = token_spec
    proxy = proxy_for_page()

    # What the proxy answers to the very body the SDK sends for start(profile, overrides).
    body: dict[str, Any] = {"assistantId": profile}
    if overrides:
        body["assistantOverrides"] = overrides
    headers = {"Origin": page_origin}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    direct = httpx.post(proxy.url + "/call/web", json=body, headers=headers, timeout=10)
    assert 400 <= direct.status_code < 500, direct.text
    sent = direct.json()
    assert words in sent["message"]

    result = start_in_page(
        browser,
        page_server,
        proxy.url,
        token=token,
        profile=profile,
        form="string",
        overrides=overrides,
    )
    assert result["done"] and result["result"] == {"resolved": None}
    [failed] = events_named(result, "call-start-failed")
    # The SDK hands the app the proxy's JSON envelope as it was sent.
    assert set(failed["error"]) == {"message", "error", "statusCode", "requestId"}
    assert failed["error"]["message"] == sent["message"]
    assert failed["error"]["statusCode"] == direct.status_code
    [error] = events_named(result, "error")
    assert error["type"] == "start-method-error"
    assert error["error"]["error"]["message"] == sent["message"]
    # ... and the example page shows it to the person.
    assert result["status"] == sent["message"]
    assert ("daily-call-join", "started") not in progress(result)
    assert upstream_calls(sandbox) == []


def test_an_origin_not_in_the_cors_list_is_refused_by_the_browser(
    browser: BrowserDriver,
    page_server: ServerThread,
    make_proxy: ProxyFactory,
    sandbox: RunningSandbox,
    user_key: str,
) -> None:
    """The proxy lists only APP_ORIGIN, not the page's: the preflight fails in the browser.

    No proxy message can reach the app here: without Access-Control-Allow-Origin the browser
    hides any response, so the SDK reports fetch's own "Failed to fetch". What matters is that
    nothing reached Vapi and that the app still hears about it through the same events.
    """
    proxy = make_proxy()
    assert proxy.url != APP_ORIGIN
    result = start_in_page(
        browser, page_server, proxy.url, token=user_key, profile="sales-coach", form="string"
    )
    assert result["done"] and result["result"] == {"resolved": None}
    [failed] = events_named(result, "call-start-failed")
    assert failed["error"] == "Failed to fetch"
    [error] = events_named(result, "error")
    assert error["type"] == "start-method-error" and error["error"]["message"] == "Failed to fetch"
    assert result["status"] == "Failed to fetch"
    assert any("blocked by CORS policy" in line for line in result["console"])
    assert upstream_calls(sandbox) == []


@pytest.fixture
def faults(sandbox: RunningSandbox) -> Iterator[Callable[[dict[str, Any]], None]]:
    def add(spec: dict[str, Any]) -> None:
        reply = httpx.post(sandbox.url + "/__sandbox/faults", json=spec, timeout=5)
        assert reply.status_code < 300, reply.text

    yield add
    httpx.delete(sandbox.url + "/__sandbox/faults", timeout=5)


@pytest.mark.parametrize(
    ("fault", "proxy_timeout", "wrong_key"),
    [
        pytest.param({"action": "status", "status": 503}, 5, False, id="vapi-503"),
        pytest.param({"action": "drop-before-body"}, 5, False, id="vapi-drops-the-connection"),
        pytest.param({"latency_seconds": 3}, 1, False, id="vapi-slower-than-the-timeout"),
        pytest.param(None, 5, True, id="vapi-refuses-the-private-key"),
    ],
)
def test_vapi_failures_reach_the_app_as_readable_json(
    browser: BrowserDriver,
    page_server: ServerThread,
    page_origin: str,
    make_proxy: ProxyFactory,
    faults: Callable[[dict[str, Any]], None],
    user_key: str,
    fault: dict[str, Any] | None,
    proxy_timeout: float,
    wrong_key: bool,
) -> None:
    """Not an HTML error page (which the SDK would turn into a JSON SyntaxError): the envelope."""

    def patch(config: dict[str, Any]) -> None:
        config["cors"]["allow_origins"] = [page_origin]
        config["vapi"]["timeout_seconds"] = proxy_timeout

    proxy = make_proxy(patch, api_key="sk-not-the-key" if wrong_key else None)
    if fault is not None:
        faults({"path": "/call/web", "count": 1, **fault})
    result = start_in_page(
        browser, page_server, proxy.url, token=user_key, profile="sales-coach", form="string"
    )
    assert result["done"] and result["result"] == {"resolved": None}
    [failed] = events_named(result, "call-start-failed")
    envelope = failed["error"]
    assert isinstance(envelope, dict), envelope
    assert envelope["statusCode"] in (502, 503, 504)
    assert isinstance(envelope["message"], str) and envelope["message"]
    assert result["status"] == envelope["message"]
    assert "sk-not-the-key" not in json.dumps(result)
    assert ("daily-call-join", "started") not in progress(result)


GHOST_ASSISTANT_ID = "00000000-0000-4000-8000-00000000dead"
CALLERS_REASON = "assistantOverrides.variableValues.firstName must be shorter than 20 characters"

# id, profile, fault at the simulator, client variables, what the app is shown: the status, the
# words in the message, the Retry-After the page read (docs/api.md "When Vapi refuses").
VAPI_REFUSALS = [
    ("unknown-assistant-id", "ghost", None, {}, 502, "misconfigured", None),
    (
        "vapi-429",
        "sales-coach",
        {"action": "status", "status": 429, "retry_after": 7},
        {},
        503,
        "try again in 7 seconds",
        "7",
    ),
    (
        "vapi-500",
        "sales-coach",
        {"action": "status", "status": 500},
        {},
        503,
        "try again shortly",
        None,
    ),
    (
        "vapi-503-with-a-date",
        "sales-coach",
        {"action": "status", "status": 503, "retry_after": "Thu, 01 Jan 2015 00:00:00 GMT"},
        {},
        503,
        "try again in 1 second.",
        "1",
    ),
    (
        "callers-own-variable",
        "sales-coach",
        {"action": "status", "status": 400, "message": CALLERS_REASON},
        {"firstName": "Bartholomew-Maximilian"},
        400,
        CALLERS_REASON,
        None,
    ),
]


@pytest.mark.parametrize(
    ("profile", "fault", "variables", "status", "words", "retry_after"),
    [pytest.param(*case[1:], id=case[0]) for case in VAPI_REFUSALS],
)
def test_vapis_refusals_reach_the_app_as_whose_they_are(
    browser: BrowserDriver,
    page_server: ServerThread,
    page_origin: str,
    make_proxy: ProxyFactory,
    faults: Callable[[dict[str, Any]], None],
    sandbox: RunningSandbox,
    user_key: str,
    profile: str,
    fault: dict[str, Any] | None,
    variables: dict[str, Any],
    status: int,
    words: str,
    retry_after: str | None,
) -> None:
    """A profile's body Vapi refuses is the operator's (502, the request id, nothing of Vapi's);
    Vapi busy is a 503 whose Retry-After the page can read; the caller's own variable refused
    shows Vapi's reason."""

    def patch(config: dict[str, Any]) -> None:
        config["cors"]["allow_origins"] = [page_origin]
        config["profiles"]["ghost"] = {"assistant_id": GHOST_ASSISTANT_ID}

    proxy = make_proxy(patch)
    if fault is not None:
        faults({"path": "/call/web", "count": 1, **fault})
    result = start_in_page(
        browser,
        page_server,
        proxy.url,
        token=user_key,
        profile=profile,
        form="string",
        variables=variables,
    )
    assert result["done"] and result["result"] == {"resolved": None}
    # Vapi was asked (and refused): this is Vapi's answer translated, not the proxy's policy.
    assert len(upstream_calls(sandbox)) == 1
    [reply] = result["replies"]
    assert reply["status"] == status and reply["retryAfter"] == retry_after
    [failed] = events_named(result, "call-start-failed")
    envelope = failed["error"]
    assert set(envelope) == {"message", "error", "statusCode", "requestId"}
    assert envelope["statusCode"] == status
    assert words in envelope["message"]
    [error] = events_named(result, "error")
    assert error["type"] == "start-method-error"
    assert error["error"]["error"]["message"] == envelope["message"]
    assert result["status"] == envelope["message"]
    if status == 502:
        assert envelope["requestId"] in envelope["message"]
        shown = json.dumps(events_named(result, "error")) + result["status"]
        assert GHOST_ASSISTANT_ID not in shown and "Couldn't" not in shown
    assert ("daily-call-join", "started") not in progress(result)


def test_a_proxy_that_never_answers_cannot_hang_the_suite(
    browser: BrowserDriver, page_server: ServerThread, user_key: str
) -> None:
    """The SDK has no timeout; the driver's bounded wait reports the hang instead of waiting.
    `done` false is that report; a driver that waited on would fail the case from
    BrowserDriver's own bounded read (no timing assertion needed here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)  # connections are queued, never accepted, never answered
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        result = start_in_page(
            browser,
            page_server,
            url,
            token=user_key,
            profile="sales-coach",
            form="string",
            timeout=1,
        )
    assert not result["done"]
    assert ("web-call-creation", "started") in progress(result)
    assert ("web-call-creation", "completed") not in progress(result)


class _AccessLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(dict(getattr(record, "fields", {})))


@pytest.mark.parametrize(("token_kind", "profile"), [("key", "sales-coach"), ("none", "demo")])
def test_the_browser_preflights_every_cross_origin_start(
    browser: BrowserDriver,
    page_server: ServerThread,
    page_origin: str,
    make_proxy: ProxyFactory,
    user_key: str,
    token_kind: str,
    profile: str,
) -> None:
    """The page and the proxy are on different ports: OPTIONS is answered, then POST arrives."""

    def patch(config: dict[str, Any]) -> None:
        config["cors"]["allow_origins"] = [page_origin]
        config["logging"]["access_log"] = True

    proxy = make_proxy(patch)
    logger = logging.getLogger(ACCESS_LOGGER)
    handler, old_level = _AccessLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = start_in_page(
            browser,
            page_server,
            proxy.url,
            token=user_key if token_kind == "key" else "",
            profile=profile,
            form="string",
            until="daily-join",
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert_joining_daily(result, listen_url=profile == "demo")
    seen = [(line["method"], line["path"], line["status"]) for line in handler.lines]
    assert seen == [("OPTIONS", "/call/web", 204), ("POST", "/call/web", 201)], seen


def test_the_sdk_reads_the_voice_provider_of_a_transient_assistant(
    browser: BrowserDriver,
    page_server: ServerThread,
    proxy_for_page: Callable[..., ServerThread],
    user_key: str,
) -> None:
    """The scrub keeps `assistant.voice.provider` (a `tavus` voice turns the SDK's video on)."""
    proxy = proxy_for_page()
    result = start_in_page(
        browser,
        page_server,
        proxy.url,
        token=user_key,
        profile="support",
        form="object",
        until="daily-join",
    )
    assert_joining_daily(result)
    [created] = [
        p
        for p in events_named(result, "call-start-progress")
        if p["stage"] == "web-call-creation" and p["status"] == "completed"
    ]
    assert created["metadata"]["voiceProvider"] == "vapi"
    assert the_reply_the_page_got(result)["assistant"] == {"voice": {"provider": "vapi"}}


def test_an_exhausted_quota_reaches_the_app_as_a_readable_message(
    browser: BrowserDriver,
    page_server: ServerThread,
    page_origin: str,
    make_proxy: ProxyFactory,
    sandbox: RunningSandbox,
    user_key: str,
) -> None:
    """One call a day: the first start joins Daily, the second is refused before Vapi."""

    def patch(config: dict[str, Any]) -> None:
        config["cors"]["allow_origins"] = [page_origin]
        config["limits"] = {
            "backend": "memory://",
            "rules": [{"name": "daily", "quota": {"per_day": 1}}],
        }

    proxy = make_proxy(patch)
    first = start_in_page(
        browser,
        page_server,
        proxy.url,
        token=user_key,
        profile="sales-coach",
        form="string",
        until="daily-join",
    )
    assert_joining_daily(first)
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)

    second = start_in_page(
        browser, page_server, proxy.url, token=user_key, profile="sales-coach", form="string"
    )
    assert second["done"] and second["result"] == {"resolved": None}
    [failed] = events_named(second, "call-start-failed")
    assert failed["error"]["statusCode"] == 429
    message = failed["error"]["message"]
    assert isinstance(message, str) and "1 call" in message
    assert second["status"] == message
    # The proxy exposes Retry-After to the page (the SDK itself does not pass it on).
    [reply] = second["replies"]
    assert reply["status"] == 429 and int(reply["retryAfter"]) >= 1
    assert upstream_calls(sandbox) == []
