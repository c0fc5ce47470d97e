"""A client that closes its connection halfway through sending its body: nobody is left to
answer, and it is nobody's server error (no traceback, no 5xx), nothing is admitted or recorded."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.http import post, sample
from tests.support.proxy import ProxyFactory
from tests.support.webhooks import wait_for
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    """Every record of the proxy and of uvicorn (which logs what an app raises)."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("vapi_proxy", "uvicorn.error", "uvicorn")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def one_call_a_day(config: dict[str, Any]) -> None:
    config["logging"]["access_log"] = True
    config["limits"] = {"backend": "memory://", "rules": [{"name": "d", "quota": {"per_day": 1}}]}


def send_half_a_body(server: ServerThread, path: str, token: str) -> None:
    """Headers promising 200 bytes, 60 of them, then the connection closed."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {server.host}:{server.port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 200\r\n"
        "X-Request-ID: half-body\r\n"
        "\r\n"
    )
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"assistantId": "sales-coach", "padding": "' + b"x" * 17)


@pytest.mark.parametrize("path", ["/call/web", "/chat"])
def test_a_client_that_leaves_mid_body_is_a_499_without_a_traceback(
    make_proxy: ProxyFactory,
    sandbox: RunningSandbox,
    user_key: str,
    records: Records,
    path: str,
) -> None:
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)
    server = make_proxy(one_call_a_day)
    send_half_a_body(server, path, user_key)

    def access_line() -> logging.LogRecord | None:
        for record in list(records.records):
            fields = getattr(record, "fields", {})
            if record.name == "vapi_proxy.access" and fields.get("request_id") == "half-body":
                return record
        return None

    # The server notices the closed connection in its own thread: wait for its access line.
    access = wait_for(access_line)
    fields: dict[str, Any] = access.fields  # type: ignore[attr-defined]
    assert fields["status"] == 499 and fields["path"] == path
    assert fields["upstream_status"] is None
    ours = [r for r in records.records if r.name != "vapi_proxy.access"]
    assert not [r for r in ours if r.levelno >= logging.WARNING], [r.getMessage() for r in ours]
    assert not [r for r in records.records if r.exc_info], "no traceback"

    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert sample(text, "vapi_proxy_requests_total", route=path, status="499") == 1
    assert not [
        line
        for line in text.splitlines()
        if line.startswith("vapi_proxy_requests_total{") and 'status="5' in line
    ]
    assert sample(text, "vapi_proxy_admissions_total") == 0
    # Nothing reached Vapi or the ledger, and the day's one creation is still there to use.
    assert httpx.get(sandbox.url + "/__sandbox/requests", timeout=5).json() == []
    mine = {"Authorization": f"Bearer {user_key}"}
    assert httpx.get(server.url + "/call", headers=mine, timeout=10).json() == []
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
