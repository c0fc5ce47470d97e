"""Driving the official npm `@vapi-ai/server-sdk` in node (tests/clients/node, installed by
scripts/clients-setup), and reading which calls the simulator created."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support.clients import HTTP
from vapi_proxy.sandbox import RunningSandbox

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"


DRIVER = NODE_DIR / "sdk.mjs"


SDK_VERSION = "2.0.1"


def run_node(proxy_url: str, token: str, steps: list[dict[str, Any]], timeout: float = 20.0) -> Any:
    """Run the SDK steps in node (bounded) and return its per-step results."""
    package = NODE_DIR / "node_modules" / "@vapi-ai" / "server-sdk" / "package.json"
    # Never a skip: a machine without the pinned SDK is a broken setup.
    assert package.is_file(), f"{package} is missing: run scripts/clients-setup"
    version = json.loads(package.read_text())["version"]
    assert version == SDK_VERSION, f"@vapi-ai/server-sdk is {version}: run scripts/clients-setup"
    plan = {"baseUrl": proxy_url, "token": token, "steps": steps}
    done = subprocess.run(
        ["node", str(DRIVER), json.dumps(plan)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def sandbox_calls(sandbox: RunningSandbox, number: str) -> list[dict[str, Any]]:
    """The calls the simulator created to `number`."""
    calls = HTTP.get(f"{sandbox.url}/__sandbox/calls").json()
    return [c for c in calls if (c.get("customer") or {}).get("number") == number]
