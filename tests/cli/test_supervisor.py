"""The supervisor stays small: `vapi-proxy serve` loads the app only in its workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# What only a worker needs: the web framework, the database layers, the HTTP client.
APP_MODULES = ("starlette", "sqlalchemy", "alembic", "aiohttp", "asyncpg", "redis")

PROBE = """
import json, sys
import vapi_proxy.cli, vapi_proxy.cli.serve, vapi_proxy.cli.supervisor
args = vapi_proxy.cli.build_parser().parse_args(["serve", "--config", "x.yaml"])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in %r)))
"""


def test_the_serve_command_and_its_supervisor_do_not_import_the_app() -> None:
    # A fresh interpreter: this test process has long imported everything.
    done = subprocess.run(
        [sys.executable, "-c", PROBE % (APP_MODULES,)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout) == []


def test_the_probe_sees_the_app_once_it_is_imported() -> None:
    """The check above can fail: importing the app shows up in what it looks at."""
    done = subprocess.run(
        [sys.executable, "-c", "import vapi_proxy.app\n" + PROBE % (APP_MODULES,)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "starlette" in json.loads(done.stdout)


def test_validating_the_config_before_the_workers_start_does_not_import_it_either(
    tmp_path: Path,
) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "webhooks: {verify: [{type: bearer, secret_env: T_HOOK}]}\n"
        "profiles: {coach: {assistant_id: a-1}}\n"
        f"ledger: {{url: 'sqlite:///{tmp_path}/ledger.db'}}\n"
    )
    probe = (
        "from vapi_proxy.cli.common import validate_for_serve\n"
        f"validate_for_serve({str(config)!r})\n" + PROBE % (APP_MODULES,)
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "VAPI_API_KEY": "dummy-key-for-test", "T_HOOK": "hook"},
    )
    assert json.loads(done.stdout) == []
