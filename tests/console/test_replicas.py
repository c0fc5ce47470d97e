"""Two replicas on one PostgreSQL ledger: a block made through one refuses the identity's next
call on the other (within `admin.block_refresh_seconds`), an unblock lets it back the same way,
and a console session opened on one is good on the other."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.support.console import admin_proxy
from tests.support.http import assert_envelope, post
from tests.support.proxy import ProxyFactory
from vapi_proxy.auth.api_key import generate_key

BOUND_SECONDS = 20.0


def _until(check: Any, what: str) -> Any:
    """Poll a condition that becomes true within the refresh interval (bounded, not timed)."""
    deadline = time.monotonic() + BOUND_SECONDS
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


def test_a_block_reaches_the_other_replica(
    make_proxy: ProxyFactory, postgres_ledger: str, user_key: str
) -> None:
    admin_key = generate_key()

    def shared(config: dict[str, Any]) -> None:
        config["ledger"] = {"url": postgres_ledger, "auto_migrate": True}
        config["limits"] = {"backend": "memory://"}

    one = admin_proxy(make_proxy, admin_key, shared, block_refresh_seconds=0.2)
    two = admin_proxy(make_proxy, admin_key, shared, block_refresh_seconds=0.2)
    assert post(two, {"assistantId": "sales-coach"}, user_key).status_code == 201

    with httpx.Client(base_url=one.url, timeout=10) as console:
        csrf = console.post("/admin/api/session", json={"key": admin_key}).json()["csrfToken"]
        made = console.post(
            "/admin/api/blocks",
            json={"identity": "api_key:alice", "reason": "Chargeback"},
            headers={"X-CSRF-Token": csrf},
        )
        assert made.status_code == 201, made.text
        cookie = dict(console.cookies)

    refused = _until(
        lambda: (r := post(two, {"assistantId": "sales-coach"}, user_key)).status_code == 403 and r,
        "the block on the other replica",
    )
    assert assert_envelope(refused, 403)["message"] == (
        "This account is blocked: Chargeback. Contact the service's operator."
    )

    # The session made on replica one works on replica two: it lives in the database.
    with httpx.Client(base_url=two.url, timeout=10, cookies=cookie) as console:
        assert console.get("/admin/api/session").json()["csrfToken"] == csrf
        gone = console.post(
            "/admin/api/unblock",
            json={"identity": "api_key:alice"},
            headers={"X-CSRF-Token": csrf},
        )
        assert gone.status_code == 200, gone.text
    _until(
        lambda: post(one, {"assistantId": "sales-coach"}, user_key).status_code == 201,
        "the unblock on the first replica",
    )
