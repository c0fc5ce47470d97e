"""The import contracts in pyproject.toml (run by `lint-imports` in scripts/test) hold, and they
fail when a cycle is introduced: a copy of the package with one import added on purpose."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter (the dev extra) is not installed"
)


def _lint(src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        # `--config`, not the positional path: import-linter 2.16 (the declared floor) takes only
        # the option; 2.17 takes both (the option deprecated, still supported).
        [str(LINT_IMPORTS), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "vapi_proxy",
        src / "vapi_proxy",
        ignore=shutil.ignore_patterns("__pycache__", "static", "data"),
    )
    return src


def _add_import(src: Path, module: str, line: str) -> None:
    path = src.joinpath(*module.split(".")).with_suffix(".py")
    text = path.read_text()
    head, sep, rest = text.partition("\nfrom __future__ import annotations\n")
    path.write_text(head + sep + line + "\n" + rest)


def test_the_package_keeps_its_import_contracts(package_copy: Path, tmp_path: Path) -> None:
    done = _lint(package_copy, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # A lower layer importing a higher one (here: back into the routes).
        ("vapi_proxy.policy.access", "import vapi_proxy.routes.calls", "Layers"),
        # The cycle this structure removed: the stream module importing the client back.
        ("vapi_proxy.upstream.stream", "import vapi_proxy.upstream.client", "No import cycles"),
        # One route module reaching into another instead of routes/common.py.
        ("vapi_proxy.routes.chat", "import vapi_proxy.routes.calls", "No route module"),
        # The simulator using the product.
        ("vapi_proxy.sandbox.state", "import vapi_proxy.ledger.store", "The simulator"),
    ],
)
def test_a_forbidden_import_fails_the_check(
    package_copy: Path, tmp_path: Path, module: str, line: str, broken: str
) -> None:
    _add_import(package_copy, module, line)
    done = _lint(package_copy, tmp_path)
    assert done.returncode != 0
    report = done.stdout.split("Broken contracts", 1)[-1]
    assert broken in report, done.stdout
