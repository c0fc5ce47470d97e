"""Documentation that must not drift: the config reference and the README's commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from vapi_proxy.configdoc import render_reference, undocumented

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_has_a_description() -> None:
    assert undocumented() == []


def test_the_configuration_reference_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render_reference(), (
        "docs/configuration.md is stale: python -m vapi_proxy.configdoc > docs/configuration.md"
    )


def test_ci_runs_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_lines = "\n".join(readme.splitlines()[:5])
    assert "`scripts/run`" in first_lines and "`scripts/test`" in first_lines
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_readmes_config_examples_are_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    import yaml

    from vapi_proxy.settings import load_settings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    (tmp_path / "assistants").mkdir()
    (tmp_path / "assistants" / "support.json").write_text('{"name": "Support"}')
    merged: dict[str, object] = {}
    for block in blocks:
        text = block.replace("6b1e…", "6b1e0000-0000-4000-8000-000000000000")
        merged.update(yaml.safe_load(text.replace("3f1c2a7e-...", "3f1c2a7e")))
    merged["limits"]["backend"] = f"sqlite:///{tmp_path}/limits.db"  # type: ignore[index]
    merged["ledger"]["url"] = f"sqlite:///{tmp_path}/ledger.db"  # type: ignore[index]
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(merged))
    settings = load_settings(config, environ={"VAPI_WEBHOOK_SECRET": "s" * 32})
    assert set(settings.profiles) == {"sales-coach", "support"}
    assert settings.limits.rules[0].quota is not None
