"""Running the `vapi-proxy` command in a child process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


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
