"""Admin access: off unless configured, admin keys only, sessions in HttpOnly SameSite cookies
with CSRF, allowed networks, own port, rate limits, CSP, one error envelope everywhere."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.support.console import admin_proxy, admin_routes, signed_in
from tests.support.http import assert_envelope
from tests.support.proxy import ProxyFactory
from vapi_proxy.auth.api_key import generate_key
from vapi_proxy.testing import ServerThread

PUBLIC = {("GET", "/admin"), ("GET", "/admin/static/{name}"), ("POST", "/admin/api/session")}
"""The page and its assets carry no data; sign-in is how a credential is presented."""


@pytest.fixture(scope="module")
def admin_key() -> str:
    return generate_key()


def _filled(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_admin_route_needs_admin_credentials(
    make_proxy: ProxyFactory, admin_key: str, user_key: str
) -> None:
    server = admin_proxy(make_proxy, admin_key)
    table = [r for r in admin_routes(server) if r not in PUBLIC and r[1].startswith("/admin")]
    assert len(table) >= 4, table
    for method, path in table:
        url = server.url + _filled(path)
        bare = httpx.request(method, url, json={})
        body = assert_envelope(bare, 401)
        assert "admin" in str(body["message"]).lower() or "sign in" in str(body["message"]).lower()
        assert "default-src 'none'" in bare.headers["content-security-policy"]
        as_user = httpx.request(
            method, url, json={}, headers={"Authorization": f"Bearer {user_key}"}
        )
        assert_envelope(as_user, 401)
        forged = httpx.request(method, url, json={}, cookies={"vapi_proxy_admin": "forged"})
        assert_envelope(forged, 401)


def test_admin_is_off_unless_configured(proxy: ServerThread) -> None:
    for method, path in [
        ("GET", "/admin"),
        ("GET", "/admin/api/session"),
        ("POST", "/admin/api/session"),
        ("GET", "/admin/api/usage"),
        ("GET", "/admin/usage"),
    ]:
        assert_envelope(httpx.request(method, proxy.url + path, json={}), 404)


def test_sign_in_sets_a_session_cookie_no_script_can_read(
    make_proxy: ProxyFactory, admin_key: str
) -> None:
    server = admin_proxy(make_proxy, admin_key)
    wrong = httpx.post(server.url + "/admin/api/session", json={"key": generate_key()})
    assert_envelope(wrong, 401)
    assert "set-cookie" not in wrong.headers
    reply = httpx.post(server.url + "/admin/api/session", json={"key": admin_key})
    assert reply.status_code == 200, reply.text
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith("vapi_proxy_admin=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on loopback: a Secure cookie would not be sent
    assert admin_key not in reply.text and admin_key not in cookie
    assert reply.json()["actor"].startswith("key:")


def test_cookie_writes_need_the_csrf_token(make_proxy: ProxyFactory, admin_key: str) -> None:
    server = admin_proxy(make_proxy, admin_key)
    client, csrf = signed_in(server, admin_key)
    try:
        assert client.get("/admin/api/session").json()["csrfToken"] == csrf
        assert_envelope(client.delete("/admin/api/session"), 403)
        other = client.delete(
            "/admin/api/session",
            headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
        )
        assert_envelope(other, 403)
        assert_envelope(client.delete("/admin/api/session", headers={"X-CSRF-Token": "x"}), 403)
        done = client.delete("/admin/api/session", headers={"X-CSRF-Token": csrf})
        assert done.status_code == 200, done.text
        # The session is gone from the database, not just the browser: a copied cookie is dead.
        client.cookies.set("vapi_proxy_admin", "stale")
        assert_envelope(client.get("/admin/api/session"), 401)
    finally:
        client.close()
    # Scripts use the key itself; there is no ambient credential to forge, so no CSRF token.
    bearer = {"Authorization": f"Bearer {admin_key}"}
    assert httpx.get(server.url + "/admin/api/audit", headers=bearer).status_code == 200
    actions = [
        (row["action"], row["outcome"])
        for row in httpx.get(server.url + "/admin/api/audit", headers=bearer).json()["items"]
    ]
    assert ("sign-out", "ok") in actions and ("sign-in", "ok") in actions


def test_cookie_is_secure_behind_a_trusted_https_proxy(
    make_proxy: ProxyFactory, admin_key: str
) -> None:
    def trust_loopback(config: dict[str, object]) -> None:
        config["auth"]["trusted_proxies"] = ["127.0.0.1/32"]  # type: ignore[index]

    server = admin_proxy(make_proxy, admin_key, trust_loopback)
    reply = httpx.post(
        server.url + "/admin/api/session",
        json={"key": admin_key},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert reply.status_code == 200
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith("__Host-vapi_proxy_admin=") and "Secure" in cookie


def test_only_allowed_networks_reach_the_console(make_proxy: ProxyFactory, admin_key: str) -> None:
    def trust_loopback(config: dict[str, object]) -> None:
        config["auth"]["trusted_proxies"] = ["127.0.0.1/32"]  # type: ignore[index]

    server = admin_proxy(make_proxy, admin_key, trust_loopback, allowed_networks=["10.0.0.0/8"])
    bearer = {"Authorization": f"Bearer {admin_key}"}
    # Loopback itself is not allowed here: the route does not exist for it.
    assert_envelope(httpx.get(server.url + "/admin/api/audit", headers=bearer), 404)
    # The resolved client address (forwarded by a trusted proxy) decides, not the TCP peer.
    via = {**bearer, "X-Forwarded-For": "10.1.2.3"}
    assert httpx.get(server.url + "/admin/api/audit", headers=via).status_code == 200
    outside = {**bearer, "X-Forwarded-For": "203.0.113.9"}
    assert_envelope(httpx.get(server.url + "/admin/api/audit", headers=outside), 404)


def test_admin_port_keeps_the_console_off_the_main_port(
    make_proxy: ProxyFactory, admin_key: str
) -> None:
    server = admin_proxy(make_proxy, admin_key, port=1)
    bearer = {"Authorization": f"Bearer {admin_key}"}
    assert_envelope(httpx.get(server.url + "/admin/api/audit", headers=bearer), 404)
    same = admin_proxy(make_proxy, admin_key)
    assert httpx.get(same.url + "/admin/api/audit", headers=bearer).status_code == 200


def test_sign_in_attempts_are_rate_limited_per_address(
    make_proxy: ProxyFactory, admin_key: str
) -> None:
    server = admin_proxy(make_proxy, admin_key, actions_per_minute=2)
    for _ in range(2):
        assert_envelope(httpx.post(server.url + "/admin/api/session", json={"key": "nope"}), 401)
    limited = httpx.post(server.url + "/admin/api/session", json={"key": admin_key})
    assert_envelope(limited, 429)
    assert limited.headers["retry-after"] == "60"


def test_bad_input_gets_the_envelope(make_proxy: ProxyFactory, admin_key: str) -> None:
    server = admin_proxy(make_proxy, admin_key)
    url = server.url + "/admin/api/session"
    assert_envelope(httpx.post(url, content=b"key=1"), 415)
    assert_envelope(
        httpx.post(url, content=b"{", headers={"Content-Type": "application/json"}), 400
    )
    assert_envelope(httpx.post(url, json=[1]), 400)
    assert_envelope(httpx.post(url, json={"key": 5}), 400)
    assert_envelope(httpx.post(url, json={"key": "k" * 16385}), 400)
    bearer = {"Authorization": f"Bearer {admin_key}"}
    assert_envelope(httpx.get(server.url + "/admin/api/audit?limit=abc", headers=bearer), 400)
    assert_envelope(httpx.get(server.url + "/admin/api/audit?limit=%C2%B2", headers=bearer), 400)
    assert_envelope(httpx.get(server.url + "/admin/api/audit?colour=red", headers=bearer), 400)
    assert_envelope(httpx.get(server.url + "/admin/usage?since=yesterday", headers=bearer), 400)


def test_the_console_may_post_to_its_own_origin(make_proxy: ProxyFactory, admin_key: str) -> None:
    """Browsers send Origin on same-origin POSTs: the page the proxy serves itself is not a
    cross-origin caller, while any other origin outside the CORS list still is refused."""
    server = admin_proxy(make_proxy, admin_key)
    url = server.url + "/admin/api/session"
    own = httpx.post(url, json={"key": admin_key}, headers={"Origin": server.url})
    assert own.status_code == 200, own.text
    other = httpx.post(url, json={"key": admin_key}, headers={"Origin": "http://127.0.0.1:1"})
    assert_envelope(other, 403)


def test_every_admin_route_refuses_bad_input_with_the_envelope(
    make_proxy: ProxyFactory, admin_key: str
) -> None:
    """One table over every route the app has: an unknown query parameter, and for the routes
    that take a body, a body that is not JSON, are a 400/415 in the one envelope."""
    server = admin_proxy(make_proxy, admin_key)
    bearer = {"Authorization": f"Bearer {admin_key}"}
    routes = [r for r in admin_routes(server) if r[1].startswith("/admin")]
    assert len(routes) >= 15, routes
    for method, path in routes:
        url = server.url + _filled(path).replace("{name}", "console.js")
        if path == "/admin/static/{name}":
            url = server.url + "/admin/static/console.js"
        reply = httpx.request(method, url + "?bogus=1", json={}, headers=bearer)
        body = assert_envelope(reply, 400)
        assert "bogus" in str(body["message"]), (method, path, body)
        if method == "POST" and path != "/admin/api/calls/{id}/end":
            text = httpx.request(
                method, url, content=b"x=1", headers={**bearer, "Content-Type": "text/plain"}
            )
            assert_envelope(text, 415)
