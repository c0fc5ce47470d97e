"""Config loading: every problem names its field; secrets come only from the environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vapi_proxy.settings import (
    ConfigError,
    load_ledger_settings,
    load_secrets,
    load_settings,
    parse_settings,
)

MINIMAL: dict[str, Any] = {"profiles": {"p": {"assistant_id": "a"}}}


def problems(raw: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, environ=environ or {})
    return info.value.problems


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"profiles": {"p": {}}}, "profiles.p: Value error, a profile needs exactly one target"),
        (
            {"profiles": {"p": {"assistant_id": "a", "squad_id": "s"}}},
            "found: assistant_id, squad_id",
        ),
        (
            {"profiles": {"p": {"assistant_id": "a", "max_duration_seconds": 5}}},
            "profiles.p.max_duration_seconds: Input should be greater than or equal to 10",
        ),
        (
            {
                "profiles": {
                    "p": {"assistant_id": "a", "client_variables": {"x": {"max_length": "y"}}}
                }
            },
            "profiles.p.client_variables.x.max_length: Input should be a valid integer",
        ),
        (
            {"profiles": {"p": {"assistant_id": "a", "client_variables": {"x": {"pattern": "("}}}}},
            "profiles.p.client_variables.x.pattern: Value error, not a valid regular expression",
        ),
        (
            {"profiles": {"p": {"assistant_id": "a", "colour": "red"}}},
            "profiles.p.colour: unknown setting",
        ),
        (
            {"profiles": {"p": {"assistant_id": "a", "variables": {"u": "{{identity.password}}"}}}},
            "profiles.p",
        ),
        (
            {"profiles": {"p": {"assistant_id": "a", "overrides": {"maxDurationSeconds": 9}}}},
            "use max_duration_seconds instead",
        ),
        (
            {
                "profiles": {
                    "p": {"assistant_id": "a", "variables": {"x": 1}, "client_variables": {"x": {}}}
                }
            },
            "both client_variables",
        ),
        ({"profiles": {"bad name!": {"assistant_id": "a"}}}, "profile name 'bad name!'"),
        ({"cors": {"allow_origins": ["app.example.com"]}}, "cors.allow_origins"),
        ({"cors": {"allow_origins": ["https://app.example.com/path"]}}, "must not have a path"),
        ({"vapi": {"base_url": "ftp://x"}}, "vapi.base_url"),
        ({"vapi": {"api_key": "sk-123"}}, "must not be in the config file"),
        ({"server": {"max_body_bytes": 10}}, "server.max_body_bytes"),
        ({"server": {"path_prefix": "api"}}, "server.path_prefix"),
        ({"public_url": "proxy.example.com"}, "public_url"),
    ],
)
def test_problems_name_the_field(raw: dict[str, Any], expected: str) -> None:
    found = problems(raw)
    assert any(expected in p for p in found), found


def test_the_example_from_the_issue_loads(tmp_path: Path) -> None:
    (tmp_path / "assistants").mkdir()
    (tmp_path / "assistants" / "support.json").write_text('{"name": "Support"}')
    config = tmp_path / "proxy.yaml"
    config.write_text(
        """
vapi:
  base_url: https://api.vapi.ai
public_url: https://proxy.example.com
cors:
  allow_origins: [https://app.example.com]
profiles:
  sales-coach:
    assistant_id: 3f1c
    client_variables:
      firstName: {type: string, max_length: 40}
      language: {enum: [en, de, fr]}
    variables: {plan: pro}
    max_duration_seconds: 600
  support:
    assistant: {file: assistants/support.json}
    expose: [id, webCallUrl]
"""
    )
    settings = load_settings(config, environ={})
    assert settings.profiles["support"].assistant == {"name": "Support"}
    assert settings.public_url == "https://proxy.example.com"
    lang = settings.profiles["sales-coach"].client_variables["language"]
    assert lang.type == "string"


def test_a_missing_assistant_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("profiles:\n  s:\n    assistant: {file: nope.json}\n")
    with pytest.raises(ConfigError, match=r"profiles\.s\.assistant\.file: cannot read"):
        load_settings(config, environ={})


def test_environment_overrides(tmp_path: Path) -> None:
    settings = parse_settings(
        MINIMAL,
        environ={
            "VAPI_BASE_URL": "http://127.0.0.1:9/",
            "VAPI_PROXY__SERVER__MAX_BODY_BYTES": "2048",
            "VAPI_PROXY__CORS__ALLOW_ORIGINS": "[https://a.example]",
        },
    )
    assert settings.vapi.base_url == "http://127.0.0.1:9"
    assert settings.server.max_body_bytes == 2048
    assert settings.cors.allow_origins == ["https://a.example"]


def test_secrets_from_environment_or_file(tmp_path: Path) -> None:
    assert load_secrets({}).vapi_api_key is None
    secret = load_secrets({"VAPI_API_KEY": " k-123 "})
    assert secret.vapi_api_key is not None
    assert secret.vapi_api_key.get_secret_value() == "k-123"
    assert "k-123" not in repr(secret)
    key_file = tmp_path / "key"
    key_file.write_text("k-456\n")
    from_file = load_secrets({"VAPI_API_KEY_FILE": str(key_file)})
    assert from_file.vapi_api_key is not None
    assert from_file.vapi_api_key.get_secret_value() == "k-456"
    with pytest.raises(ConfigError, match="both set"):
        load_secrets({"VAPI_API_KEY": "a", "VAPI_API_KEY_FILE": str(key_file)})
    with pytest.raises(ConfigError, match="cannot read"):
        load_secrets({"VAPI_API_KEY_FILE": str(tmp_path / "missing")})


def test_environment_overrides_reach_keys_with_capitals() -> None:
    raw = {"profiles": {"SalesCoach": {"assistant_id": "a", "variables": {"firstName": "x"}}}}
    settings = parse_settings(
        raw,
        environ={
            "VAPI_PROXY__PROFILES__SALESCOACH__VARIABLES__FIRSTNAME": "Ada",
            "VAPI_PROXY__PROFILES__SalesCoach__VARIABLES__lastName": "Lovelace",
            "VAPI_PROXY__PROFILES__SalesCoach__MAX_DURATION_SECONDS": "120",
        },
    )
    coach = settings.profiles["SalesCoach"]
    assert coach.variables == {"firstName": "Ada", "lastName": "Lovelace"}
    assert coach.max_duration_seconds == 120
    assert set(settings.profiles) == {"SalesCoach"}


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    found = problems(MINIMAL, {"VAPI_PROXY__SERVER__MAX_BODY_BYTES": "lots"})
    assert len(found) == 1
    assert found[0].startswith("server.max_body_bytes:")
    assert "VAPI_PROXY__SERVER__MAX_BODY_BYTES" in found[0]
    found = problems(MINIMAL, {"VAPI_BASE_URL": "api.vapi.ai"})
    assert "vapi.base_url" in found[0] and "VAPI_BASE_URL" in found[0]


def test_duplicate_keys_are_refused_with_their_lines(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("profiles:\n  a: {assistant_id: x}\n  a: {assistant_id: y}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'a' on line 3 \(first on line 2\)"):
        load_settings(config, environ={})


def test_a_missing_sqlite_folder_is_a_config_error(tmp_path: Path) -> None:
    for key in ("ledger", "limits"):
        field = "url" if key == "ledger" else "backend"
        raw = {**MINIMAL, key: {field: f"sqlite:///{tmp_path}/nope/x.db"}}
        (problem,) = problems(raw)
        assert problem.startswith(f"{key}.{field}: the folder {tmp_path}/nope does not exist")
    parse_settings({**MINIMAL, "ledger": {"url": f"sqlite:///{tmp_path}/x.db"}}, environ={})


def test_the_ledger_section_loads_without_runtime_secrets(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"ledger: {{url: 'sqlite:///{tmp_path}/l.db'}}\n"
        "webhooks: {verify: [{type: bearer, secret_env: UNSET_WEBHOOK_SECRET_FOR_TEST}]}\n"
    )
    with pytest.raises(ConfigError, match="UNSET_WEBHOOK_SECRET_FOR_TEST"):
        load_settings(config, environ={})
    assert load_ledger_settings(config, environ={}).url == f"sqlite:///{tmp_path}/l.db"
    env = {"VAPI_PROXY__LEDGER__URL": f"sqlite:///{tmp_path}/other.db"}
    assert load_ledger_settings(config, environ=env).url.endswith("other.db")


def test_a_key_overriding_a_yaml_merge_is_not_a_duplicate(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "x-base: &base {assistant_id: a, max_duration_seconds: 300}\n"
        "profiles:\n  p: {<<: *base, max_duration_seconds: 120}\n"
    )
    with pytest.raises(ConfigError, match="x-base: unknown setting"):
        load_settings(config, environ={})  # read past the merge; only the extra key is wrong
    config.write_text(
        "profiles:\n  base: &base {assistant_id: a, max_duration_seconds: 300}\n"
        "  p: {<<: *base, max_duration_seconds: 120}\n"
    )
    assert load_settings(config, environ={}).profiles["p"].max_duration_seconds == 120


_VALIDATE_ONLY = """
import json, sys
from vapi_proxy.settings import ConfigError, parse_settings
raw = {
    "profiles": {"p": {"assistant_id": "a"}},
    "webhooks": {"inbound": {"default": {"profile": "nope"}}},
}
try:
    parse_settings(raw, environ={})
except ConfigError as exc:
    problems = exc.problems
heavy = sorted(m for m in ("sqlalchemy", "aiohttp", "alembic") if m in sys.modules)
print(json.dumps({"problems": problems, "heavy": heavy}))
"""


def test_validating_a_config_imports_no_database_or_http_library() -> None:
    """`check` and the supervisor validate configs: the webhook cross-check is part of the
    settings, not of the webhooks package that builds on SQLAlchemy and aiohttp."""
    done = subprocess.run(
        [sys.executable, "-c", _VALIDATE_ONLY], capture_output=True, text=True, check=True
    )
    report = json.loads(done.stdout)
    assert report["problems"] == ["webhooks.inbound.default.profile: no profile named 'nope'"]
    assert report["heavy"] == []


SECRET_CONFIG = {
    "auth": {"methods": [{"type": "jwt", "secret_env": "T_JWT_SECRET", "algorithms": ["HS256"]}]},
    "webhooks": {
        "verify": [{"type": "bearer", "secret_env": "T_HOOK_SECRET"}],
        "forward": {"targets": [{"url": "http://127.0.0.1:9/"}], "secret_env": "T_FWD_SECRET"},
    },
}


def test_secrets_come_from_the_environment_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every section reads the variables it names from the environment passed in, so a caller
    (the CLI, a test) never has to write os.environ to hand a secret over."""
    for name in ("T_JWT_SECRET", "T_HOOK_SECRET", "T_FWD_SECRET"):
        monkeypatch.delenv(name, raising=False)
    given = {"T_JWT_SECRET": "j" * 32, "T_HOOK_SECRET": "hook", "T_FWD_SECRET": "fwd"}
    settings = parse_settings(SECRET_CONFIG, environ=given)
    method = settings.auth.methods[0]
    assert method.type == "jwt" and method.secret is not None
    assert method.secret.get_secret_value() == "j" * 32
    assert [s.get_secret_value() for s in settings.webhooks.verify[0].secrets] == ["hook"]
    assert [s.get_secret_value() for s in settings.webhooks.forward.secrets] == ["fwd"]


@pytest.mark.parametrize("missing", ["T_JWT_SECRET", "T_HOOK_SECRET", "T_FWD_SECRET"])
def test_a_secret_only_in_os_environ_is_not_read(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    given = {"T_JWT_SECRET": "j" * 32, "T_HOOK_SECRET": "hook", "T_FWD_SECRET": "fwd"}
    monkeypatch.setenv(missing, given.pop(missing))
    with pytest.raises(ConfigError, match=f"environment variable {missing} is unset"):
        parse_settings(SECRET_CONFIG, environ=given)


def test_every_config_section_is_strict() -> None:
    """One base for every section of the config (a misspelt key is an error everywhere)."""
    import inspect

    from pydantic import BaseModel

    from vapi_proxy import configbase, settings
    from vapi_proxy.auth import config as auth_config
    from vapi_proxy.limits import config as limits_config
    from vapi_proxy.policy import access, profiles
    from vapi_proxy.webhooks import config as webhooks_config

    passthrough = {webhooks_config.Destination}  # Vapi's own object, checked only for `type`
    models = [
        cls
        for module in (settings, auth_config, limits_config, webhooks_config, profiles, access)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseModel) and cls.__module__ == module.__name__
    ]
    assert len(models) > 20
    loose = [
        m.__name__
        for m in models
        if m not in passthrough and not issubclass(m, configbase.StrictModel)
    ]
    assert loose == []
