"""The SSE and webhook benches (written separately): run each in its own process if its file
exists, and keep whatever dict its `main()` returns. Absent or failing: say so, never fail."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXTRAS = ("stream_bench", "webhook_bench")
# Runs the module's main() with no arguments (argv holds only its name) and writes its dict.
_RUNNER = (
    "import json, sys, importlib; out = sys.argv[1]; mod = sys.argv[2]; sys.argv = [mod]; "
    "r = importlib.import_module('bench.' + mod).main(); "
    "open(out, 'w').write(json.dumps(r, default=str))"
)


def run_extra(
    name: str, timeout: float = 300.0, env: dict[str, str] | None = None
) -> dict[str, Any]:
    if not (HERE / f"{name}.py").exists():
        return {"skipped": f"bench/{name}.py does not exist yet: no figures"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        # Its own session, so a timeout stops whatever it started too.
        proc = subprocess.Popen(
            [sys.executable, "-c", _RUNNER, str(out), name],
            cwd=HERE.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"error": f"did not finish within {timeout:.0f} s"}
        finally:
            if proc.poll() is None:  # Ctrl-C or another error while waiting
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}: {stderr.strip()[-600:]}"}
        result = json.loads(out.read_text()) if out.exists() else None
        if not isinstance(result, dict):
            # Keep what it printed, so its figures still reach the report.
            return {"result": None, "output": stdout.strip()[-1500:]}
        return {"result": result}


def run_extras(log: Any = print, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """`env` adds to the environment (PYTHONPATH of a `--ref` tree, so they measure it too)."""
    results = {}
    for name in EXTRAS:
        log(f"running bench/{name}.py")
        results[name] = run_extra(name, env=env)
    return results
