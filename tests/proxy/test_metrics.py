"""`GET /metrics` after real traffic: counts, bounded labels, and nothing secret."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.http import post, sample
from tests.support.proxy import ProxyFactory
from vapi_proxy.testing import ServerThread


def limited(config: dict[str, Any]) -> None:
    config["limits"] = {"backend": "memory://", "rules": [{"name": "d", "quota": {"per_day": 2}}]}


def test_metrics_count_requests_refusals_and_upstream(
    make_proxy: ProxyFactory, user_key: str
) -> None:
    server = make_proxy(limited)
    for _ in range(3):
        post(server, {"assistantId": "sales-coach"}, user_key)
    post(server, {"assistantId": "no-such-profile-xyz"}, user_key)
    post(server, {"assistantId": "sales-coach"}, "wrong-token-abcdefghijklmnop")
    httpx.get(server.url + "/call/0193aaaa-bbbb-7ccc-8ddd-eeeeffff0000")
    httpx.get(server.url + "/some/random/path/12345")

    text = httpx.get(server.url + "/metrics").text
    ok = sample(
        text, "vapi_proxy_requests_total", route="/call/web", status="201", profile="sales-coach"
    )
    assert ok == 2
    assert sample(text, "vapi_proxy_requests_total", route="/call/web", status="429") == 1
    assert sample(text, "vapi_proxy_limit_refusals_total", limit="quota", kind="call") == 1
    # An unknown profile name from the client never becomes a label value.
    assert "no-such-profile-xyz" not in text
    assert "/some/random/path" not in text and "0193aaaa" not in text
    assert sample(text, "vapi_proxy_upstream_duration_seconds_count", endpoint="/call/web") == 2
    assert sample(text, "vapi_proxy_auth_total", result="failure", reason="bad_api_key") >= 1
    assert sample(text, "vapi_proxy_auth_total", result="success", reason="api_key") >= 3
    assert "vapi_proxy_live_calls" in text
    assert user_key not in text and "wrong-token" not in text


def test_metrics_are_refused_to_other_networks(make_proxy: ProxyFactory) -> None:
    server = make_proxy(lambda c: c.update(metrics={"allowed_networks": ["10.0.0.0/8"]}))
    reply = httpx.get(server.url + "/metrics")
    assert reply.status_code == 404
    assert reply.json()["statusCode"] == 404


def behind_balancer(config: dict[str, Any]) -> None:
    # The test's loopback peer plays the load balancer, as a private-network ingress would.
    config["auth"]["trusted_proxies"] = ["127.0.0.0/8"]


def test_a_public_client_relayed_by_the_balancer_is_public(make_proxy: ProxyFactory) -> None:
    server = make_proxy(behind_balancer)
    relayed = {"X-Forwarded-For": "203.0.113.9"}
    reply = httpx.get(server.url + "/metrics", headers=relayed)
    assert reply.status_code == 404
    assert "vapi_proxy" not in reply.text
    ready = httpx.get(server.url + "/readyz", headers=relayed)
    assert ready.json() == {"status": "ready"}
    # A scraper inside the network, relayed or not, still sees them.
    inside = {"X-Forwarded-For": "10.2.3.4"}
    assert httpx.get(server.url + "/metrics", headers=inside).status_code == 200
    assert "checks" in httpx.get(server.url + "/readyz", headers=inside).json()
    assert httpx.get(server.url + "/metrics").status_code == 200
    # A header the balancer does not write cannot make a public client internal either.
    spoof = {"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=10.2.3.4"}
    assert httpx.get(server.url + "/metrics", headers=spoof).status_code == 404


def _samples(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = server.app.runtime.metrics.registry  # the app's own registry, in this process
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def _traffic(server: ServerThread, user_key: str) -> None:
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 429
    assert (
        post(server, {"assistantId": "sales-coach"}, "wrong-token-abcdefghijkl").status_code == 401
    )


@pytest.mark.parametrize("enabled", [False, True])
def test_disabled_metrics_are_never_touched(
    make_proxy: ProxyFactory, user_key: str, enabled: bool
) -> None:
    def config(c: dict[str, Any]) -> None:
        c["limits"] = {"backend": "memory://", "rules": [{"name": "d", "quota": {"per_day": 1}}]}
        c["metrics"] = {"enabled": enabled}

    server = make_proxy(config)
    before = _samples(server)
    _traffic(server, user_key)
    after = _samples(server)
    if enabled:
        text = server.app.runtime.metrics.render().decode()
        assert sample(text, "vapi_proxy_requests_total", route="/call/web", status="201") == 1
        assert sample(text, "vapi_proxy_limit_refusals_total", limit="quota", kind="call") == 1
        assert sample(text, "vapi_proxy_admissions_total", kind="call", outcome="created") == 1
        assert sample(text, "vapi_proxy_upstream_duration_seconds_count", endpoint="/call/web")
        assert sample(text, "vapi_proxy_auth_total", result="failure", reason="bad_api_key")
    else:
        assert after == before
        # Including the paths this traffic did not take (Vapi's refusals, streams, webhooks).
        runtime = server.app.runtime
        assert runtime.upstream.observer is None and runtime.replies.observe is None
        assert runtime.admissions.metrics is None and server.app.metrics is None
        assert httpx.get(server.url + "/metrics").status_code == 404
