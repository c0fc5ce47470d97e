"""The commands hand values over as arguments, never by writing the process environment."""

from __future__ import annotations

import re
from pathlib import Path

import vapi_proxy

SRC = Path(vapi_proxy.__file__).parent
WRITES = re.compile(r"os\.environ\[[^\]]+\]\s*=|os\.environ\.(setdefault|update)\(|os\.putenv\(")
# prometheus_client has no switch but its variable, read when it is imported: each worker sets
# it for itself, from the folder its supervisor passes as an argument.
ALLOWED = {("cli/worker.py", "os.environ[METRICS_DIR_ENV] = metrics_dir")}


def test_no_module_writes_the_environment_to_pass_a_value() -> None:
    found = {
        (str(path.relative_to(SRC)), line.strip())
        for path in SRC.rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if WRITES.search(line)
    }
    assert found == ALLOWED
