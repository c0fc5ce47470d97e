"""`vapi-proxy hash-key` as a user runs it."""

from __future__ import annotations

import pytest

from vapi_proxy.cli import main


def test_hash_key_prints_an_admin_key_line(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    import yaml

    from vapi_proxy.auth.api_key import hash_key
    from vapi_proxy.settings import parse_settings

    assert main(["hash-key", "--admin"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^key:\s+(\S+)$", out, re.M)
    assert key is not None
    snippet = yaml.safe_load(out[out.index("admin:") :])
    settings = parse_settings(snippet, environ={})
    assert settings.admin.key_hashes == [hash_key(key.group(1))]
