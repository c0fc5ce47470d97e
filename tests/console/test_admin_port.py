"""`admin.port`: `vapi-proxy serve` (two workers) listens on the console's own port too, the
admin routes answer only there, and a session opened on one worker is good on the other."""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from tests.support.proxy import base_config
from tests.support.serving import serve_process
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import free_port


def test_the_console_answers_only_on_its_own_port(
    sandbox: RunningSandbox, user_key: str, other_key: str, tmp_path: Path
) -> None:
    admin_key = generate_key()
    admin_port = free_port()
    config = base_config(sandbox.url, user_key, other_key)
    config["ledger"] = {"url": f"sqlite:///{tmp_path}/ledger.db"}
    config["limits"] = {"backend": f"sqlite:///{tmp_path}/ledger.db"}
    config["admin"] = {"key_hashes": [hash_key(admin_key)], "port": admin_port}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    bearer = {"Authorization": f"Bearer {admin_key}"}
    with serve_process(path, sandbox, workers=2) as served:
        main = httpx.get(served.url + "/admin/api/audit", headers=bearer, timeout=10)
        assert main.status_code == 404
        own = f"http://127.0.0.1:{admin_port}"
        for _ in range(4):  # whichever worker takes it
            reply = httpx.get(own + "/admin/api/audit", headers=bearer, timeout=10)
            assert reply.status_code == 200, reply.text
        assert httpx.get(own + "/admin", timeout=10).status_code == 200
        # A session opened on one worker is known to every other: it lives in the database.
        with httpx.Client(base_url=own, timeout=10) as client:
            csrf = client.post("/admin/api/session", json={"key": admin_key}).json()["csrfToken"]
            for _ in range(6):
                assert client.get("/admin/api/session").json()["csrfToken"] == csrf
