"""Run `vapi-proxy check` on the shipped deployment configs, with their secret files provided."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from vapi_proxy.cli import main

VAPI_PROXY = Path(sys.executable).with_name("vapi-proxy")
DUMMY_SECRET = "dummy-webhook-secret-for-tests"
_PROXY_VARIABLES = ("VAPI_PROXY", "VAPI_API_KEY", "VAPI_BASE_URL")


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any proxy setting that could leak in."""
    env = {
        name: value for name, value in os.environ.items() if not name.startswith(_PROXY_VARIABLES)
    }
    env.update(extra or {})
    return env


def with_secrets_in(text: str, secrets_dir: str, into: Path) -> str:
    """`text` with `secrets_dir` (a mount point in the container) moved to `into`, where each
    secret file the config names is created with a dummy value."""
    into.mkdir(parents=True, exist_ok=True)
    moved = text.replace(secrets_dir.rstrip("/") + "/", f"{into}/")
    for line in moved.splitlines():
        if f"{into}/" in line:
            for part in line.replace("[", " ").replace("]", " ").replace(",", " ").split():
                if part.startswith(f"{into}/"):
                    Path(part).write_text(DUMMY_SECRET + "\n", encoding="utf-8")
    return moved


def check(
    config: Path, monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str] | None = None
) -> int:
    """`vapi-proxy check --config <config>` in-process (the same code as the command, without
    a second interpreter's start-up), with only `env`'s proxy settings in the environment."""
    for name in os.environ:
        if name.startswith(_PROXY_VARIABLES):
            monkeypatch.delenv(name)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    return main(["check", "--config", str(config)])
