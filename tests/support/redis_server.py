"""A redis-server of a test's own (from Debian's package, as `scripts/services` installs it),
on a free loopback port, so a test can stop, freeze or restart it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.services import closed_port


def _wait_listening(port: int) -> None:
    for _ in range(100):  # bounded: 5 s
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("own redis-server did not start")


class RedisServer:
    """`extra` are redis-server options; with `tls=True` the port is a TLS port (give the
    `--tls-cert-file` and `--tls-key-file` options in `extra`)."""

    def __init__(self, folder: Path, *extra: str, tls: bool = False) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server not installed: run scripts/services")
        self.exe = exe
        self.port = closed_port()
        self.tls = tls
        self.args = ["--bind", "127.0.0.1", "--save", "", "--dir", str(folder), *extra]
        self.proc = self._start()

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _start(self) -> subprocess.Popen[bytes]:
        port = str(self.port)
        ports = ["--port", "0", "--tls-port", port] if self.tls else ["--port", port]
        proc = subprocess.Popen([self.exe, *self.args, *ports], stdout=subprocess.DEVNULL)
        _wait_listening(self.port)
        return proc

    def restart(self) -> None:
        self.stop()
        self.proc = self._start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
