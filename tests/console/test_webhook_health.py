"""Webhook health in the console: recent events by type, verification failures, and the
forwarding outbox's backlog with its oldest item."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.console import hook_proxy_with_admin, ledger_status
from tests.support.http import assert_envelope
from tests.support.webhooks import HookProxyFactory, on_server, runtime, start_web_call, wait_for
from vapi_proxy.auth.api_key import generate_key
from vapi_proxy.ledger.records import OutboxItem
from vapi_proxy.sandbox import ManualClock


def test_events_failures_and_outbox(
    make_hook_proxy: HookProxyFactory, clock: ManualClock, user_key: str
) -> None:
    admin_key = generate_key()
    server = hook_proxy_with_admin(make_hook_proxy, admin_key)
    admin = {"Authorization": f"Bearer {admin_key}"}
    call_id = start_web_call(server, user_key).json()["id"]
    clock.advance(40)
    wait_for(lambda: ledger_status(server, call_id) == "ended")
    forged = httpx.post(
        server.url + "/webhook",
        json={"message": {"type": "status-update", "status": "ended"}},
        headers={"X-Vapi-Signature": "0" * 64, "X-Vapi-Timestamp": "1"},
    )
    assert forged.status_code == 401
    on_server(
        server,
        runtime(server).ledger.outbox_add(
            [
                OutboxItem("e1", "https://app.example/hooks?token=s3cret", "status-update", b"{}"),
                OutboxItem("e2", "https://app.example/hooks", "end-of-call-report", b"{}"),
            ]
        ),
    )

    reply = httpx.get(server.url + "/admin/api/webhooks", headers=admin)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    types = {e["type"]: e for e in body["events"]}
    assert types["status-update"]["count"] >= 2
    assert types["end-of-call-report"]["count"] == 1
    assert types["end-of-call-report"]["unknownCall"] == 0
    assert sum(body["verification"]["rejected"].values()) == 1
    outbox = body["outbox"]
    assert (outbox["pending"], outbox["parked"]) == (2, 0)
    oldest = outbox["oldestPending"]
    assert oldest["type"] == "status-update" and oldest["attempts"] == 0
    assert oldest["target"] == "https://app.example/hooks"  # the query (a token) is not shown
    assert "s3cret" not in reply.text
    assert_envelope(httpx.get(server.url + "/admin/api/webhooks?hours=0", headers=admin), 400)
    assert_envelope(httpx.get(server.url + "/admin/api/webhooks"), 401)
