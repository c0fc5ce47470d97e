"""Settings: YAML loading, validation, and every field documented in docs/sandbox.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from vapi_proxy.sandbox import SandboxSettings
from vapi_proxy.sandbox import settings as settings_module

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sandbox.md"


def test_yaml_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.yaml"
    path.write_text(
        "admin_enabled: true\n"
        "private_key: test-private\n"
        "assistants:\n"
        "  - id: a1\n"
        "    name: Demo\n"
        "    firstMessage: Hello\n"
        "credentials:\n"
        "  - {id: h, type: hmac, secretKey: s3cret}\n"
        "server: {url: 'http://127.0.0.1:9/hook', credentialId: h}\n"
        "lifecycle: {duration: 5}\n"
        "faults:\n"
        "  - {path: /call/web, action: status, status: 429, count: 1}\n"
    )
    settings = SandboxSettings.from_yaml(path)
    assert settings.admin_enabled is True
    assert settings.private_key.get_secret_value() == "test-private"
    assert "test-private" not in repr(settings)
    assert settings.assistants[0].model_dump()["firstMessage"] == "Hello"
    assert settings.credentials[0].type == "hmac"
    assert settings.lifecycle.duration == 5
    assert settings.faults[0].count == 1


def test_keys_are_generated_and_distinct() -> None:
    a, b = SandboxSettings(), SandboxSettings()
    assert a.private_key.get_secret_value() != b.private_key.get_secret_value()
    assert a.private_key.get_secret_value() != a.public_key.get_secret_value()


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("admin: true\n")
    with pytest.raises(ValidationError):
        SandboxSettings.from_yaml(path)


def _fields() -> set[str]:
    names: set[str] = set()
    for obj in vars(settings_module).values():
        if (
            isinstance(obj, type)
            and issubclass(obj, BaseModel)
            and obj.__module__ == (settings_module.__name__)
        ):
            names.update(obj.model_fields)
    return names


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"`([^`\n]+)`", text))
    missing = sorted(_fields() - documented)
    assert missing == []
