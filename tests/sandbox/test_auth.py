"""Keys and JWTs as Vapi scopes them (API-FACTS §3): contract tests over real HTTP."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest

from tests.support.sandbox import ASSISTANT_ID, base_settings, private, public
from vapi_proxy.sandbox import RunningSandbox, TokenRestrictions, run_sandbox
from vapi_proxy.sandbox.errors import INVALID_KEY

INVALID = {"message": INVALID_KEY, "error": "Unauthorized", "statusCode": 401}


def token(
    sb: RunningSandbox,
    tag: str,
    restrictions: dict[str, Any] | None = None,
    *,
    exp: float | None = None,
    key: str | None = None,
    org: str | None = None,
) -> str:
    payload: dict[str, Any] = {
        "orgId": org or sb.settings.org_id,
        "token": {"tag": tag, **({"restrictions": restrictions} if restrictions else {})},
        "exp": int(exp if exp is not None else time.time() + 600),
    }
    return jwt.encode(payload, key or sb.settings.private_key.get_secret_value(), "HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


WEB = {"assistantId": ASSISTANT_ID}


def test_private_key_reaches_private_endpoints(sim: RunningSandbox, client: httpx.Client) -> None:
    assert client.get(sim.url + "/call", headers=private(sim)).status_code == 200


def test_public_key_may_start_web_call(sim: RunningSandbox, client: httpx.Client) -> None:
    assert client.post(sim.url + "/call/web", json=WEB, headers=public(sim)).status_code == 201


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/call"), ("POST", "/call"), ("GET", "/assistant"), ("POST", "/chat")],
)
def test_public_key_is_refused_on_private_endpoints(
    sim: RunningSandbox, client: httpx.Client, method: str, path: str
) -> None:
    resp = client.request(method, sim.url + path, json={"input": "x"}, headers=public(sim))
    assert resp.status_code == 401
    assert resp.json() == INVALID


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Basic abc"}])
def test_missing_or_wrong_key(
    sim: RunningSandbox, client: httpx.Client, headers: dict[str, str]
) -> None:
    resp = client.post(sim.url + "/call/web", json=WEB, headers=headers)
    assert resp.status_code == 401
    assert resp.json() == INVALID


def test_private_jwt_works_everywhere(sim: RunningSandbox, client: httpx.Client) -> None:
    headers = bearer(token(sim, "private"))
    assert client.get(sim.url + "/assistant", headers=headers).status_code == 200
    assert client.post(sim.url + "/call/web", json=WEB, headers=headers).status_code == 201


def test_public_jwt_web_only(sim: RunningSandbox, client: httpx.Client) -> None:
    headers = bearer(token(sim, "public"))
    assert client.post(sim.url + "/call/web", json=WEB, headers=headers).status_code == 201
    assert (
        client.post(
            sim.url + "/chat/web",
            json={"assistantId": ASSISTANT_ID, "input": "hi"},
            headers=headers,
        ).status_code
        == 201
    )
    assert client.get(sim.url + "/assistant", headers=headers).status_code == 401


@pytest.mark.parametrize(
    "bad",
    [
        {"exp": time.time() - 10},
        {"key": "another-key-entirely-and-long-enough-for-hs256"},
        {"org": "00000000-0000-0000-0000-000000000000"},
    ],
    ids=["expired", "wrong-signing-key", "other-org"],
)
def test_bad_jwts_are_401(sim: RunningSandbox, client: httpx.Client, bad: dict[str, Any]) -> None:
    resp = client.post(sim.url + "/call/web", json=WEB, headers=bearer(token(sim, "public", **bad)))
    assert resp.status_code == 401
    assert resp.json()["statusCode"] == 401


def test_unsigned_jwt_is_refused(sim: RunningSandbox, client: httpx.Client) -> None:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"orgId": sim.settings.org_id, "token": {"tag": "private"}}
    forged = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
    assert client.get(sim.url + "/call", headers=bearer(forged)).status_code == 401


@pytest.mark.parametrize(
    ("restrictions", "origin", "body", "status"),
    [
        ({"allowedOrigins": ["https://app.example"]}, "https://app.example", WEB, 201),
        ({"allowedOrigins": ["https://app.example"]}, "https://evil.example", WEB, 401),
        ({"allowedOrigins": ["https://app.example"]}, None, WEB, 401),
        ({"allowedAssistantIds": [ASSISTANT_ID]}, None, WEB, 201),
        ({"allowedAssistantIds": ["other"]}, None, WEB, 401),
        # allowTransientAssistant is forced false once allowedAssistantIds is set.
        (
            {"allowedAssistantIds": [ASSISTANT_ID], "allowTransientAssistant": True},
            None,
            {"assistant": {"name": "t"}},
            401,
        ),
        ({"allowTransientAssistant": False}, None, {"assistant": {"name": "t"}}, 401),
        ({"allowTransientAssistant": True}, None, {"assistant": {"name": "t"}}, 201),
        ({"enabled": False}, None, WEB, 401),
    ],
)
def test_public_jwt_restrictions(
    sim: RunningSandbox,
    client: httpx.Client,
    restrictions: dict[str, Any],
    origin: str | None,
    body: dict[str, Any],
    status: int,
) -> None:
    headers = bearer(token(sim, "public", restrictions))
    if origin:
        headers["Origin"] = origin
    resp = client.post(sim.url + "/call/web", json=body, headers=headers)
    assert resp.status_code == status, resp.text


def test_malformed_restrictions_give_vapis_500(sim: RunningSandbox, client: httpx.Client) -> None:
    headers = bearer(token(sim, "public", {"allowedOrigins": [None]}))
    resp = client.post(sim.url + "/call/web", json=WEB, headers=headers)
    assert resp.status_code == 500
    assert resp.json() == {
        "statusCode": 500,
        "message": "Internal server error. Contact support@vapi.ai for help.",
    }


def test_public_key_restrictions_from_settings(client: httpx.Client) -> None:
    settings = base_settings(
        public_key_restrictions=TokenRestrictions(allowedOrigins=["https://app.example"])
    )
    with run_sandbox(settings) as sb:
        url = sb.url + "/call/web"
        ok = client.post(url, json=WEB, headers={**public(sb), "Origin": "https://app.example"})
        bad = client.post(url, json=WEB, headers={**public(sb), "Origin": "https://x.example"})
    assert (ok.status_code, bad.status_code) == (201, 401)
