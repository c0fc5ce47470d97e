"""The container's start-up command, run outside the container: `vapi-proxy serve` with the
shipped production config adapted to one machine (SQLite ledger, local limits, loopback only),
the key from a file as the secret mount gives it; /healthz and /readyz answer 200 (once the
identity provider's keys can be had), metrics answer on their own port only, the image's
HEALTHCHECK command passes, and SIGTERM ends the process with status 0."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.deploy_configs import VAPI_PROXY, clean_environment
from tests.support.dockerfile import final_stage, instructions
from tests.support.manifests import DEPLOY, compose
from vapi_proxy.testing import ServerThread, free_port

HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


class ExitStatusError(AssertionError):
    """The process did not exit 0 after SIGTERM."""


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    """The identity provider's key set on loopback: readiness needs it (issue 13.13)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    body = orjson.dumps({"keys": [{**RSAAlgorithm.to_jwk(key, as_dict=True), "kid": "k1"}]})

    async def jwks(request: Request) -> Response:
        return Response(body, media_type="application/json")

    with ServerThread(Starlette(routes=[Route("/jwks.json", jwks)])) as server:
        yield server.url + "/jwks.json"


def _adapted_config(tmp: Path, *, limits: str, jwks_url: str) -> tuple[Path, int]:
    """deploy/proxy.yaml with its network dependencies moved onto this machine: the ledger in a
    SQLite file, limits in `limits`, the webhook secret in a temp file, the JWKS on loopback,
    Vapi on a closed loopback port (/readyz never calls Vapi), metrics on a free port (which it
    returns with the path)."""
    raw: dict[str, Any] = yaml.safe_load((DEPLOY / "proxy.yaml").read_text(encoding="utf-8"))
    closed = f"http://{HOST}:{free_port()}"
    raw["vapi"]["base_url"] = closed
    raw["ledger"]["url"] = f"sqlite:///{tmp / 'ledger.db'}"
    raw["limits"]["backend"] = limits
    secret = tmp / "vapi_webhook_secret"
    secret.write_text("dummy-webhook-secret\n", encoding="utf-8")
    for verifier in raw["webhooks"]["verify"]:
        verifier["secret_file"] = [str(secret)]
    for method in raw["auth"]["methods"]:
        if method.get("jwks_url"):
            method["jwks_url"] = jwks_url
    raw["metrics"]["port"] = metrics_port = free_port(HOST)
    config = tmp / "proxy.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return config, metrics_port


def _get(port: int, path: str) -> tuple[int, bytes]:
    # http.client, not urllib/httpx: no proxy environment variable can reroute loopback.
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def _wait_for(process: subprocess.Popen[bytes], port: int, path: str, logs: Path) -> bytes:
    deadline = time.monotonic() + START_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}:\n{logs.read_text()[-3000:]}")
        try:
            status, body = _get(port, path)
        except OSError as exc:
            last = exc
        else:
            if status == 200:
                return body
            last = (status, body)
        time.sleep(0.1)
    pytest.fail(f"{path} did not answer 200 within {START_TIMEOUT} s (last: {last!r})")


def _wait_for_metric(port: int, sample: bytes) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if sample in _get(port, "/metrics")[1]:
            return
        time.sleep(0.2)
    pytest.fail(f"{sample!r} never appeared on the metrics port")


def _probe_env() -> dict[str, str]:
    env = clean_environment()
    for name in list(env):
        if name.lower().endswith("_proxy"):
            del env[name]  # the probes below use urllib, which would honour them
    return env


def _run_probe(argv: list[str], port: int) -> subprocess.CompletedProcess[str]:
    """A container probe (`python -c ...` against :8080) run here against `port`."""
    assert argv[0] == "python"
    script = argv[-1].replace(":8080/", f":{port}/")
    return subprocess.run(
        [sys.executable, *argv[1:-1], script],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
        env=_probe_env(),
    )


@pytest.mark.parametrize(
    ("workers", "limits"),
    [
        # One worker runs under the same supervisor as several, so SIGTERM ends in status 0
        # (uvicorn's single-process server would re-raise the signal after the drain).
        pytest.param(1, "memory://", id="one-worker-memory-limits"),
        # Several workers share one machine's limits through SQLite (memory:// would not).
        pytest.param(2, "sqlite:///{tmp}/limits.db", id="two-workers-sqlite-limits"),
    ],
)
def test_container_command_starts_answers_probes_and_stops_cleanly(
    tmp_path: Path, workers: int, limits: str, jwks_url: str
) -> None:
    config, metrics_port = _adapted_config(
        tmp_path, limits=limits.format(tmp=tmp_path), jwks_url=jwks_url
    )
    key_file = tmp_path / "vapi_api_key"
    key_file.write_text("dummy-vapi-private-key-not-real\n", encoding="utf-8")
    port = free_port(HOST)
    cmd = [i for i in final_stage(instructions()) if i.keyword == "CMD"][-1].exec_form()
    # The image's command with the address and port of this test, and the config copy.
    argv = [str(VAPI_PROXY), *cmd]
    argv[argv.index("--config") + 1] = str(config)
    argv[argv.index("--host") + 1] = HOST
    argv[argv.index("--port") + 1] = str(port)
    argv += ["--workers", str(workers)]
    logs = tmp_path / "serve.log"
    with logs.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=tmp_path,  # the image's WORKDIR: the only writable place
            env=clean_environment({"VAPI_API_KEY_FILE": str(key_file)}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        assert json.loads(_wait_for(process, port, "/healthz", logs)) == {"status": "ok"}
        ready = json.loads(_wait_for(process, port, "/readyz", logs))
        assert ready["status"] == "ready"
        assert ready["checks"]["ledger"]["ok"] and ready["checks"]["limits"]["ok"]
        assert ready["checks"]["auth"]["methods"][0]["keys"] == 1
        # Metrics on their own port (every worker summed), not on the API's.
        status, text = _get(metrics_port, "/metrics")
        assert status == 200 and b"vapi_proxy_requests_total" in text
        assert _get(port, "/metrics")[0] == 404
        # What the workers count (here an auth refusal) is summed onto the metrics port.
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        conn.request("GET", "/call", headers={"Authorization": "Bearer not-a-key"})
        assert conn.getresponse().status == 401
        conn.close()
        _wait_for_metric(
            metrics_port, b'vapi_proxy_auth_total{reason="unsupported",result="failure"}'
        )

        healthcheck = [i for i in final_stage(instructions()) if i.keyword == "HEALTHCHECK"]
        probe = _run_probe(healthcheck[0].exec_form(), port)
        assert probe.returncode == 0, probe.stderr
        compose_probe = _run_probe(compose()["services"]["proxy"]["healthcheck"]["test"][1:], port)
        assert compose_probe.returncode == 0, compose_probe.stderr

        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not stop within {STOP_TIMEOUT} s of SIGTERM")
        output = logs.read_text(encoding="utf-8", errors="replace")
        if code != 0:
            raise ExitStatusError(f"SIGTERM exit status {code}:\n{output[-3000:]}")
        # The key never reaches the logs.
        assert "dummy-vapi-private-key-not-real" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert not os.path.exists(tmp_path / "vapi-proxy.db"), "the ledger went to the config's path"
