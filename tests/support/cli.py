"""Running the `vapi-proxy` command in a child process, as a user would."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator


def _environ(env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment without `VAPI_*` (a developer's own key or config), plus `env`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("VAPI_")}, **(env or {})}


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vapi_proxy", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=_environ(env),
        check=False,
    )


@contextlib.contextmanager
def started_cli(*argv: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """The command running in a child process (stderr into stdout, as text), stopped on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vapi_proxy", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_environ(env),
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def a_port_in_use() -> Iterator[int]:
    """A loopback port another program listens on."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()
