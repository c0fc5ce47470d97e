"""`GET /call/{id}` and `GET /call`: a caller reads only the calls the ledger says it created."""

from __future__ import annotations

import pytest

from tests.support.clients import (
    HTTP,
    bearer,
    clear_requests,
    upstream_requests,
)
from tests.support.http import assert_envelope
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread


def _web_call(proxy: ServerThread, key: str, profile: str = "sales-coach") -> str:
    reply = HTTP.post(f"{proxy.url}/call/web", json={"assistantId": profile}, headers=bearer(key))
    assert reply.status_code == 201, reply.text
    call_id: str = reply.json()["id"]
    return call_id


def test_the_creator_reads_its_call_scrubbed(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    call_id = _web_call(phone_proxy, user_key)
    reply = HTTP.get(f"{phone_proxy.url}/call/{call_id}", headers=bearer(user_key))
    assert reply.status_code == 200, reply.text
    call = reply.json()
    assert call["id"] == call_id and call["type"] == "webCall"
    assert {"status", "createdAt", "updatedAt"} <= set(call)
    assert "monitor" not in call and "orgId" not in call and "assistantOverrides" not in call


def test_another_users_call_is_404_and_reaches_no_upstream(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str, other_key: str
) -> None:
    call_id = _web_call(phone_proxy, other_key, "support")
    clear_requests(sandbox)
    theirs = HTTP.get(f"{phone_proxy.url}/call/{call_id}", headers=bearer(user_key))
    unknown = HTTP.get(f"{phone_proxy.url}/call/{'0' * 36}", headers=bearer(user_key))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["message"] == unknown.json()["message"]
    assert upstream_requests(sandbox) == []


def test_reads_need_a_credential(phone_proxy: ServerThread) -> None:
    assert HTTP.get(f"{phone_proxy.url}/call/x").status_code == 401
    assert HTTP.get(f"{phone_proxy.url}/call").status_code == 401


def test_the_list_holds_only_the_callers_calls_newest_first(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str, other_key: str
) -> None:
    mine = [_web_call(phone_proxy, user_key) for _ in range(3)]
    phone = HTTP.post(
        f"{phone_proxy.url}/call",
        json={"assistantId": "outbound", "customer": {"number": "+14155550177"}},
        headers=bearer(user_key),
    ).json()["id"]
    theirs = _web_call(phone_proxy, other_key, "support")
    clear_requests(sandbox)
    listed = HTTP.get(f"{phone_proxy.url}/call", headers=bearer(user_key)).json()
    ids = [c["id"] for c in listed]
    assert ids[:4] == [phone, *reversed(mine)]
    assert theirs not in ids
    by_id = {c["id"]: c for c in listed}
    assert by_id[phone]["type"] == "outboundPhoneCall"
    assert by_id[mine[0]] | {"status": "queued"} == by_id[mine[0]]
    assert by_id[mine[0]]["assistantId"] == "sales-coach"
    assert upstream_requests(sandbox) == []  # the list is the ledger's, Vapi is not asked
    two = HTTP.get(f"{phone_proxy.url}/call?limit=2", headers=bearer(user_key)).json()
    assert [c["id"] for c in two] == ids[:2]
    assert HTTP.get(f"{phone_proxy.url}/call?limit=0", headers=bearer(user_key)).json() == []
    for bad in ("1001", "-1", "x"):
        refused = HTTP.get(f"{phone_proxy.url}/call?limit={bad}", headers=bearer(user_key))
        assert refused.status_code == 400


@pytest.mark.parametrize(
    "query",
    [
        "limit=%C2%B2",  # "²": str.isdigit() says yes, int() says no
        "limit=%D9%A3",  # Arabic-Indic three
        "limit=" + "9" * 5000,  # past int()'s digit limit
        "limit=%2B5",
        "limit=%205",
        "limit=1_0",
        "limit=",
        "limit=1&limit=2",
    ],
)
def test_a_bad_limit_is_a_400_naming_it(
    phone_proxy: ServerThread, user_key: str, query: str
) -> None:
    reply = HTTP.get(f"{phone_proxy.url}/call?{query}", headers=bearer(user_key))
    body = assert_envelope(reply, 400)
    assert "'limit'" in str(body["message"])


def test_unknown_query_parameters_are_refused_on_every_route(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    clear_requests(sandbox)
    for method, path in (
        ("GET", "/call?assistantId=x"),
        ("GET", f"/call/{'0' * 36}?limit=1"),
        ("POST", "/call/web?assistantId=x"),
        ("POST", "/call?x=1"),
        ("POST", "/chat?stream=true"),
        ("POST", "/chat/responses?x="),
        ("POST", "/chat/web?x=1"),
        ("POST", "/chat/web/responses?x=1"),
    ):
        reply = HTTP.request(
            method,
            phone_proxy.url + path,
            json={"assistantId": "sales-coach"},
            headers=bearer(user_key),
        )
        body = assert_envelope(reply, 400)
        assert "Query parameter" in str(body["message"]), (path, body)
    assert upstream_requests(sandbox) == []
