"""`vapi-proxy check` as a user runs it: what it prints, and exit 2 naming the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

from vapi_proxy.cli import main


def test_check_prints_the_resolved_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "auth: {methods: [{type: api_key, keys: [{name: ci, hash: 'sha256:" + "0" * 64 + "'}]}]}\n"
        "profiles:\n  coach:\n    assistant_id: a-1\n"
        "    client_variables: {name: {max_length: 9}}\n"
    )
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "OK, 1 profile(s)" in out
    assert "assistantId: a-1" in out and "max_length: 9" in out


def test_check_names_the_bad_field_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("profiles:\n  coach:\n    assistant_id: a\n    max_duration_seconds: 1\n")
    assert main(["check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "profiles.coach.max_duration_seconds" in err


def test_the_shipped_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.resources import files

    path = files("vapi_proxy.examples").joinpath("sandbox.yaml")
    assert main(["check", "--config", str(path)]) == 0
