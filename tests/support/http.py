"""Talking to a proxy under test over loopback HTTP: posting a body, reading the simulator's log,
checking the one error envelope, reading a Prometheus sample."""

from __future__ import annotations

import re
from typing import Any

import httpx

from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread

ENVELOPE_KEYS = {"message", "error", "statusCode", "requestId"}


def assert_envelope(reply: httpx.Response, status: int) -> dict[str, object]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == ENVELOPE_KEYS
    assert body["statusCode"] == status
    assert body["requestId"] == reply.headers["x-request-id"]
    assert "Traceback" not in reply.text
    return body


def post(
    server: ServerThread,
    body: Any,
    token: str | None,
    *,
    path: str = "/call/web",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {"Content-Type": "application/json"}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    return httpx.post(server.url + path, content=content, headers=sent, timeout=10)


def upstream_bodies(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    log = httpx.get(sandbox.url + "/__sandbox/requests", timeout=5).json()
    return [entry for entry in log if entry["path"] == "/call/web"]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, or 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
