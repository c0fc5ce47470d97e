"""Assistant endpoints: create (201), read, list, whitelist errors, 404."""

from __future__ import annotations

import httpx

from tests.support.sandbox import ASSISTANT_ID, private
from vapi_proxy.sandbox import RunningSandbox


def test_assistants(sim: RunningSandbox, client: httpx.Client) -> None:
    created = client.post(sim.url + "/assistant", json={"name": "New one"}, headers=private(sim))
    assert created.status_code == 201
    assistant = created.json()
    assert assistant["orgId"] == sim.settings.org_id
    got = client.get(f"{sim.url}/assistant/{assistant['id']}", headers=private(sim))
    assert got.json() == assistant
    listed = client.get(sim.url + "/assistant", headers=private(sim)).json()
    assert listed[0]["id"] == assistant["id"]
    assert ASSISTANT_ID in {a["id"] for a in listed}
    bad = client.post(sim.url + "/assistant", json={"name": "x", "userId": 1}, headers=private(sim))
    assert bad.json()["message"] == ["property userId should not exist"]
    missing = client.get(f"{sim.url}/assistant/nope", headers=private(sim))
    assert missing.status_code == 404
