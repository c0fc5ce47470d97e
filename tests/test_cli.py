"""The `vapi-proxy` command as a user runs it: exit codes and what it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SAVED_ASSISTANT_ID
from vapi_proxy.cli import main
from vapi_proxy.sandbox import RunningSandbox


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


def test_the_shipped_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.resources import files

    path = files("vapi_proxy.examples").joinpath("sandbox.yaml")
    assert main(["check", "--config", str(path)]) == 0


def test_serve_sandbox_starts_and_proxies_a_web_call() -> None:
    import time

    import httpx

    from vapi_proxy.testing import free_port

    port, sandbox_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAPI_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vapi_proxy",
            "serve",
            "--sandbox",
            "--port",
            str(port),
            "--sandbox-port",
            str(sandbox_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        reply = None
        while time.monotonic() < deadline:
            try:
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/call/web", json={"assistantId": "demo"}
                )
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert reply is not None, "the sandbox proxy did not start in 30 s"
        assert reply.status_code == 201, reply.text
        assert reply.json()["webCallUrl"].startswith("https://vapi.daily.co/")
        # The simulator reports the call's progress to the proxy's /webhook, signed, and the
        # proxy accepts it: the demo closes the loop like production.
        accepted = []
        deadline = time.monotonic() + 30
        while not accepted and time.monotonic() < deadline:
            log = httpx.get(f"http://127.0.0.1:{sandbox_port}/__sandbox/webhooks").json()
            accepted = [d for d in log if d.get("responseStatus") == 200]
            time.sleep(0.2)
        assert accepted, log
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert "demo API key" in out
    # A signed-in caller's example shows what signing in adds; the browser line needs no token.
    assert (
        "# api_key, profile support" in out and "# anonymous (no credential), profile demo" in out
    )
    assert "new Vapi('', " in out
    assert process.returncode == 0, err


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VAPI_")}
    return subprocess.run(
        [sys.executable, "-m", "vapi_proxy", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **(env or {})},
        check=False,
    )


def test_db_upgrade_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    done = run_cli("db", "upgrade", "--database-url", f"sqlite:///{tmp_path}/no/such/ledger.db")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"the folder {tmp_path}/no/such does not exist" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2  # the heading and the one problem


def test_usage_and_db_read_only_the_ledger_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"ledger: {{url: 'sqlite:///{tmp_path}/ledger.db'}}\n"
        "auth: {methods: [{type: jwt, secret_env: UNSET_JWT_SECRET, algorithms: [HS256]}]}\n"
        "webhooks: {verify: [{type: bearer, secret_env: UNSET_WEBHOOK_SECRET}]}\n"
    )
    done = run_cli("db", "upgrade", "--config", str(config))
    assert done.returncode == 0, done.stderr
    done = run_cli("usage", "--config", str(config), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert '"calls": 0' in done.stdout


def test_serve_says_where_it_listens_and_reload_reports_the_outcome(
    tmp_path: Path, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.serving import serve_process

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
    assert f"listening on http://127.0.0.1:{port} (1 worker(s), config {config})" in log


USER_CONFIG = """\
cors: {allow_origins: ['http://localhost:5173']}
public_url: https://proxy.example.com
auth:
  methods:
    - type: jwt
      secret_env: SANDBOX_TEST_JWT_SECRET
      algorithms: [HS256]
      issuer: https://auth.example.com/
      audience: my-app
    - type: api_key
      keys:
        - {name: backend, hash: 'sha256:%s'}
webhooks:
  verify: [{type: bearer, secret_env: SANDBOX_TEST_UNSET_WEBHOOK_SECRET}]
  vapi_credential_id: cred-123
limits:
  rules:
    - {name: one-at-a-time, concurrency: 1}
profiles:
  SalesCoach:
    assistant_id: 11111111-2222-4333-8444-555555555555
    client_variables:
      firstName: {type: string, required: true, max_length: 20}
""" % ("0" * 64)


def test_serve_sandbox_with_the_users_own_config_closes_the_webhook_loop(tmp_path: Path) -> None:
    """The user's API keys, JWT method and profiles run against the simulator: the banner's
    requests work, webhooks are verified end to end, and a settled call frees its slot."""
    import shlex
    import time

    from vapi_proxy.testing import free_port

    config = tmp_path / "mine.yaml"
    config.write_text(USER_CONFIG)
    port, sandbox_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAPI_")}
    env["SANDBOX_TEST_JWT_SECRET"] = "j" * 40
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "vapi_proxy", "serve", "--sandbox", "--config", str(config)),
            *("--port", str(port), "--sandbox-port", str(sandbox_port)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        banner = []
        for line in process.stdout:
            banner.append(line)
            if line.startswith("web:"):
                break
        text = "".join(banner)
        assert "profiles:        SalesCoach" in text, text
        assert "demo" not in text.split("profiles:")[1].splitlines()[0]
        requests = []
        for line in banner:
            if line.strip().startswith("curl "):
                words = shlex.split(line)
                headers = dict(
                    words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H"
                )
                body = json.loads(words[words.index("-d") + 1])
                requests.append((headers, body))
        assert [("Authorization" in h, "X-API-Key" in h) for h, _ in requests] == [
            (True, False),
            (False, True),
        ]
        url = f"http://127.0.0.1:{port}/call/web"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        calls = []
        for headers, body in requests:
            reply = httpx.post(url, json=body, headers=headers)
            assert reply.status_code == 201, reply.text
            calls.append(reply.json()["id"])
        # Concurrency 1 per caller: the JWT user's second call waits for the first to settle.
        jwt_headers, jwt_body = requests[0]
        assert httpx.post(url, json=jwt_body, headers=jwt_headers).status_code == 429
        sandbox = f"http://127.0.0.1:{sandbox_port}"
        assert httpx.post(f"{sandbox}/__sandbox/calls/{calls[0]}/end").status_code < 300
        reports: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not reports and time.monotonic() < deadline:
            log = httpx.get(f"{sandbox}/__sandbox/webhooks").json()
            reports = [d for d in log if d.get("type") == "end-of-call-report"]
            time.sleep(0.2)
        assert reports and all(d.get("responseStatus") == 200 for d in log), log
        again = httpx.post(url, json=jwt_body, headers=jwt_headers)
        assert again.status_code == 201, again.text
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_hash_key_prints_an_admin_key_line(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    import yaml

    from vapi_proxy.auth.api_key import hash_key
    from vapi_proxy.settings import parse_settings

    assert main(["hash-key", "--admin"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^key:\s+(\S+)$", out, re.M)
    assert key is not None
    snippet = yaml.safe_load(out[out.index("admin:") :])
    settings = parse_settings(snippet, environ={})
    assert settings.admin.key_hashes == [hash_key(key.group(1))]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["usage", "--database-url", "postgresql://app:hunter2-secret@127.0.0.1:1/x"],
            "vapi-proxy usage: postgresql://app:***@127.0.0.1:1/x: ",
        ),
        (
            ["db", "upgrade", "--database-url", "postgresql://app:hunter2-secret@127.0.0.1:1/x"],
            "vapi-proxy db upgrade: postgresql://app:***@127.0.0.1:1/x: ",
        ),
        (["usage", "--database-url", "mysql://x/y"], "unsupported database 'mysql'"),
    ],
)
def test_a_database_that_cannot_be_opened_is_one_line(argv: list[str], expected: str) -> None:
    done = run_cli(*argv)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert expected in done.stderr
    assert "hunter2-secret" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_usage_on_an_unmigrated_ledger_says_to_upgrade(tmp_path: Path) -> None:
    done = run_cli("usage", "--database-url", f"sqlite:///{tmp_path}/new.db")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "run `vapi-proxy db upgrade`" in done.stderr


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
