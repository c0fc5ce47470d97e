"""Live calls in the console and ending one through Vapi's live-call control: the simulator's
end-of-call webhook follows, the ledger settles it, and it leaves the live list. The control
URL stays server-side."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.support.console import hook_proxy_with_admin, ledger_status, signed_in
from tests.support.http import assert_envelope
from tests.support.webhooks import HookProxyFactory, on_server, runtime, start_web_call, wait_for
from vapi_proxy.auth.api_key import generate_key
from vapi_proxy.ledger.schema import calls
from vapi_proxy.sandbox import ManualClock, RunningSandbox
from vapi_proxy.testing import ServerThread


@pytest.fixture(scope="module")
def admin_key() -> str:
    return generate_key()


def _stored_control_url(server: ServerThread, call_id: str) -> str | None:
    async def read() -> str | None:
        query = sa.select(calls.c.control_url).where(calls.c.id == call_id)
        async with runtime(server).ledger.database.read() as conn:
            value: str | None = (await conn.execute(query)).scalar_one()
            return value

    return on_server(server, read())


def test_a_live_call_is_listed_and_ended_from_the_console(
    make_hook_proxy: HookProxyFactory,
    hook_sandbox: RunningSandbox,
    clock: ManualClock,
    admin_key: str,
    user_key: str,
) -> None:
    server = hook_proxy_with_admin(make_hook_proxy, admin_key)
    reply = start_web_call(server, user_key)
    assert reply.status_code == 201, reply.text
    call_id = reply.json()["id"]
    assert "controlUrl" not in reply.text
    url = _stored_control_url(server, call_id)
    assert url is not None and url.endswith(f"/{call_id}/control")
    clock.advance(3)
    wait_for(lambda: ledger_status(server, call_id) == "in-progress")

    client, csrf = signed_in(server, admin_key)
    try:
        live = client.get("/admin/api/calls/live")
        assert live.status_code == 200, live.text
        mine = [c for c in live.json()["items"] if c["id"] == call_id]
        assert len(mine) == 1
        assert mine[0]["identity"] == "api_key:alice"
        assert mine[0]["profile"] == "sales-coach"
        assert mine[0]["status"] == "in-progress"
        assert mine[0]["durationSeconds"] >= 0
        assert "control" not in live.text and "/control" not in live.text

        assert_envelope(client.post(f"/admin/api/calls/{call_id}/end"), 403)  # no CSRF token
        ended = client.post(f"/admin/api/calls/{call_id}/end", headers={"X-CSRF-Token": csrf})
        assert ended.status_code == 202, ended.text
        assert "control" not in ended.text
        # The simulator's end-of-call webhook settles the call in the ledger.
        wait_for(lambda: ledger_status(server, call_id) == "ended")
        record = on_server(server, runtime(server).ledger.get_call(call_id))
        assert record.ended_reason == "assistant-ended-call"
        live_ids = [c["id"] for c in client.get("/admin/api/calls/live").json()["items"]]
        assert call_id not in live_ids
        again = client.post(f"/admin/api/calls/{call_id}/end", headers={"X-CSRF-Token": csrf})
        assert_envelope(again, 409)
        missing = client.post("/admin/api/calls/nope/end", headers={"X-CSRF-Token": csrf})
        assert_envelope(missing, 404)
        audit = client.get("/admin/api/audit", params={"action": "end-call"}).json()["items"]
        assert [(a["target"], a["outcome"]) for a in audit] == [
            ("nope", "failed"),
            (call_id, "failed"),
            (call_id, "ok"),
        ]
    finally:
        client.close()
    # What went to the simulator's control URL: the end-call message, without the private key.
    log = httpx.get(hook_sandbox.url + "/__sandbox/requests", timeout=5).json()
    sent = [e for e in log if e["path"] == f"/{call_id}/control"]
    assert [e["body"] for e in sent] == [{"type": "end-call"}]
    key = hook_sandbox.settings.private_key.get_secret_value()
    assert all(key not in str(e.get("headers")) for e in sent)


def test_blocking_with_end_calls_ends_the_identitys_live_calls(
    make_hook_proxy: HookProxyFactory,
    clock: ManualClock,
    admin_key: str,
    user_key: str,
    other_key: str,
) -> None:
    server = hook_proxy_with_admin(make_hook_proxy, admin_key)
    alice = start_web_call(server, user_key).json()["id"]
    bob = start_web_call(server, other_key, profile="support").json()["id"]
    clock.advance(3)
    wait_for(lambda: ledger_status(server, alice) == "in-progress")
    made = httpx.post(
        server.url + "/admin/api/blocks",
        json={"identity": "api_key:alice", "reason": "Abuse", "endCalls": True},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert made.status_code == 201, made.text
    assert made.json()["endedCalls"] == [alice]
    wait_for(lambda: ledger_status(server, alice) == "ended")
    assert ledger_status(server, bob) != "ended"
    refused = start_web_call(server, user_key)
    assert_envelope(refused, 403)


async def test_a_webhook_gives_the_ledger_a_control_url_it_lacked(tmp_path: Any) -> None:
    """A call the proxy did not create itself (adopted, inbound) learns its control URL from the
    first webhook that carries `call.monitor.controlUrl`; a stored one is never replaced."""
    from vapi_proxy.auth.identity import Identity
    from vapi_proxy.ledger.records import LedgerEvent
    from vapi_proxy.ledger.store import Ledger

    ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")
    await ledger.start(auto_migrate=True)
    try:
        who = Identity(subject="alice", method="api_key")
        await ledger.record_call(call_id="c1", identity=who, profile="p")
        await ledger.record_call(
            call_id="c2", identity=who, profile="p", control_url="https://keep/c2/control"
        )

        def update(call_id: str, url: str, stamp: int) -> LedgerEvent:
            message = {
                "type": "status-update",
                "status": "in-progress",
                "timestamp": stamp,
                "call": {"id": call_id, "monitor": {"controlUrl": url}},
            }
            return LedgerEvent.from_vapi(message)

        await ledger.apply_events([(update("c1", "javascript:alert(1)", 1), ())])
        assert (await ledger.get_call("c1")).control_url is None  # type: ignore[union-attr]
        await ledger.apply_events([(update("c1", "https://vapi/c1/control", 2), ())])
        await ledger.apply_events([(update("c2", "https://other/c2/control", 3), ())])
        assert (await ledger.get_call("c1")).control_url == "https://vapi/c1/control"  # type: ignore[union-attr]
        assert (await ledger.get_call("c2")).control_url == "https://keep/c2/control"  # type: ignore[union-attr]
    finally:
        await ledger.aclose()
