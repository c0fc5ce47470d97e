"""`vapi-proxy check`: cross-checks that catch configs that validate but cannot work, a real
token explained, and the online probes against a JWKS server and the Vapi simulator."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.proxy import SAVED_ASSISTANT_ID
from tests.support.services import closed_port
from vapi_proxy.auth.identity import identity_key
from vapi_proxy.cli import main
from vapi_proxy.configcheck import lint
from vapi_proxy.sandbox import (
    RunningSandbox,
    SandboxSettings,
    SeededSquad,
    SeededWorkflow,
    run_sandbox,
)
from vapi_proxy.settings import parse_settings
from vapi_proxy.testing import ServerThread

SECRET = "s" * 40
GOOD: dict[str, Any] = {
    "cors": {"allow_origins": ["http://127.0.0.1:5173"]},
    "auth": {
        "methods": [
            {
                "type": "jwt",
                "secret_env": "CHECK_TEST_JWT_SECRET",
                "algorithms": ["HS256"],
                "issuer": "https://id.example",
                "audience": "my-app",
                "roles_claim": "roles",
            }
        ]
    },
    "profiles": {
        "SalesCoach": {"assistant_id": "a-1"},
        "admins": {"assistant_id": "a-2", "access": {"roles": ["admin"]}},
    },
}


@pytest.fixture(autouse=True)
def _jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHECK_TEST_JWT_SECRET", SECRET)


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    merged = json.loads(json.dumps(base))
    merged.update(changes)
    return merged


def findings(raw: dict[str, Any]) -> list[str]:
    return [str(f) for f in lint(parse_settings(raw))]


def run_check(
    tmp_path: Path, raw: dict[str, Any] | str, *extra: str
) -> tuple[int, str, str, pytest.CaptureFixture[str] | None]:
    config = tmp_path / "proxy.yaml"
    config.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return main(["check", "--config", str(config), *extra]), str(config), "", None


def test_a_good_config_has_no_findings() -> None:
    assert findings(GOOD) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {
                "limits": {
                    "rules": [
                        {"name": "r", "match": {"profiles": ["Sales"]}, "rate": {"per_minute": 1}}
                    ]
                }
            },
            "error: limits.rules[0] (r).match.profiles: no profile named 'Sales'",
        ),
        (
            {
                "auth": {
                    "methods": [
                        {
                            "type": "api_key",
                            "keys": [
                                {"name": "ci", "hash": "sha256:" + "0" * 64, "profiles": ["nope"]}
                            ],
                        }
                    ]
                }
            },
            "error: auth.methods[0].keys.ci.profiles: no profile named 'nope'",
        ),
        (
            {"profiles": {"demo": {"assistant_id": "a", "access": {"anonymous": True}}}},
            "error: profiles.demo.access.anonymous: true, but no enabled `anonymous` auth method",
        ),
        ({"auth": {"methods": []}}, "error: auth.methods: empty: every request"),
        (
            {"limits": {"rules": [{"name": "live", "concurrency": 2}]}},
            "warning: public_url: unset, but limit rule(s) live are settled by Vapi's webhooks",
        ),
        (
            {
                "public_url": "https://proxy.example",
                "limits": {"rules": [{"name": "mins", "budget": {"minutes_per_day": 30}}]},
            },
            "warning: webhooks.verify: empty: every webhook from Vapi is refused (401)",
        ),
        (
            {"profiles": {"t": {"assistant_id": "a", "access": {"tenants": ["acme"]}}}},
            "error: profiles.t.access.tenants: no jwt method sets `tenant_claim`",
        ),
        ({"cors": {"allow_origins": []}}, "warning: cors.allow_origins: empty"),
        (
            {
                "limits": {
                    "rules": [
                        {
                            "name": "a",
                            "match": {"issuers": ["https://id.example/"]},
                            "concurrency": 1,
                        }
                    ]
                }
            },
            "warning: limits.rules[0] (a).match.issuers: 'https://id.example/' is not the issuer "
            "of a configured jwt method, so no token meets it (configured: https://id.example)",
        ),
        (
            {
                "limits": {
                    "rules": [{"name": "t", "match": {"tenants": ["acme"]}, "concurrency": 1}]
                }
            },
            "warning: limits.rules[0] (t).match.tenants: no jwt method sets `tenant_claim`",
        ),
        (
            {"profiles": {"t": {"assistant_id": "a", "access": {"issuers": ["other"]}}}},
            "warning: profiles.t.access.issuers: 'other' is not the issuer of a configured jwt",
        ),
        (
            {"public_url": "http://localhost:8080"},
            "warning: public_url: http://localhost:8080 is not reachable from Vapi's servers",
        ),
        (
            {"ledger": {"url": "sqlite:///vapi-proxy.db"}},
            "warning: ledger.url: sqlite:///vapi-proxy.db is relative",
        ),
        (
            {"limits": {"backend": "memory://", "rules": [{"name": "q", "quota": {"per_day": 1}}]}},
            "warning: limits.backend: memory:// keeps the counts in the process: every restart",
        ),
    ],
)
def test_cross_checks_find_what_validation_cannot(change: dict[str, Any], expected: str) -> None:
    found = findings(with_(GOOD, **change))
    assert any(f.startswith(expected) for f in found), found


def test_check_exits_2_on_a_cross_check_error_and_0_on_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = with_(
        GOOD,
        limits={
            "rules": [{"name": "r", "match": {"profiles": ["Sales"]}, "rate": {"per_minute": 1}}]
        },
    )
    assert run_check(tmp_path, bad)[0] == 2
    assert "no profile named 'Sales'" in capsys.readouterr().err
    warned = with_(GOOD, cors={"allow_origins": []})
    assert run_check(tmp_path, warned)[0] == 0
    assert "0 error(s), 1 warning(s)" in capsys.readouterr().err


def test_duplicate_yaml_keys_are_refused_with_line_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = yaml.safe_dump(GOOD) + "auth:\n  methods: []\n"
    assert run_check(tmp_path, text)[0] == 2
    err = capsys.readouterr().err
    assert "duplicate key 'auth'" in err and "first on line" in err
    assert "Traceback" not in err


def test_a_missing_sqlite_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = with_(GOOD, ledger={"url": f"sqlite:///{tmp_path}/missing/ledger.db"})
    assert run_check(tmp_path, raw)[0] == 2
    err = capsys.readouterr().err
    assert f"ledger.url: the folder {tmp_path}/missing does not exist" in err


def token(**claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://id.example", "aud": "my-app", "sub": "u-1", "exp": now + 600}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"exp": int(time.time()) - 3600}, ["exp: EXPIRED", "REFUSED (401): Token has expired"]),
        ({"iss": "https://other"}, ["iss 'https://other' is not the configured issuer", "REFUSED"]),
        ({"aud": "else"}, ["aud 'else' names none of the configured audience", "REFUSED"]),
        ({"sub": None}, ["subject claim 'sub' is missing", "REFUSED"]),
    ],
)
def test_check_token_explains_a_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], claims: dict[str, Any], expected: list[str]
) -> None:
    assert run_check(tmp_path, GOOD, "--token", token(**claims))[0] == 2
    out = capsys.readouterr().out
    for text in expected:
        assert text in out, out


def test_check_token_with_a_wrong_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forged = jwt.encode(
        {"iss": "https://id.example", "aud": "my-app", "sub": "u", "exp": int(time.time()) + 60},
        "x" * 40,
        algorithm="HS256",
    )
    assert run_check(tmp_path, GOOD, "--token", forged)[0] == 2
    assert "REFUSED (401): Token signature is invalid" in capsys.readouterr().out


def test_check_token_names_the_profiles_it_may_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_check(tmp_path, GOOD, "--token", token())[0] == 0
    out = capsys.readouterr().out
    assert "ADMITTED as jwt:https%3A%2F%2Fid.example:u-1" in out  # keyed by issuer and sub
    assert "profile SalesCoach: may start" in out
    assert "profile admins: refused" in out and '"roles": ["admin"]' in out
    assert run_check(tmp_path, GOOD, "--token", token(roles=["admin"]))[0] == 0
    assert "profile admins: may start" in capsys.readouterr().out


@pytest.fixture
def identity_provider() -> Iterator[tuple[str, str, Any]]:
    """A loopback OpenID provider: discovery document and JWKS, and its private key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    holder: dict[str, str] = {}

    async def discovery(request: Request) -> Response:
        return JSONResponse({"issuer": holder["issuer"], "jwks_uri": holder["issuer"] + "/jwks"})

    async def jwks(request: Request) -> Response:
        return JSONResponse({"keys": [jwk]})

    app = Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/jwks", jwks),
        ]
    )
    with ServerThread(app, lifespan="off") as server:
        holder["issuer"] = server.url
        yield server.url, server.url + "/jwks", key


def online_config(
    sandbox: RunningSandbox, jwks_url: str, issuer: str, **profiles: Any
) -> dict[str, Any]:
    return {
        "vapi": {"base_url": sandbox.url},
        "cors": {"allow_origins": ["http://127.0.0.1:5173"]},
        "auth": {
            "methods": [
                {"type": "jwt", "jwks_url": jwks_url, "algorithms": ["RS256"], "issuer": issuer}
            ]
        },
        "profiles": profiles,
    }


def test_check_online_confirms_the_key_and_the_assistants(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sandbox: RunningSandbox,
    identity_provider: tuple[str, str, Any],
) -> None:
    issuer, jwks_url, key = identity_provider
    monkeypatch.setenv("VAPI_API_KEY", sandbox.settings.private_key.get_secret_value())
    raw = online_config(
        sandbox,
        jwks_url,
        issuer,
        good={"assistant_id": SAVED_ASSISTANT_ID},
        gone={"assistant_id": "00000000-0000-4000-8000-000000000000"},
    )
    assert run_check(tmp_path, raw, "--online")[0] == 2
    captured = capsys.readouterr()
    assert "ok: auth.methods[0].jwks_url: 1 usable key(s)" in captured.out
    assert "ok: auth.methods[0].issuer: matches" in captured.out
    assert "ok: VAPI_API_KEY: accepted" in captured.out
    assert f"ok: profiles.good.assistant_id: assistant {SAVED_ASSISTANT_ID} exists" in captured.out
    assert "error: profiles.gone.assistant_id: Vapi has no assistant" in captured.err

    # A token signed by the provider's key is checked against the fetched JWKS.
    signed = jwt.encode(
        {"iss": issuer, "sub": "u-9", "exp": int(time.time()) + 60},
        key,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    only_good = online_config(sandbox, jwks_url, issuer, good={"assistant_id": SAVED_ASSISTANT_ID})
    assert run_check(tmp_path, only_good, "--online", "--token", signed)[0] == 0
    assert f"ADMITTED as {identity_key('jwt', 'u-9', issuer)}" in capsys.readouterr().out


def test_check_online_names_a_wrong_key_and_an_unreachable_jwks(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sandbox: RunningSandbox,
    identity_provider: tuple[str, str, Any],
) -> None:
    issuer, _, _ = identity_provider
    monkeypatch.setenv("VAPI_API_KEY", sandbox.settings.public_key.get_secret_value())
    raw = online_config(sandbox, issuer + "/missing", issuer + "/", good={"assistant_id": "x"})
    assert run_check(tmp_path, raw, "--online")[0] == 2
    err = capsys.readouterr().err
    assert "error: auth.methods[0].jwks_url: cannot fetch" in err
    assert "error: auth.methods[0].issuer: the provider calls itself" in err
    assert "error: VAPI_API_KEY: Vapi refused the key" in err


# --- squads and workflows (issue 15) ---------------------------------------------------------

SQUAD_ID = "7b1d3c8f-6c2e-4d9f-8b81-2c3d4e5f6a71"
WORKFLOW_ID = "7b1d3c8f-6c2e-4d9f-8b81-2c3d4e5f6a72"
NOBODYS_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def org_with_squads() -> Iterator[RunningSandbox]:
    """A simulated Vapi org holding one saved squad and one saved workflow."""
    settings = SandboxSettings(
        squads=[SeededSquad(id=SQUAD_ID, name="Front desk", members=[{"assistantId": "a"}])],
        workflows=[SeededWorkflow(id=WORKFLOW_ID, name="Intake")],
    )
    with run_sandbox(settings) as running:
        yield running


def squad_config(base_url: str) -> dict[str, Any]:
    return {
        "vapi": {"base_url": base_url},
        "cors": {"allow_origins": ["http://127.0.0.1:5173"]},
        "auth": {"methods": [{"type": "anonymous"}]},
        "profiles": {
            "desk": {"squad_id": SQUAD_ID},
            "intake": {"workflow_id": WORKFLOW_ID},
            "lost_squad": {"squad_id": NOBODYS_ID},
            "lost_flow": {"workflow_id": NOBODYS_ID},
        },
    }


def test_check_online_confirms_squads_and_workflows_and_names_the_missing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    org_with_squads: RunningSandbox,
) -> None:
    monkeypatch.setenv("VAPI_API_KEY", org_with_squads.settings.private_key.get_secret_value())
    assert run_check(tmp_path, squad_config(org_with_squads.url), "--online")[0] == 2
    captured = capsys.readouterr()
    assert f"ok: profiles.desk.squad_id: squad {SQUAD_ID} exists" in captured.out
    assert f"ok: profiles.intake.workflow_id: workflow {WORKFLOW_ID} exists" in captured.out
    assert f"error: profiles.lost_squad.squad_id: Vapi has no squad '{NOBODYS_ID}' (404)" in (
        captured.err
    )
    assert f"error: profiles.lost_flow.workflow_id: Vapi has no workflow '{NOBODYS_ID}' (404)" in (
        captured.err
    )
    # The ids were asked of Vapi by kind, each once.
    asked = [r["path"] for r in org_with_squads.state.requests.entries() if r["method"] == "GET"]
    for path in (f"/squad/{SQUAD_ID}", f"/workflow/{WORKFLOW_ID}", f"/squad/{NOBODYS_ID}"):
        assert asked.count(path) == 1, asked


def test_check_online_passes_when_every_squad_and_workflow_exists(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    org_with_squads: RunningSandbox,
) -> None:
    monkeypatch.setenv("VAPI_API_KEY", org_with_squads.settings.private_key.get_secret_value())
    raw = squad_config(org_with_squads.url)
    del raw["profiles"]["lost_squad"], raw["profiles"]["lost_flow"]
    assert run_check(tmp_path, raw, "--online")[0] == 0
    assert "0 error(s)" in capsys.readouterr().err


def test_check_online_with_a_refused_key_does_not_call_the_squads_missing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    org_with_squads: RunningSandbox,
) -> None:
    """A key Vapi refuses (the public one) is named; the ids are not reported missing, since
    Vapi was never asked about them with a key it accepts."""
    monkeypatch.setenv("VAPI_API_KEY", org_with_squads.settings.public_key.get_secret_value())
    assert run_check(tmp_path, squad_config(org_with_squads.url), "--online")[0] == 2
    captured = capsys.readouterr()
    assert "error: VAPI_API_KEY: Vapi refused the key (401)" in captured.err
    assert "squad_id" not in captured.out + captured.err
    assert "workflow_id" not in captured.out + captured.err
    assert org_with_squads.settings.public_key.get_secret_value() not in captured.out + (
        captured.err
    )


def test_check_online_with_vapi_unreachable_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAPI_API_KEY", "0" * 8 + "-dummy-key")
    base = f"http://127.0.0.1:{closed_port()}"
    assert run_check(tmp_path, squad_config(base), "--online")[0] == 2
    captured = capsys.readouterr()
    assert f"error: vapi.base_url: cannot reach {base}" in captured.err
    assert "squad_id" not in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
