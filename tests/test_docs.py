"""Documentation that must not drift: the config reference and the README's commands."""

from __future__ import annotations

from pathlib import Path

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
