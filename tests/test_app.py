"""The app's router: one path per route, no redirect anywhere, the 404 envelope for the rest."""

from __future__ import annotations

import httpx
import pytest

from tests.support.http import assert_envelope, post
from tests.support.proxy import APP_ORIGIN
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread

# A trailing slash on every route, and a few shapes around them. Starlette's default router
# answered these with 307 to `http://<Host header>/<path without slash>`.
STRAY_PATHS = [
    ("POST", "/call/web/"),
    ("POST", "/call/"),
    ("GET", "/call/"),
    ("GET", "/call/abc/"),
    ("POST", "/chat/"),
    ("POST", "/chat/responses/"),
    ("POST", "/chat/web/"),
    ("POST", "/chat/web/responses/"),
    ("POST", "/webhook/"),
    ("GET", "/healthz/"),
    ("GET", "/readyz/"),
    ("GET", "/metrics/"),
    ("GET", "/admin/usage/"),
    ("GET", "/call/web/x/"),
]
HOSTILE_HOST = {"Host": "attacker.example", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize(("method", "path"), STRAY_PATHS)
def test_no_route_redirects_a_trailing_slash(
    proxy: ServerThread, user_key: str, method: str, path: str
) -> None:
    reply = httpx.request(
        method,
        proxy.url + path,
        headers={**HOSTILE_HOST, "Authorization": f"Bearer {user_key}", "Origin": APP_ORIGIN},
        content=b'{"assistantId": "sales-coach"}' if method == "POST" else None,
        follow_redirects=False,
    )
    assert "location" not in reply.headers
    body = assert_envelope(reply, 404)
    assert body["message"] == f"Cannot {method} {path}: no such route."


def test_the_web_sdks_double_slash_is_still_served(proxy: ServerThread, user_key: str) -> None:
    # `new Vapi(token, 'https://proxy/')` builds `https://proxy//call/web` (API-FACTS §Web SDK).
    reply = post(proxy, {"assistantId": "sales-coach"}, user_key, path="//call/web")
    assert reply.status_code == 201, reply.text


@pytest.mark.parametrize(("method", "path"), [("POST", "/call/web/"), ("GET", "/call/")])
def test_the_simulator_does_not_redirect_either(
    sandbox: RunningSandbox, method: str, path: str
) -> None:
    reply = httpx.request(
        method,
        sandbox.url + path,
        headers={
            **HOSTILE_HOST,
            "Authorization": f"Bearer {sandbox.settings.private_key.get_secret_value()}",
        },
        content=b"{}" if method == "POST" else None,
        follow_redirects=False,
    )
    assert reply.status_code == 404
    assert "location" not in reply.headers


def test_the_start_up_heap_is_frozen_while_serving_and_released_after() -> None:
    import gc

    from vapi_proxy.app import GC_YOUNG_THRESHOLD, long_lived_heap

    before = gc.get_threshold()
    with long_lived_heap():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_apps_that_stop_out_of_order_keep_the_heap_frozen_until_the_last_stops() -> None:
    """Two apps in one process (a test's replicas, an embedding server): the first one's stop
    used to unfreeze the heap and restore the threshold under the other, and the second's then
    left its own start's threshold in place for good."""
    import gc

    from vapi_proxy.app import GC_YOUNG_THRESHOLD, long_lived_heap

    before = gc.get_threshold()
    first, second = long_lived_heap(), long_lived_heap()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_freeze_count() > 0  # the second app still serves
    assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD
    second.__exit__(None, None, None)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
