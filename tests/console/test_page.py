"""The console page: served by the proxy from package data, no inline script, no third-party
URL, the strict CSP on the page and its files."""

from __future__ import annotations

import re

import httpx

from tests.support.console import admin_proxy
from tests.support.http import assert_envelope
from tests.support.proxy import ProxyFactory
from vapi_proxy.auth.api_key import generate_key
from vapi_proxy.routes.admin import ASSETS


def test_the_page_and_its_files_come_from_the_proxy(make_proxy: ProxyFactory) -> None:
    server = admin_proxy(make_proxy, generate_key())
    page = httpx.get(server.url + "/admin")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    # Every script is a file from the proxy: nothing inline, which the CSP would block anyway.
    scripts = re.findall(r"<script([^>]*)>", page.text)
    assert scripts and all('src="admin/static/' in attrs for attrs in scripts)
    for name in ("console.js", "console.css"):
        reply = httpx.get(server.url + f"/admin/static/{name}")
        assert reply.status_code == 200
        assert reply.headers["content-security-policy"] == csp
    assert_envelope(httpx.get(server.url + "/admin/static/console.html"), 404)
    assert_envelope(httpx.get(server.url + "/admin/static/..%2Fstore.py"), 404)
    assert_envelope(httpx.get(server.url + "/admin/static/nope.js"), 404)


def test_no_asset_names_a_third_party_host() -> None:
    for name, (body, _media) in ASSETS.items():
        text = body.decode()
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}", text))
        # The SVG namespace is an identifier, never fetched.
        assert urls <= {"http://www.w3.org"}, (name, urls)
        assert "eval(" not in text and "innerHTML" not in text, name
