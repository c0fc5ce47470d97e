"""Run `vapi-proxy serve` as a real subprocess for tests, as production runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import free_port


@dataclass(frozen=True)
class ServedProxy:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def serve_process(
    config: Path,
    sandbox: RunningSandbox,
    *,
    workers: int = 1,
    port: int | None = None,
    env: dict[str, str] | None = None,
    pid_file: Path | None = None,
    startup_seconds: float = 60,
) -> Iterator[ServedProxy]:
    """Start the proxy with the simulator's key, wait until `/readyz` answers 200, and stop it
    (SIGTERM, then SIGKILL) on the way out. It runs in its own session, so a test can kill the
    whole process tree (`os.killpg`)."""
    port = port or free_port()
    environ = {
        **os.environ,
        # What serve makes in the temporary folder (its workers' metric files) stays with the
        # test's files when a test kills it with SIGKILL, instead of piling up in /tmp.
        "TMPDIR": str(config.parent),
        **(env or {}),
        "VAPI_API_KEY": sandbox.settings.private_key.get_secret_value(),
    }
    command = [sys.executable, "-m", "vapi_proxy", "serve", "--config", str(config)]
    command += ["--port", str(port), "--workers", str(workers)]
    if pid_file is not None:
        command += ["--pid-file", str(pid_file)]
    log = config.parent / f"proxy-{port}.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, env=environ, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_seconds
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait(timeout=10)
                raise AssertionError(f"proxy did not start: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield ServedProxy(url, process, log)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
