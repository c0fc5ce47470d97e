"""`vapi-proxy serve --sandbox`: the proxy and the simulator in one process, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx


def start_sandbox(
    config: Path, port: int, sandbox_port: int, env: dict[str, str]
) -> tuple[subprocess.Popen[str], list[str]]:
    """`serve --sandbox --config config` as a user starts it, its banner read up to the `web:`
    line; the caller terminates it."""
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
    banner = []
    assert process.stdout is not None
    for line in process.stdout:
        banner.append(line)
        if line.startswith("web:"):
            break
    return process, banner


def wait_until_healthy(port: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz")
            return
        except httpx.TransportError:
            time.sleep(0.1)


def test_serve_sandbox_starts_and_proxies_a_web_call(tmp_path: Path) -> None:
    import time

    import httpx

    from vapi_proxy.testing import free_port

    port, sandbox_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAPI_")}
    env["TMPDIR"] = str(tmp_path)  # where the throwaway ledger goes (and must go from)
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
        (scratch,) = tmp_path.glob("vapi-proxy-sandbox-*")
        assert (scratch / "ledger.db").is_file()
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    # The throwaway ledger goes with the sandbox: runs of the demo do not pile up in /tmp.
    assert not scratch.exists()
    assert "demo API key" in out
    # A signed-in caller's example shows what signing in adds; the browser line needs no token.
    assert (
        "# api_key, profile support" in out and "# anonymous (no credential), profile demo" in out
    )
    assert "new Vapi('', " in out
    assert process.returncode == 0, err


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
    - type: anonymous
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
  Widget:
    assistant_id: 11111111-2222-4333-8444-666666666666
    access: {anonymous: true}
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
    process, banner = start_sandbox(config, port, sandbox_port, env)
    try:
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
            (False, False),
        ]
        assert "# anonymous (no credential), profile Widget" in text, text
        url = f"http://127.0.0.1:{port}/call/web"
        wait_until_healthy(port)
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
        # The log lists a delivery as soon as it is sent; its responseStatus arrives with the
        # proxy's answer, so wait until every delivery has one.
        while time.monotonic() < deadline:
            log = httpx.get(f"{sandbox}/__sandbox/webhooks").json()
            reports = [d for d in log if d.get("type") == "end-of-call-report"]
            if reports and all(d.get("responseStatus") is not None for d in log):
                break
            time.sleep(0.2)
        assert reports and all(d.get("responseStatus") == 200 for d in log), log
        again = httpx.post(url, json=jwt_body, headers=jwt_headers)
        assert again.status_code == 201, again.text
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_the_demo_config_gets_its_webhook_token_without_touching_the_environment(
    tmp_path: Path,
) -> None:
    """The simulator's token and the user's own secrets resolve from the environment passed in;
    overrides apply before the rewiring and cannot undo it."""
    from vapi_proxy.sandbox.demo import SANDBOX_WEBHOOK_ENV, _load_sandbox_config

    before = dict(os.environ)
    config = tmp_path / "mine.yaml"
    config.write_text(
        "auth: {methods: [{type: jwt, secret_env: MY_JWT_SECRET, algorithms: [HS256]}]}\n"
        "profiles: {coach: {assistant_id: a-1}}\n"
    )
    settings = _load_sandbox_config(
        str(config),
        proxy_url="http://127.0.0.1:1",
        sandbox_url="http://127.0.0.1:2",
        demo_hash="sha256:" + "0" * 64,
        scratch=str(tmp_path),
        webhook_token="the-token",
        environ={
            "MY_JWT_SECRET": "s" * 32,
            "VAPI_PROXY__LOGGING__LEVEL": "debug",
            "VAPI_PROXY__LEDGER__URL": "sqlite:////nowhere/ledger.db",
        },
    )
    assert dict(os.environ) == before and SANDBOX_WEBHOOK_ENV not in os.environ
    assert [s.get_secret_value() for s in settings.webhooks.verify[0].secrets] == ["the-token"]
    (method,) = [m for m in settings.auth.methods if m.type == "jwt"]
    assert method.secret is not None and method.secret.get_secret_value() == "s" * 32
    assert settings.logging.level == "debug"
    assert settings.ledger.url == f"sqlite:///{tmp_path}/ledger.db"


def test_serve_sandbox_serves_the_consoles_own_port_from_the_one_app(tmp_path: Path) -> None:
    """With `admin.port`, the console's port is a second socket of the proxy's one server, as in
    `serve`. A second server used to run the app's start-up again (ledger, HTTP sessions,
    upkeep), leaking the first start's session ("Unclosed client session" on stderr)."""

    from vapi_proxy.auth.api_key import generate_key, hash_key
    from vapi_proxy.testing import free_port

    admin_key = generate_key()
    port, admin_port, sandbox_port = free_port(), free_port(), free_port()
    config = tmp_path / "console.yaml"
    config.write_text(
        "auth:\n  methods: [{type: anonymous}]\n"
        "profiles:\n  Widget:\n    assistant_id: 11111111-2222-4333-8444-666666666666\n"
        "    access: {anonymous: true}\n"
        f'admin:\n  key_hashes: ["{hash_key(admin_key)}"]\n  port: {admin_port}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAPI_")}
    env["TMPDIR"] = str(tmp_path)
    process, _ = start_sandbox(config, port, sandbox_port, env)
    try:
        wait_until_healthy(port)
        admin = {"Authorization": f"Bearer {admin_key}"}
        console = httpx.get(f"http://127.0.0.1:{admin_port}/admin/api/blocks", headers=admin)
        assert console.status_code == 200, console.text
        elsewhere = httpx.get(f"http://127.0.0.1:{port}/admin/api/blocks", headers=admin)
        assert elsewhere.status_code == 404
        call = httpx.post(f"http://127.0.0.1:{port}/call/web", json={"assistantId": "Widget"})
        assert call.status_code == 201, call.text
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Unclosed" not in err, err
