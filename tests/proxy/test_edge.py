"""The edge over real HTTP: error envelope, body limits, methods, CORS, request ids, logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from tests.support.http import assert_envelope, post, upstream_bodies
from tests.support.proxy import APP_ORIGIN, ProxyFactory
from tests.support.webhooks import wait_for
from vapi_proxy.logs import JsonFormatter
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread


@pytest.fixture(autouse=True)
def _clear_log(sandbox: RunningSandbox) -> None:
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)


def test_every_refusal_uses_one_envelope(proxy: ServerThread, user_key: str) -> None:
    url = proxy.url
    auth = {"Authorization": f"Bearer {user_key}"}
    json_type = {"Content-Type": "application/json"}
    cases = [
        (httpx.get(url + "/nowhere"), 404),
        (httpx.get(url + "/call/web"), 405),
        (httpx.post(url + "/call/web", content=b"{", headers={**auth, **json_type}), 400),
        (
            httpx.post(
                url + "/call/web",
                content=b"x=1",
                headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
            ),
            415,
        ),
        (httpx.post(url + "/call/web", content=b"{}", headers={**auth, **json_type}), 400),
        (
            httpx.post(
                url + "/call/web", content=b'{"assistantId":"sales-coach"}', headers=json_type
            ),
            401,
        ),
        (
            httpx.post(
                url + "/call/web",
                content=b'{"assistantId":"x"}',
                headers={**json_type, "Authorization": "Bearer wrong"},
            ),
            401,
        ),
        (
            httpx.post(
                url + "/call/web",
                content=b"{}",
                headers={**auth, **json_type, "Origin": "https://evil.example"},
            ),
            403,
        ),
        (httpx.post(url + "/call/web", content=b" " * 70_000, headers={**auth, **json_type}), 413),
    ]
    for reply, status in cases:
        assert_envelope(reply, status)


def test_405_names_the_allowed_methods(proxy: ServerThread) -> None:
    reply = httpx.put(proxy.url + "/call/web")
    assert_envelope(reply, 405)
    assert reply.headers["allow"] == "POST"


def test_a_body_over_the_limit_is_413_even_without_content_length(
    proxy: ServerThread, user_key: str
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    reply = httpx.post(
        proxy.url + "/call/web",
        content=chunks(),
        headers={"Authorization": f"Bearer {user_key}", "Content-Type": "application/json"},
    )
    assert_envelope(reply, 413)


def test_a_compressed_body_is_refused_by_name_and_reaches_no_one(
    proxy: ServerThread, user_key: str, sandbox: RunningSandbox
) -> None:
    """A gzip body was read as its coded bytes and refused as "not valid JSON"; a body marked
    gzip but sent plain was taken as it was. Both are a 415 that names the coding."""
    import gzip

    plain = b'{"assistantId":"sales-coach"}'
    auth = {"Authorization": f"Bearer {user_key}", "Content-Type": "application/json"}
    for content, coding in [(gzip.compress(plain), "gzip"), (plain, "GZIP"), (plain, "br, gzip")]:
        reply = httpx.post(
            proxy.url + "/call/web", content=content, headers={**auth, "Content-Encoding": coding}
        )
        body = assert_envelope(reply, 415)
        assert coding.lower() in str(body["message"])
        assert reply.headers["accept-encoding"] == "identity"
    assert upstream_bodies(sandbox) == []
    reply = httpx.post(
        proxy.url + "/call/web", content=plain, headers={**auth, "Content-Encoding": "identity"}
    )
    assert reply.status_code == 201, reply.text


def test_too_deep_json_is_refused(proxy: ServerThread, user_key: str) -> None:
    deep = (
        b'{"assistantId":"sales-coach","assistantOverrides":{"variableValues":{"x":'
        + (b"[" * 100 + b"]" * 100)
        + b"}}}"
    )
    body = assert_envelope(post(proxy, deep, user_key), 400)
    assert "nested deeper" in str(body["message"])


def test_request_ids_are_taken_or_made(proxy: ServerThread, user_key: str) -> None:
    given = post(
        proxy, {"assistantId": "sales-coach"}, user_key, headers={"X-Request-ID": "abc-123"}
    )
    assert given.headers["x-request-id"] == "abc-123"
    hostile = post(proxy, {"assistantId": "nope"}, user_key, headers={"X-Request-ID": 'a b"<>'})
    assert hostile.headers["x-request-id"] != 'a b"<>'
    assert len(hostile.headers["x-request-id"]) == 32


def test_preflight_is_answered_before_authentication(proxy: ServerThread) -> None:
    reply = httpx.options(
        proxy.url + "/call/web",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert reply.status_code == 204
    assert reply.headers["access-control-allow-origin"] == APP_ORIGIN
    allowed = {h.strip() for h in reply.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert "Origin" in reply.headers["vary"]
    assert "access-control-allow-credentials" not in reply.headers


def test_a_foreign_origin_gets_no_cors_headers_and_its_post_is_refused(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    preflight = httpx.options(
        proxy.url + "/call/web",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 403
    reply = post(
        proxy, {"assistantId": "sales-coach"}, user_key, headers={"Origin": "https://evil.example"}
    )
    assert_envelope(reply, 403)
    assert "access-control-allow-origin" not in reply.headers
    assert reply.headers["vary"] == "Origin"
    assert upstream_bodies(sandbox) == []


def test_an_allowed_origin_gets_cors_headers_on_the_real_request(
    proxy: ServerThread, user_key: str
) -> None:
    reply = post(proxy, {"assistantId": "sales-coach"}, user_key, headers={"Origin": APP_ORIGIN})
    assert reply.status_code == 201
    assert reply.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-request-id" in reply.headers["access-control-expose-headers"]
    # Errors carry CORS headers too, or the browser would hide the message from the app.
    refused = post(proxy, {"assistantId": "nope"}, user_key, headers={"Origin": APP_ORIGIN})
    assert refused.status_code == 404
    assert refused.headers["access-control-allow-origin"] == APP_ORIGIN


def test_healthz_does_not_touch_vapi(proxy: ServerThread, sandbox: RunningSandbox) -> None:
    reply = httpx.get(proxy.url + "/healthz")
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}
    log = httpx.get(sandbox.url + "/__sandbox/requests").json()
    assert log == []


def test_access_log_is_json_and_never_holds_the_token_or_key(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("vapi_proxy")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    def both_access_lines() -> list[dict[str, object]] | None:
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        access = [line for line in lines if line["logger"] == "vapi_proxy.access"]
        return access if len(access) >= 2 else None

    try:
        server = make_proxy(lambda c: c["logging"].update(access_log=True))
        post(server, {"assistantId": "sales-coach"}, user_key, headers={"X-Request-ID": "log-1"})
        post(server, {"assistantId": "sales-coach"}, "wrong-token-value-123456")
        # The access line is written when the request ends, just after the client has its
        # reply (the server runs in another thread): wait for it rather than race it.
        access = wait_for(both_access_lines)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert len(access) == 2
    first = access[0]
    assert first["request_id"] == "log-1"
    assert first["method"] == "POST" and first["path"] == "/call/web"
    assert first["status"] == 201 and first["profile"] == "sales-coach"
    assert first["upstream_status"] == 201 and isinstance(first["duration_ms"], float)
    assert access[1]["status"] == 401
    text = stream.getvalue()
    assert user_key not in text and "wrong-token-value" not in text
    assert sandbox.settings.private_key.get_secret_value() not in text
