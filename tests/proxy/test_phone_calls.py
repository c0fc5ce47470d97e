"""`POST /call` through the proxy: the profile picks assistant and number, the client only the
callee, checked against the profile's destinations; refusals never reach Vapi."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.clients import (
    HTTP,
    PHONE_ID,
    bearer,
    clear_requests,
    phone_profiles,
    seed_phone_number,
    upstream_requests,
)
from tests.support.proxy import SAVED_ASSISTANT_ID, ProxyFactory
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread


def _call(proxy: ServerThread, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return HTTP.post(f"{proxy.url}/call", json=body, headers={**bearer(key), **headers})


def test_a_phone_call_rings_the_profiles_number_with_its_assistant(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    clear_requests(sandbox)
    reply = _call(
        phone_proxy,
        user_key,
        {
            "assistantId": "outbound",
            "customer": {"number": "+14155550123", "name": "Ann"},
            "assistantOverrides": {"variableValues": {"firstName": "Ann"}},
        },
    )
    assert reply.status_code == 201, reply.text
    call = reply.json()
    assert call["type"] == "outboundPhoneCall" and call["status"] == "queued"
    assert call["customer"] == {"number": "+14155550123", "name": "Ann"}
    assert "monitor" not in call and "orgId" not in call
    (sent,) = upstream_requests(sandbox, "/call")
    body = sent["body"]
    assert body["assistantId"] == SAVED_ASSISTANT_ID
    assert body["phoneNumberId"] == PHONE_ID
    assert body["customer"] == {"number": "+14155550123", "name": "Ann"}
    overrides = body["assistantOverrides"]
    assert overrides["maxDurationSeconds"] == 300
    assert overrides["variableValues"] == {"firstName": "Ann", "caller": "alice"}
    assert overrides["metadata"]["vapiProxy"]["profile"] == "outbound"


@pytest.mark.parametrize(
    ("number", "status", "fragment"),
    [
        ("+33612345678", 403, "outside the destinations"),  # France: not in +1/+44
        ("+19005550123", 403, "premium-rate"),  # default premium denylist
        ("+447012345678", 403, "premium-rate"),  # UK personal numbers
        ("+15551234567", 403, "premium-rate"),  # the profile's own denylist
        ("4155550123", 400, "E.164"),
        ("+1415", 400, "E.164"),
    ],
)
def test_numbers_outside_the_rules_are_refused_before_vapi(
    phone_proxy: ServerThread,
    sandbox: RunningSandbox,
    user_key: str,
    number: str,
    status: int,
    fragment: str,
) -> None:
    clear_requests(sandbox)
    reply = _call(
        phone_proxy, user_key, {"assistantId": "outbound", "customer": {"number": number}}
    )
    assert reply.status_code == status, reply.text
    assert fragment in str(reply.json()["message"])
    assert upstream_requests(sandbox, "/call") == []


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (
            {"assistantId": "outbound", "customer": {"number": "+14155550123", "email": "a@b"}},
            400,
            "customer.email",
        ),
        (
            {
                "assistantId": "outbound",
                "customer": {"number": "+14155550123", "numberE164CheckEnabled": False},
            },
            400,
            "numberE164CheckEnabled",
        ),
        (
            {
                "assistantId": "outbound",
                "phoneNumberId": "x",
                "customer": {"number": "+14155550123"},
            },
            400,
            "phoneNumberId",
        ),
        ({"assistantId": "sales-coach", "customer": {"number": "+14155550123"}}, 403, "phone"),
        ({"assistantId": "outbound"}, 400, "callee"),
        ({"assistantId": "nope", "customer": {"number": "+14155550123"}}, 404, "nope"),
        (
            {
                "assistantId": "outbound-single",
                "customers": [{"number": "+14155550123"}, {"number": "+14155550124"}],
            },
            403,
            "batch",
        ),
        (
            {
                "assistantId": "outbound",
                "customers": [{"number": "+1415555012" + str(i)} for i in range(4)],
            },
            403,
            "at most 3",
        ),
    ],
)
def test_what_the_client_may_not_choose_is_refused(
    phone_proxy: ServerThread,
    sandbox: RunningSandbox,
    user_key: str,
    body: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    clear_requests(sandbox)
    reply = _call(phone_proxy, user_key, body)
    assert reply.status_code == status, reply.text
    assert fragment in str(reply.json()["message"])
    assert upstream_requests(sandbox, "/call") == []


def test_a_batch_is_one_call_per_callee_each_recorded(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    clear_requests(sandbox)
    reply = _call(
        phone_proxy,
        user_key,
        {
            "assistantId": "outbound",
            "customers": [{"number": "+14155550131"}, {"number": "+442071234567"}],
        },
    )
    assert reply.status_code == 201, reply.text
    batch = reply.json()
    assert batch["errors"] == []
    assert [c["customer"]["number"] for c in batch["results"]] == ["+14155550131", "+442071234567"]
    sent = upstream_requests(sandbox, "/call")
    assert [s["body"]["customer"]["number"] for s in sent] == ["+14155550131", "+442071234567"]
    listed = HTTP.get(f"{phone_proxy.url}/call", headers=bearer(user_key)).json()
    assert {c["id"] for c in batch["results"]} <= {c["id"] for c in listed}


def test_each_callee_of_a_batch_counts_against_the_limits(
    sandbox: RunningSandbox, make_proxy: ProxyFactory, user_key: str
) -> None:
    seed_phone_number(sandbox)

    def patch(config: dict[str, Any]) -> None:
        phone_profiles(config)
        config["limits"] = {"rules": [{"name": "two", "quota": {"per_day": 2}}]}

    proxy = make_proxy(patch)
    clear_requests(sandbox)
    reply = _call(
        proxy,
        user_key,
        {"assistantId": "outbound", "customers": [{"number": f"+1415555014{i}"} for i in range(3)]},
    )
    assert reply.status_code == 201, reply.text
    batch = reply.json()
    assert len(batch["results"]) == 2 and len(batch["errors"]) == 1
    assert batch["errors"][0]["customer"] == {"number": "+14155550142"}
    assert len(upstream_requests(sandbox, "/call")) == 2


def test_an_api_key_limited_to_other_profiles_is_refused(
    phone_proxy: ServerThread, sandbox: RunningSandbox, other_key: str
) -> None:
    clear_requests(sandbox)
    reply = _call(
        phone_proxy, other_key, {"assistantId": "outbound", "customer": {"number": "+14155550123"}}
    )
    assert reply.status_code == 403
    assert upstream_requests(sandbox, "/call") == []


def test_an_idempotency_key_replays_the_first_phone_call(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    clear_requests(sandbox)
    body = {"assistantId": "outbound", "customer": {"number": "+14155550150"}}
    first = _call(phone_proxy, user_key, body, **{"Idempotency-Key": "ring-1"})
    second = _call(phone_proxy, user_key, body, **{"Idempotency-Key": "ring-1"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert len(upstream_requests(sandbox, "/call")) == 1
