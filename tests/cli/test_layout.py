"""The command's modules say what they are for, each in a few lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vapi_proxy

SRC = Path(vapi_proxy.__file__).parent
MODULES = [*sorted((SRC / "cli").glob("*.py")), SRC / "sandbox" / "demo.py"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_every_command_module_opens_with_a_short_docstring(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert doc is not None
    assert 1 <= len(doc.strip().splitlines()) <= 3
