"""`vapi-proxy serve` and `reload` as a user runs them: exit codes and what they print."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.cli import a_port_in_use, run_cli, started_cli
from tests.support.proxy import SAVED_ASSISTANT_ID
from vapi_proxy.cli import main
from vapi_proxy.cli.common import ledger_location
from vapi_proxy.sandbox import RunningSandbox


def test_serve_refuses_an_invalid_config_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("profiles: {coach: {}}\n")
    env = {**os.environ, "VAPI_API_KEY": "dummy-key-for-test"}
    done = subprocess.run(
        [sys.executable, "-m", "vapi_proxy", "serve", "--config", str(config), "--port", "9"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 2
    assert "profiles.coach" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_without_a_key_says_how_to_try_the_sandbox(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("profiles: {coach: {assistant_id: a}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAPI_")}
    done = subprocess.run(
        [sys.executable, "-m", "vapi_proxy", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 2
    assert "VAPI_API_KEY" in done.stderr and "--sandbox" in done.stderr


def test_serve_says_where_it_listens_and_reload_reports_the_outcome(
    tmp_path: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.serving import serve_process

    config = tmp_path / "proxy.yaml"
    good = (
        f"vapi: {{base_url: '{sandbox.url}'}}\n"
        f"ledger: {{url: 'sqlite:///{tmp_path}/ledger.db'}}\n"
        "auth: {methods: [{type: anonymous}]}\n"
        "profiles:\n  coach:\n"
        f"    assistant_id: {SAVED_ASSISTANT_ID}\n"
        "    access: {anonymous: true}\n"
    )
    config.write_text(good)
    pid_file = tmp_path / "proxy.pid"
    with serve_process(config, sandbox, pid_file=pid_file) as served:
        # Without --config the command cannot validate the file itself: the running proxy's
        # verdict is what it reports.
        config.write_text("profiles: {broken: {}}\n")
        assert main(["reload", "--pid-file", str(pid_file), "--wait", "60"]) == 2
        err = capsys.readouterr().err
        assert "refused; the proxy keeps serving the old configuration" in err
        assert "profiles.broken" in err
        config.write_text(good.replace("coach", "coach2"))
        assert main(["reload", "--pid-file", str(pid_file), "--wait", "120"]) == 0
        assert "reloaded: the proxy now serves the new configuration" in capsys.readouterr().out
        reply = httpx.post(served.url + "/call/web", json={"assistantId": "coach2"}, timeout=10)
        assert reply.status_code == 201, reply.text
    log = served.log.read_text()
    port = served.url.rsplit(":", 1)[1]
    where = f"config {config}, ledger {tmp_path.resolve()}/ledger.db"
    assert f"listening on http://127.0.0.1:{port} (1 worker(s), {where})" in log


def test_serve_with_a_missing_sqlite_folder_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"ledger: {{url: 'sqlite:///{tmp_path}/nope/ledger.db'}}\n"
        "profiles: {coach: {assistant_id: a}}\n"
    )
    done = run_cli("serve", "--config", str(config), env={"VAPI_API_KEY": "dummy-key-for-test"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"ledger.url: the folder {tmp_path}/nope does not exist" in done.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:///vapi-proxy.db", "{cwd}/vapi-proxy.db"),
        ("sqlite:///data/ledger.db?timeout=5", "{cwd}/data/ledger.db"),
        ("sqlite:////var/lib/vapi-proxy/ledger.db", "/var/lib/vapi-proxy/ledger.db"),
        ("sqlite+aiosqlite:///x.db", "{cwd}/x.db"),
        ("sqlite://", "in memory (nothing is kept)"),
        ("sqlite:///:memory:", "in memory (nothing is kept)"),
        (
            "postgresql://proxy:hunter2-secret@db.internal:5432/vapi",
            "postgresql://db.internal:5432/vapi",
        ),
        ("postgresql+asyncpg://u:p@[::1]/vapi", "postgresql+asyncpg://[::1]/vapi"),
        ("postgresql://u:p@db:notaport/vapi", "postgresql://…"),
    ],
)
def test_the_start_up_line_says_where_the_ledger_is_without_its_password(
    url: str, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative SQLite URL is relative to where `serve` starts: the line names the absolute
    file, so starting from another folder (a fresh, empty ledger and fresh counts) shows."""
    monkeypatch.chdir(tmp_path)
    assert ledger_location(url) == shown.format(cwd=tmp_path.resolve())


@pytest.mark.parametrize("whose", ["the proxy, --port", "the console, admin.port", "the metrics"])
def test_serve_on_a_port_in_use_says_which_in_one_line(tmp_path: Path, whose: str) -> None:
    """uvicorn logged the bare "[Errno 98] Address already in use" without the port, and the
    metrics port's clash was a traceback."""
    from vapi_proxy.auth.api_key import generate_key, hash_key
    from vapi_proxy.testing import free_port

    with a_port_in_use() as taken:
        port = taken if whose.startswith("the proxy") else free_port()
        admin = taken if whose.startswith("the console") else free_port()
        metrics = taken if whose.startswith("the metrics") else free_port()
        config = tmp_path / "proxy.yaml"
        config.write_text(
            f"ledger: {{url: 'sqlite:///{tmp_path}/ledger.db'}}\n"
            "profiles: {coach: {assistant_id: a}}\n"
            f'admin: {{key_hashes: ["{hash_key(generate_key())}"], port: {admin}}}\n'
            f"metrics: {{port: {metrics}}}\n"
        )
        done = run_cli(
            *("serve", "--config", str(config), "--port", str(port)),
            env={"VAPI_API_KEY": "dummy-key-for-test"},
        )
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{taken} ({whose}" in done.stderr
    assert "the port is in use" in done.stderr


def test_serve_sandbox_with_its_simulator_port_in_use_says_so_before_any_banner(
    tmp_path: Path,
) -> None:
    """A second sandbox on another --port used to print the banner ("listening on …"), then a
    traceback from the simulator's server, which could not bind the first one's port."""
    from vapi_proxy.testing import free_port

    port = free_port()
    with a_port_in_use() as taken:
        done = run_cli(
            *("serve", "--sandbox", "--port", str(port), "--sandbox-port", str(taken)),
            env={"TMPDIR": str(tmp_path)},
        )
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert "listening on" not in done.stdout
    assert f"cannot listen on 127.0.0.1:{taken} (the simulator, --sandbox-port)" in done.stderr
    # Nothing is left listening on the proxy's port: a new sandbox can have it at once.
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", port))
    finally:
        probe.close()


@pytest.mark.parametrize("flag", ["--port", "--sandbox-port"])
@pytest.mark.parametrize("value", ["70000", "0", "-1", "http"])
def test_a_port_option_out_of_range_is_a_usage_error(flag: str, value: str) -> None:
    """A port past 65535 was an OverflowError traceback from `bind`."""
    done = run_cli("serve", "--sandbox", flag, value)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"argument {flag}: '{value}' is not a port (1-65535)" in done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_client_that_connects_as_soon_as_the_start_up_line_appears_is_served(
    tmp_path: Path, sandbox: RunningSandbox, workers: str
) -> None:
    """The line is printed once the port is had, and the port was had (bound) before anything
    listened on it: uvicorn listens only once its server has started. A script that waited for
    the line and connected at once was refused. The socket listens from the start now."""
    from vapi_proxy.testing import free_port

    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"vapi: {{base_url: '{sandbox.url}'}}\n"
        f"ledger: {{url: 'sqlite:///{tmp_path}/ledger.db'}}\n"
        f"profiles: {{coach: {{assistant_id: {SAVED_ASSISTANT_ID}}}}}\n"
    )
    port = free_port()
    key = sandbox.settings.private_key.get_secret_value()
    argv = ["serve", "--config", str(config), "--port", str(port), "--workers", workers]
    with started_cli(*argv, env={"VAPI_API_KEY": key}) as proc:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "listening on" in line:
                break
        else:
            raise AssertionError(f"no start-up line: {''.join(seen)}")
        reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
        assert reply.status_code < 500, reply.text
