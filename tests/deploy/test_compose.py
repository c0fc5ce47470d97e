"""deploy/compose.yaml and deploy/proxy.yaml: the services, their healthchecks and start order,
the Vapi key as a compose secret, ledger on PostgreSQL and limits on Redis, and a config that
`vapi-proxy check` accepts. Structural checks (no Docker engine is needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy_configs import check, with_secrets_in
from tests.support.dockerfile import final_stage, instructions
from tests.support.manifests import DEPLOY, ROOT, compose
from vapi_proxy.cli import build_parser
from vapi_proxy.cli.serve import uvicorn_kwargs
from vapi_proxy.settings import Settings

PROXY_CONFIG = DEPLOY / "proxy.yaml"


def _service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = compose()["services"][name]
    return service


def _drain_seconds() -> float:
    args = build_parser().parse_args(["serve"])
    return float(uvicorn_kwargs(args, Settings())["timeout_graceful_shutdown"])


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_three_services_each_with_a_healthcheck() -> None:
    services = compose()["services"]
    assert set(services) == {"proxy", "postgres", "redis"}
    for name, service in services.items():
        check_ = service.get("healthcheck")
        assert check_, f"{name} has no healthcheck"
        assert check_["test"][0] in {"CMD", "CMD-SHELL"}, name
        for field in ("interval", "timeout", "retries"):
            assert field in check_, (name, field)


def test_proxy_waits_for_healthy_databases() -> None:
    depends = _service("proxy")["depends_on"]
    assert depends == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert "pg_isready" in _service("postgres")["healthcheck"]["test"]
    assert _service("redis")["healthcheck"]["test"][-1] == "ping"


def test_proxy_healthcheck_means_ready() -> None:
    script = _service("proxy")["healthcheck"]["test"][-1]
    assert "http://127.0.0.1:8080/readyz" in script and "urllib.request" in script


def test_vapi_key_is_a_compose_secret_file() -> None:
    proxy = _service("proxy")
    env = proxy["environment"]
    assert env["VAPI_API_KEY_FILE"] == "/run/secrets/vapi_api_key"
    assert "VAPI_API_KEY" not in env
    assert {"vapi_api_key", "vapi_webhook_secret"} <= set(proxy["secrets"])
    secrets = compose()["secrets"]
    for name in ("vapi_api_key", "vapi_webhook_secret"):
        source = DEPLOY / secrets[name]["file"]
        assert source.parent == DEPLOY / "secrets", name
    # The folder holding them is ignored by git, so a real key cannot be committed by accident.
    ignore = (DEPLOY / "secrets" / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignore
    # So is deploy/.env, where the database password is kept.
    assert ".env" in (DEPLOY / ".gitignore").read_text(encoding="utf-8").splitlines()


def test_no_secret_values_in_compose() -> None:
    for name, service in compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            text = str(value)
            if "PASSWORD" in key or re.search(r"://[^/@]*:[^/@]*@", text):
                # Interpolated from deploy/.env (or the shell), never written here.
                assert "${" in text, f"{name}.{key} holds a literal secret"


def test_config_mounted_and_backends_wired() -> None:
    proxy = _service("proxy")
    assert "./proxy.yaml:/etc/vapi-proxy/proxy.yaml:ro" in proxy["volumes"]
    ledger_url = proxy["environment"]["VAPI_PROXY__LEDGER__URL"]
    assert ledger_url.startswith("postgresql://") and "@postgres:5432/" in ledger_url
    config = yaml.safe_load(PROXY_CONFIG.read_text(encoding="utf-8"))
    assert config["ledger"]["url"].startswith("postgresql://")
    assert config["limits"]["backend"].startswith("redis://redis:")
    assert config["public_url"].startswith("https://")
    assert config["auth"]["trusted_proxies"]


def test_proxy_runs_the_image_command_with_a_drain_window() -> None:
    proxy = _service("proxy")
    assert proxy["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert (DEPLOY / proxy["build"]["context"] / "Dockerfile").resolve() == ROOT / "Dockerfile"
    cmd = [i for i in final_stage(instructions()) if i.keyword == "CMD"][-1].exec_form()
    assert proxy["command"][: len(cmd)] == cmd
    assert _seconds(proxy["stop_grace_period"]) > _drain_seconds()
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    # Only the host's load balancer reaches the plain-HTTP port.
    assert all(str(p).startswith("127.0.0.1:") for p in proxy["ports"])


def test_databases_are_not_reachable_from_outside() -> None:
    doc = compose()
    assert doc["networks"]["backend"]["internal"] is True
    for name in ("postgres", "redis"):
        assert "ports" not in doc["services"][name], name
        assert doc["services"][name]["networks"] == ["backend"]


def test_redis_keeps_and_never_evicts_counters() -> None:
    command = _service("redis")["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_proxy_yaml_passes_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = with_secrets_in(
        PROXY_CONFIG.read_text(encoding="utf-8"), "/run/secrets", tmp_path / "secrets"
    )
    config = tmp_path / "proxy.yaml"
    config.write_text(text, encoding="utf-8")
    # As compose runs it: the ledger URL (with the password) comes from the environment.
    env = {"VAPI_PROXY__LEDGER__URL": "postgresql://vapi_proxy:pw@postgres:5432/vapi_proxy"}
    code = check(config, monkeypatch, env)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "OK, 1 profile(s)" in out


def test_metrics_have_their_own_unpublished_port() -> None:
    # Issue 13.6: the host's load balancer reaches the published port from the Docker bridge (a
    # private address), so metrics served there were one misjudged address from the public.
    config = yaml.safe_load(PROXY_CONFIG.read_text(encoding="utf-8"))
    port = config["metrics"]["port"]
    proxy = _service("proxy")
    command = proxy["command"]
    assert int(command[command.index("--port") + 1]) != port
    published = [str(p) for p in proxy["ports"]]
    assert not any(p.split(":")[-1].split("/")[0] == str(port) for p in published), published
    assert str(port) in [str(p) for p in proxy.get("expose", [])]
    assert config["auth"]["client_address_header"] == "X-Forwarded-For"


def test_example_config_serves_metrics_on_their_own_port() -> None:
    example = yaml.safe_load((ROOT / "examples" / "web" / "proxy.yaml").read_text("utf-8"))
    assert example["metrics"]["port"] != 8080
