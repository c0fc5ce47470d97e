"""Experiment (issue 17's "a faster server behind the existing seams"): the proxy's app under
granian instead of uvicorn, for the `exp:granian-*` bench variants. Not a product mode: granian is
not a dependency of the project (install it by hand: `pip install granian`).

`app` is a zero-argument factory (`granian --factory bench.granian_app:app`) that builds the app
the way `vapi-proxy serve` builds it in each worker (`vapi_proxy.cli.worker.build_app`: the config
read again, file-backed metrics in a folder), so the two servers run the same app; the config
comes from VAPI_PROXY_CONFIG and the metrics folder from BENCH_METRICS_DIR.

`granian_command` is the command line the bench runs, or None when granian is not importable."""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from typing import Any

CONFIG_ENV, METRICS_ENV = "VAPI_PROXY_CONFIG", "BENCH_METRICS_DIR"
ARGS_ENV = "BENCH_GRANIAN_ARGS"  # more granian options, appended (later ones win)


def available() -> bool:
    return importlib.util.find_spec("granian") is not None


def granian_command(target: str, port: int, *, factory: bool = False) -> list[str] | None:
    """granian on 127.0.0.1:`port`, ASGI, HTTP/1 only, one worker, uvloop (as uvicorn picks it
    here), one runtime thread, access log off, warnings only: the settings `serve` gives uvicorn,
    which serves HTTP/1.1 only. (Neither `--http auto`, `--runtime-mode st` nor `--task-impl
    rust` measured cheaper on the pass-through; BENCH_GRANIAN_ARGS tries others.)"""
    if not available():
        return None
    cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--http", "1"]
    cmd += ["--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop"]
    cmd += ["--no-access-log", "--log-level", "warning"]
    cmd += shlex.split(os.environ.get(ARGS_ENV, ""))  # e.g. "--task-impl rust", to try levers
    return cmd + (["--factory"] if factory else []) + [target]


def app() -> Any:
    from vapi_proxy.cli.worker import build_app

    metrics = os.environ[METRICS_ENV]
    os.makedirs(metrics, exist_ok=True)
    return build_app(os.environ[CONFIG_ENV], metrics)
