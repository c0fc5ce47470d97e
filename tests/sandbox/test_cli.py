"""`vapi-proxy sandbox` argument handling (the server loop itself is uvicorn's)."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx
import pytest

from tests.support.cli import a_port_in_use, run_cli, started_cli
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
    """The flags were merged with `model_copy`, which does not validate: the banner named port
    70000 and the server never came."""
    with pytest.raises(cli.SandboxConfigError) as caught:
        cli.load(parse("--port", port))
    assert caught.value.problems == [
        f"port: Input should be {'less' if port == '70000' else 'greater'} than or equal to "
        f"{65535 if port == '70000' else 0} (the value comes from --port)"
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("port: 99999\n", "port: Input should be less than or equal to 65535"),
        ("prot: 9000\n", "prot: unknown setting (check the spelling; see docs/sandbox.md)"),
        ("port: [\n", "{path}:2: not valid YAML: expected the node content, but found"),
        ("- port\n", "{path}: expected a mapping of settings at the top level"),
        (
            "lifecycle:\n  ringing_after: soon\n",
            "lifecycle.ringing_after: Input should be a valid number",
        ),
    ],
)
def test_a_bad_config_file_is_one_line_per_problem_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    """Each of these was a pydantic, YAML or Python traceback, and a stack trace is no answer to
    a misspelt setting."""
    path = tmp_path / "sandbox.yaml"
    path.write_text(text)
    assert cli.run(parse("--config", str(path))) == cli.EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "vapi-proxy sandbox: invalid configuration:"
    assert lines[1].startswith("  " + problem.format(path=path)), err
    assert "Traceback" not in err


def test_a_config_file_that_cannot_be_read_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.yaml"
    assert cli.run(parse("--config", str(missing))) == cli.EXIT_CONFIG
    assert f"  {missing}: cannot read it (No such file or directory)" in capsys.readouterr().err
    assert cli.run(parse("--config", str(tmp_path))) == cli.EXIT_CONFIG
    assert f"  {tmp_path}: cannot read it (Is a directory)" in capsys.readouterr().err


def test_a_key_from_the_environment_is_validated_but_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Problems name where a value came from, and never print the value: it may be a key."""
    path = tmp_path / "sandbox.yaml"
    path.write_text("private_key: [a, list]\n")
    with pytest.raises(cli.SandboxConfigError) as caught:
        cli.load(parse("--config", str(path)))
    assert caught.value.problems == ["private_key: Input should be a valid string"]
    monkeypatch.setenv(cli.ENV_PRIVATE_KEY, "sk-from-env")
    assert cli.load(parse("--config", str(path))).private_key.get_secret_value() == "sk-from-env"


def test_an_empty_config_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.yaml"
    path.write_text("# nothing yet\n")
    assert cli.load(parse("--config", str(path))).port == 8787


def test_a_port_in_use_is_one_line_before_any_banner() -> None:
    """uvicorn bound the port after the banner was printed: keys for a server that never came,
    then its bare "[Errno 98] … address already in use"."""
    with a_port_in_use() as taken:
        done = run_cli("sandbox", "--port", str(taken))
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"vapi-proxy: cannot listen on 127.0.0.1:{taken} (the simulator, --port): the port is in "
        "use (by another vapi-proxy, or another program): stop it, or choose another port"
    )


def test_port_0_serves_on_the_port_the_system_chose_and_the_banner_names_it() -> None:
    """The banner said "http://127.0.0.1:0", a URL nobody could use."""
    with started_cli(
        "sandbox", "--port", "0", env={cli.ENV_PRIVATE_KEY: "sandbox-test-private-key"}
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("Vapi sandbox on http://127.0.0.1:"), first
        url = first.split(" on ", 1)[1].strip()
        assert not url.endswith(":0")
        reply = httpx.get(
            f"{url}/assistant",
            headers={"Authorization": "Bearer sandbox-test-private-key"},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
