"""Call endpoints against API-FACTS §2.2-2.6: shapes, errors, listing, lifecycle, control."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from tests.support.sandbox import ASSISTANT_ID, NUMBER_ID, base_settings, private, public
from vapi_proxy.sandbox import ManualClock, RunningSandbox, run_sandbox
from vapi_proxy.sandbox.call_routes import NO_ASSISTANT
from vapi_proxy.sandbox.settings import LifecycleSettings


def web_call(sb: RunningSandbox, client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post(sb.url + "/call/web", json=body, headers=public(sb))


def test_web_call_shape(sim: RunningSandbox, client: httpx.Client) -> None:
    resp = web_call(
        sim,
        client,
        {"assistantId": ASSISTANT_ID, "assistantOverrides": {"variableValues": {"n": "Ada"}}},
    )
    assert resp.status_code == 201
    call = resp.json()
    assert call["type"] == "webCall"
    assert call["status"] == "queued"
    assert call["orgId"] == sim.settings.org_id
    assert call["cost"] == 0
    assert call["createdAt"] == call["updatedAt"]
    assert call["assistantId"] == ASSISTANT_ID
    assert call["assistantOverrides"] == {"variableValues": {"n": "Ada"}}
    assert call["webCallUrl"] == call["transport"]["callUrl"]
    assert call["webCallUrl"].startswith("https://vapi.daily.co/")
    assert call["transport"]["provider"] == "daily"
    assert call["transport"]["roomDeleteOnUserLeaveEnabled"] is True
    _, payload, _ = call["transport"]["callToken"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    assert claims["r"] == call["webCallUrl"].rsplit("/", 1)[1]
    assert call["monitor"]["listenUrl"] == f"wss://{sim.url[7:]}/{call['id']}/listen"
    assert call["monitor"]["controlUrl"] == f"{sim.url}/{call['id']}/control"
    assert call["artifactPlan"]["videoRecordingEnabled"] is False
    assert call["id"][14] == "7"  # UUIDv7 like Vapi's recent ids


def test_web_call_transient_assistant_is_echoed(sim: RunningSandbox, client: httpx.Client) -> None:
    assistant = {
        "name": "Temp",
        "voice": {"provider": "tavus", "voiceId": "r1"},
        "artifactPlan": {"videoRecordingEnabled": True},
    }
    call = web_call(
        sim, client, {"assistant": assistant, "roomDeleteOnUserLeaveEnabled": False}
    ).json()
    assert call["assistant"] == assistant
    assert call["artifactPlan"]["videoRecordingEnabled"] is True
    assert call["transport"]["roomDeleteOnUserLeaveEnabled"] is False


def test_trailing_slash_base_url_is_accepted(sim: RunningSandbox, client: httpx.Client) -> None:
    resp = client.post(
        sim.url + "//call/web", json={"assistantId": ASSISTANT_ID}, headers=public(sim)
    )
    assert resp.status_code == 201


def test_whitelist_errors_are_collected(sim: RunningSandbox, client: httpx.Client) -> None:
    resp = web_call(
        sim,
        client,
        {
            "assistantId": ASSISTANT_ID,
            "customer": {"number": "1"},
            "assistant": {"userId": "u"},
            "assistantOverrides": {"tools": []},
        },
    )
    assert resp.status_code == 400
    assert resp.json() == {
        "message": [
            "property customer should not exist",
            "assistant.property userId should not exist",
            "assistantOverrides.property tools should not exist",
        ],
        "error": "Bad Request",
        "statusCode": 400,
    }


def test_no_assistant_is_400(sim: RunningSandbox, client: httpx.Client) -> None:
    resp = web_call(sim, client, {"assistantOverrides": {"variableValues": {}}})
    assert resp.status_code == 400
    assert resp.json()["message"] == NO_ASSISTANT
    assert resp.json()["message"].endswith("`assistant`, `assistantId`, `squad`, Or `squadId`.")


def test_unknown_assistant_id_is_400(sim: RunningSandbox, client: httpx.Client) -> None:
    # API-FACTS §2.3: a missing resource is a 400 "Client/policy failure", in NestJS's shape,
    # naming the field in backticks like Vapi's other "Couldn't Get" messages.
    for path, body in (
        ("/call/web", {"assistantId": "nope"}),
        ("/chat", {"assistantId": "nope", "input": "hi"}),
    ):
        resp = client.post(sim.url + path, json=body, headers=private(sim))
        assert resp.status_code == 400
        assert resp.json() == {
            "message": "Couldn't Get Assistant. `assistantId` nope Not Found.",
            "error": "Bad Request",
            "statusCode": 400,
        }


def test_accept_any_assistant_id(client: httpx.Client) -> None:
    with run_sandbox(base_settings(accept_any_assistant_id=True)) as sb:
        assert web_call(sb, client, {"assistantId": "anything"}).status_code == 201


def test_invalid_json_is_400(sim: RunningSandbox, client: httpx.Client) -> None:
    resp = client.post(sim.url + "/call/web", content=b"{nope", headers=public(sim))
    assert resp.status_code == 400
    assert resp.json()["error"] == "Bad Request"


def test_unknown_route_is_nest_404(sim: RunningSandbox, client: httpx.Client) -> None:
    resp = client.post(sim.url + "/nowhere", headers=private(sim))
    assert resp.status_code == 404
    assert resp.json() == {
        "message": "Cannot POST /nowhere",
        "error": "Not Found",
        "statusCode": 404,
    }


def test_get_call_and_404(sim: RunningSandbox, client: httpx.Client) -> None:
    created = web_call(sim, client, {"assistantId": ASSISTANT_ID}).json()
    got = client.get(f"{sim.url}/call/{created['id']}", headers=private(sim))
    assert got.status_code == 200
    assert got.json()["webCallUrl"] == created["webCallUrl"]
    missing = client.get(
        f"{sim.url}/call/00000000-0000-0000-0000-000000000000", headers=private(sim)
    )
    assert missing.status_code == 404
    assert missing.json() == {"message": "Call not found", "error": "Not Found", "statusCode": 404}


def test_list_calls_is_a_plain_array_newest_first(client: httpx.Client) -> None:
    with run_sandbox(base_settings()) as sb:
        ids = [web_call(sb, client, {"assistantId": ASSISTANT_ID}).json()["id"] for _ in range(3)]
        web_call(sb, client, {"assistant": {"name": "other"}})
        listed = client.get(
            sb.url + "/call", params={"assistantId": ASSISTANT_ID}, headers=private(sb)
        ).json()
        assert [c["id"] for c in listed] == ids[::-1]
        limited = client.get(sb.url + "/call", params={"limit": 2}, headers=private(sb)).json()
        assert len(limited) == 2
        by_id = client.get(sb.url + "/call", params={"id": ids[0]}, headers=private(sb)).json()
        assert [c["id"] for c in by_id] == [ids[0]]
        too_many = client.get(sb.url + "/call", params={"limit": 1001}, headers=private(sb))
        assert too_many.status_code == 400
        assert too_many.json()["message"] == ["limit must not be greater than 1000"]


def test_phone_call(sim: RunningSandbox, client: httpx.Client) -> None:
    body = {
        "assistantId": ASSISTANT_ID,
        "phoneNumberId": NUMBER_ID,
        "customer": {"number": "+15551234567"},
        "name": "Follow-up",
    }
    resp = client.post(sim.url + "/call", json=body, headers=private(sim))
    assert resp.status_code == 201
    call = resp.json()
    assert call["type"] == "outboundPhoneCall"
    assert call["status"] == "queued"
    assert call["customer"] == {"number": "+15551234567"}
    assert call["phoneNumberId"] == NUMBER_ID
    assert call["phoneCallProvider"] == "twilio"
    assert "webCallUrl" not in call


def test_phone_call_batch(sim: RunningSandbox, client: httpx.Client) -> None:
    body = {
        "assistantId": ASSISTANT_ID,
        "phoneNumberId": NUMBER_ID,
        "customers": [{"number": "+15550001"}, {"number": "+15550002"}],
    }
    batch = client.post(sim.url + "/call", json=body, headers=private(sim)).json()
    assert [c["customer"]["number"] for c in batch["results"]] == ["+15550001", "+15550002"]
    assert batch["errors"] == []
    assert batch["subscriptionLimits"]["concurrencyBlocked"] is False


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {"assistantId": ASSISTANT_ID, "phoneNumberId": "nope", "customer": {"number": "+1555"}},
            "phoneNumberId",
        ),
        ({"assistantId": ASSISTANT_ID, "phoneNumberId": NUMBER_ID}, "customer"),
        ({"assistantId": ASSISTANT_ID, "customer": {"number": "+1555"}}, "phoneNumberId"),
    ],
)
def test_phone_call_errors(
    sim: RunningSandbox, client: httpx.Client, body: dict[str, Any], fragment: str
) -> None:
    resp = client.post(sim.url + "/call", json=body, headers=private(sim))
    assert resp.status_code == 400
    assert fragment in resp.json()["message"]


def test_lifecycle_is_read_from_the_clock(client: httpx.Client) -> None:
    clock = ManualClock()
    settings = base_settings(
        lifecycle=LifecycleSettings(ringing_after=1, in_progress_after=2, duration=30),
        cost_per_minute=0.12,
    )
    with run_sandbox(settings, clock=clock) as sb:
        body = {
            "assistantId": ASSISTANT_ID,
            "phoneNumberId": NUMBER_ID,
            "customer": {"number": "+15551234567"},
        }
        call_id = client.post(sb.url + "/call", json=body, headers=private(sb)).json()["id"]

        def status() -> dict[str, Any]:
            resp = client.get(f"{sb.url}/call/{call_id}", headers=private(sb))
            return dict(resp.json())

        assert status()["status"] == "queued"
        clock.advance(1)
        assert status()["status"] == "ringing"
        clock.advance(1)
        assert status()["status"] == "in-progress"
        assert "startedAt" in status()
        clock.advance(30)
        ended = status()
    assert ended["status"] == "ended"
    assert ended["endedReason"] == "customer-ended-call"
    assert ended["cost"] == pytest.approx(0.06)  # 30 s at 0.12 USD/min
    assert ended["costBreakdown"]["total"] == ended["cost"]


def test_max_duration_caps_the_call(client: httpx.Client) -> None:
    clock = ManualClock()
    settings = base_settings(lifecycle=LifecycleSettings(in_progress_after=0, duration=100))
    with run_sandbox(settings, clock=clock) as sb:
        call = web_call(
            sb,
            client,
            {"assistantId": ASSISTANT_ID, "assistantOverrides": {"maxDurationSeconds": 10}},
        ).json()
        clock.advance(10)
        ended = client.get(f"{sb.url}/call/{call['id']}", headers=private(sb)).json()
    assert ended["status"] == "ended"
    assert ended["endedReason"] == "exceeded-max-duration"


def test_control_url_ends_the_call(client: httpx.Client) -> None:
    clock = ManualClock()
    with run_sandbox(base_settings(), clock=clock) as sb:
        call = web_call(sb, client, {"assistantId": ASSISTANT_ID}).json()
        clock.advance(5)
        say = client.post(call["monitor"]["controlUrl"], json={"type": "say", "content": "hi"})
        assert say.status_code == 200
        end = client.post(call["monitor"]["controlUrl"], json={"type": "end-call"})
        assert end.status_code == 200
        got = client.get(f"{sb.url}/call/{call['id']}", headers=private(sb)).json()
        bad = client.post(call["monitor"]["controlUrl"], json={"type": "dance"})
    assert got["status"] == "ended"
    assert got["endedReason"] == "assistant-ended-call"
    assert bad.status_code == 400


def test_list_calls_created_at_filters(client: httpx.Client) -> None:
    clock = ManualClock(start=1_800_000_000)
    with run_sandbox(base_settings(), clock=clock) as sb:
        first = web_call(sb, client, {"assistantId": ASSISTANT_ID}).json()
        clock.advance(60)
        second = web_call(sb, client, {"assistantId": ASSISTANT_ID}).json()

        def ids(**params: str) -> list[str]:
            resp = client.get(sb.url + "/call", params=params, headers=private(sb))
            assert resp.status_code == 200, resp.text
            return [c["id"] for c in resp.json()]

        assert ids(createdAtGt=first["createdAt"]) == [second["id"]]
        assert ids(createdAtLe=first["createdAt"]) == [first["id"]]
        assert ids(createdAtGe=first["createdAt"]) == [second["id"], first["id"]]
        bad = client.get(sb.url + "/call", params={"createdAtLt": "yesterday"}, headers=private(sb))
        assert bad.status_code == 400


def test_legacy_server_secret_is_accepted(sim: RunningSandbox, client: httpx.Client) -> None:
    body = {"assistant": {"server": {"url": "http://127.0.0.1:9/hook", "secret": "s"}}}
    assert web_call(sim, client, body).status_code == 201
    body = {"assistant": {"server": {"url": "http://127.0.0.1:9/hook", "token": "s"}}}
    assert web_call(sim, client, body).json()["message"] == [
        "assistant.server.property token should not exist"
    ]


def test_cors_is_off_by_default(sim: RunningSandbox, client: httpx.Client) -> None:
    resp = web_call(sim, client, {"assistantId": ASSISTANT_ID})
    assert "access-control-allow-origin" not in resp.headers
    assert client.options(sim.url + "/call/web", headers={"Origin": "http://x"}).status_code == 404


def test_cors_for_listed_origins(client: httpx.Client) -> None:
    with run_sandbox(base_settings(cors_allow_origins=["http://app.test"])) as sb:
        pre = client.options(
            sb.url + "/call/web",
            headers={
                "Origin": "http://app.test",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        ok = client.post(
            sb.url + "/call/web",
            json={"assistantId": ASSISTANT_ID},
            headers={**public(sb), "Origin": "http://app.test"},
        )
        other = client.post(
            sb.url + "/call/web",
            json={"assistantId": ASSISTANT_ID},
            headers={**public(sb), "Origin": "http://evil.test"},
        )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "http://app.test"
    assert "authorization" in pre.headers["access-control-allow-headers"]
    assert ok.headers["access-control-allow-origin"] == "http://app.test"
    assert "access-control-allow-origin" not in other.headers
