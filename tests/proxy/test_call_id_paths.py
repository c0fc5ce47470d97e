"""`GET /call/{id}` with ids no call has: whatever the URL carries stays one path segment at
Vapi (quoted), can never break the request line, and never becomes a 500."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.clients import HTTP, bearer, clear_requests, upstream_requests
from tests.support.http import assert_envelope
from tests.support.proxy import ProxyFactory
from vapi_proxy.sandbox import RunningSandbox

HOSTILE = [
    "caf\u00e9-\u2603",
    "a b",
    "a\r\nX-Injected: 1",
    "100%",
    "%41",
    "a?limit=1",
    "a#top",
    "..%2Fassistant",
    "../assistant",
]


def _owning_a_call_named(
    call_id: str, make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str, tmp_path: Path
) -> str:
    """A proxy (its URL) whose ledger says the user owns a call with this id: a real call is
    created, then renamed (the ledger holds only ids Vapi gave). Vapi's log starts empty."""
    ledger = tmp_path / "ledger.db"
    proxy = make_proxy(lambda c: c.update(ledger={"url": f"sqlite:///{ledger}"}))
    created = HTTP.post(
        f"{proxy.url}/call/web", json={"assistantId": "sales-coach"}, headers=bearer(user_key)
    )
    assert created.status_code == 201, created.text
    with contextlib.closing(sqlite3.connect(ledger)) as db, db:  # closed: 3.13 reports it
        db.execute("UPDATE calls SET id = ? WHERE id = ?", (call_id, created.json()["id"]))
    clear_requests(sandbox)
    return proxy.url


@pytest.mark.parametrize("call_id", HOSTILE)
def test_a_hostile_id_reaches_vapi_as_one_quoted_segment(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str, tmp_path: Path, call_id: str
) -> None:
    proxy_url = _owning_a_call_named(call_id, make_proxy, sandbox, user_key, tmp_path)
    reply = HTTP.get(f"{proxy_url}/call/{quote(call_id, safe='')}", headers=bearer(user_key))
    if "/" in call_id:
        # A `/` (even sent as %2F) is a path separator by the time the router sees it.
        assert_envelope(reply, 404)
        assert upstream_requests(sandbox) == []
        return
    # Vapi has no such call: its 404 is the operator's (as for a call it no longer has).
    assert_envelope(reply, 502)
    seen = upstream_requests(sandbox, "/call")
    assert [(e["method"], e["path"], e["query"]) for e in seen] == [("GET", f"/call/{call_id}", "")]


@pytest.mark.parametrize("call_id", [".", ".."])
def test_a_dot_id_is_not_found_and_never_reaches_vapi(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str, tmp_path: Path, call_id: str
) -> None:
    proxy_url = _owning_a_call_named(call_id, make_proxy, sandbox, user_key, tmp_path)
    dots = call_id.replace(".", "%2E")  # a client would resolve a bare `..` away
    reply = HTTP.get(f"{proxy_url}/call/{dots}", headers=bearer(user_key))
    assert_envelope(reply, 404)
    assert upstream_requests(sandbox) == []
