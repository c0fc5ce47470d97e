"""`vapi-proxy sandbox` argument handling (the server loop itself is uvicorn's)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vapi_proxy.sandbox import cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    return parser.parse_args(list(argv))


def test_defaults_generate_keys() -> None:
    settings = cli.load(parse())
    assert (settings.host, settings.port, settings.admin_enabled) == ("127.0.0.1", 8787, False)
    text = cli.banner(settings)
    assert "http://127.0.0.1:8787" in text
    assert settings.private_key.get_secret_value() in text
    assert settings.public_key.get_secret_value() in text


def test_config_env_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sandbox.yaml"
    path.write_text("port: 9000\npublic_key: from-file\n")
    monkeypatch.setenv(cli.ENV_PRIVATE_KEY, "from-env")
    settings = cli.load(parse("--config", str(path), "--host", "127.0.0.2", "--admin"))
    assert settings.port == 9000
    assert settings.host == "127.0.0.2"
    assert settings.admin_enabled is True
    assert settings.public_key.get_secret_value() == "from-file"
    assert settings.private_key.get_secret_value() == "from-env"
    assert cli.load(parse("--config", str(path), "--port", "9100")).port == 9100


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_out_of_range_is_refused_before_anything_is_printed(port: str) -> None:
    """`model_copy` does not validate: the banner named port 70000 and the server never came."""
    with pytest.raises(SystemExit, match="is not a port"):
        cli.load(parse("--port", port))
