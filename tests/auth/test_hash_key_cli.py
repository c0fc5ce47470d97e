"""`vapi-proxy hash-key`: a new key shown once with its hash, or the hash of a key on stdin."""

from __future__ import annotations

import argparse
import io
import re

import pytest

from vapi_proxy.auth import cli
from vapi_proxy.auth.api_key import hash_key
from vapi_proxy.auth.config import AuthSettings


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vapi-proxy hash-key")
    cli.configure_parser(parser)
    return cli.run(parser.parse_args(argv))


def test_generates_key_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--name", "backend"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^key:\s+(\S+)$", out, re.M)
    digest = re.search(r"^hash: (sha256:[0-9a-f]{64})$", out, re.M)
    assert key
    assert digest
    assert hash_key(key.group(1)) == digest.group(1)
    assert out.count(key.group(1)) == 1  # shown once
    snippet = out.split("config:\n", 1)[1]
    import yaml

    keys = yaml.safe_load(snippet)
    AuthSettings.model_validate({"methods": [{"type": "api_key", "keys": keys}]})


def test_hashes_key_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "existing_" + "k" * 40
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert run(["--stdin"]) == 0
    out = capsys.readouterr().out
    assert key not in out
    assert f"hash: {hash_key(key)}" in out


@pytest.mark.parametrize("key", ["short", "a.b.c" + "x" * 40, "space in key " + "x" * 30])
def test_refuses_weak_or_unsafe_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert run(["--stdin"]) == 2
    captured = capsys.readouterr()
    assert "error:" in captured.err
    assert "hash:" not in captured.out
