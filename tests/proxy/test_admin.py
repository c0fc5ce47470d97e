"""`GET /admin/usage` and `vapi-proxy usage --config`: the ledger's totals, for operators only."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from tests.support.http import assert_envelope, post
from tests.support.proxy import ProxyFactory
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.cli import main


def test_usage_needs_an_admin_key_and_reports_calls(
    make_proxy: ProxyFactory, user_key: str, tmp_path: Path
) -> None:
    admin_key = generate_key()
    server = make_proxy(lambda c: c.update(admin={"key_hashes": [hash_key(admin_key)]}))
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    assert post(server, {"assistantId": "support"}, user_key).status_code == 201

    assert_envelope(httpx.get(server.url + "/admin/usage"), 401)
    wrong = httpx.get(server.url + "/admin/usage", headers={"Authorization": f"Bearer {user_key}"})
    assert_envelope(wrong, 401)
    reply = httpx.get(
        server.url + "/admin/usage",
        params={"identity": "api_key:alice"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert reply.status_code == 200, reply.text
    report = reply.json()
    assert report["total"]["calls"] == 2
    assert {row["identity"] for row in report["rows"]} == {"api_key:alice"}
    bad = httpx.get(
        server.url + "/admin/usage",
        params={"since": "yesterday"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert_envelope(bad, 400)


def test_admin_routes_do_not_exist_without_keys(proxy: object) -> None:
    reply = httpx.get(proxy.url + "/admin/usage")  # type: ignore[attr-defined]
    assert_envelope(reply, 404)


def test_usage_command_reads_the_configs_ledger(
    make_proxy: ProxyFactory, user_key: str, tmp_path: Path, capsys: object
) -> None:
    database = tmp_path / "ledger.db"
    server = make_proxy(lambda c: c.update(ledger={"url": f"sqlite:///{database}"}))
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    config = tmp_path / "proxy.yaml"
    config.write_text(
        yaml.safe_dump(
            {"ledger": {"url": f"sqlite:///{database}"}, "profiles": {"p": {"assistant_id": "a"}}}
        )
    )
    assert main(["usage", "--config", str(config), "--format", "json"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert '"api_key:alice"' in out and '"calls": 1' in out
