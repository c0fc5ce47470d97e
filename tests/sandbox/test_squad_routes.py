"""Saved squads and workflows: seeded from the settings (as YAML users write them), read back
as Vapi returns them, 404 in Vapi's shape for an unknown id, private key only."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.sandbox import ASSISTANT_ID, private
from vapi_proxy.sandbox import RunningSandbox, SandboxSettings, run_sandbox

SQUAD_ID = "5a0c6a0e-4444-4a4a-9b9b-000000000004"
WORKFLOW_ID = "5a0c6a0e-5555-4a4a-9b9b-000000000005"

SEEDS = f"""
admin_enabled: true
assistants: [{{id: {ASSISTANT_ID}, name: Seeded}}]
squads:
  - id: {SQUAD_ID}
    name: Front desk
    members: [{{assistantId: {ASSISTANT_ID}}}]
workflows:
  - id: {WORKFLOW_ID}
    name: Intake
    nodes: [{{type: conversation, name: start}}]
    globalPrompt: Be brief.
"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    path = tmp_path_factory.mktemp("squads") / "sandbox.yaml"
    path.write_text(SEEDS)
    with run_sandbox(SandboxSettings.from_yaml(path)) as running:
        yield running


def test_a_seeded_squad_reads_back_as_vapis_squad(
    seeded: RunningSandbox, client: httpx.Client
) -> None:
    got = client.get(f"{seeded.url}/squad/{SQUAD_ID}", headers=private(seeded))
    assert got.status_code == 200
    squad = got.json()
    # `Squad` requires members, id, orgId, createdAt, updatedAt (Vapi's spec).
    assert squad["id"] == SQUAD_ID
    assert squad["name"] == "Front desk"
    assert squad["members"] == [{"assistantId": ASSISTANT_ID}]
    assert squad["orgId"] == seeded.settings.org_id
    assert squad["createdAt"] and squad["updatedAt"]
    listed = client.get(seeded.url + "/squad", headers=private(seeded))
    assert [s["id"] for s in listed.json()] == [SQUAD_ID]
    assert client.get(seeded.url + "/squad?limit=0", headers=private(seeded)).json() == []


def test_a_seeded_workflow_reads_back_as_vapis_workflow(
    seeded: RunningSandbox, client: httpx.Client
) -> None:
    got = client.get(f"{seeded.url}/workflow/{WORKFLOW_ID}", headers=private(seeded))
    assert got.status_code == 200
    workflow = got.json()
    # `Workflow` requires nodes, id, orgId, createdAt, updatedAt, name, edges.
    assert workflow["id"] == WORKFLOW_ID
    assert workflow["name"] == "Intake"
    assert workflow["nodes"] == [{"type": "conversation", "name": "start"}]
    assert workflow["edges"] == []
    assert workflow["globalPrompt"] == "Be brief."  # other Vapi fields are kept
    assert workflow["orgId"] == seeded.settings.org_id


@pytest.mark.parametrize(("kind", "what"), [("squad", "Squad"), ("workflow", "Workflow")])
def test_an_unknown_id_is_vapis_404(
    seeded: RunningSandbox, client: httpx.Client, kind: str, what: str
) -> None:
    # An assistant's id is not a squad's or a workflow's: each kind has its own ids.
    missing = client.get(f"{seeded.url}/{kind}/{ASSISTANT_ID}", headers=private(seeded))
    assert missing.status_code == 404
    assert missing.json() == {
        "message": f"{what} not found",
        "error": "Not Found",
        "statusCode": 404,
    }


@pytest.mark.parametrize("path", [f"/squad/{SQUAD_ID}", "/squad", f"/workflow/{WORKFLOW_ID}"])
def test_the_public_key_and_a_wrong_key_are_refused(
    seeded: RunningSandbox, client: httpx.Client, path: str
) -> None:
    public = {"Authorization": f"Bearer {seeded.settings.public_key.get_secret_value()}"}
    for headers in (public, {"Authorization": "Bearer not-a-key"}, {}):
        refused = client.get(seeded.url + path, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.json()["statusCode"] == 401
