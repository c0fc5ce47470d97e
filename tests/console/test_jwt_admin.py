"""`admin.jwt_roles`: a JWT verified by the auth chain and carrying an admin role is an admin
credential (bearer or console sign-in); the same issuer's other tokens are not."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import jwt

from tests.support.http import assert_envelope
from tests.support.proxy import ProxyFactory

ISSUER = "https://idp.console.test/"
SECRET = "console-test-shared-secret-of-32-bytes!!"


def _token(**claims: Any) -> str:
    body = {"iss": ISSUER, "sub": "ops-1", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def test_a_jwt_with_an_admin_role_is_an_admin_credential(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    secret = tmp_path / "jwt-secret"
    secret.write_text(SECRET)

    def patch(config: dict[str, Any]) -> None:
        config["auth"]["methods"].insert(
            0,
            {
                "type": "jwt",
                "secret_file": str(secret),
                "algorithms": ["HS256"],
                "issuer": ISSUER,
                "roles_claim": "roles",
            },
        )
        config["admin"] = {"jwt_roles": ["ops-admin"]}  # no admin keys at all

    server = make_proxy(patch)
    admin = _token(roles=["ops-admin"])
    user = _token(sub="user-9", roles=["member"])

    ok = httpx.get(server.url + "/admin/api/audit", headers={"Authorization": f"Bearer {admin}"})
    assert ok.status_code == 200, ok.text
    refused = httpx.get(
        server.url + "/admin/api/audit", headers={"Authorization": f"Bearer {user}"}
    )
    assert_envelope(refused, 401)
    forged = jwt.encode(
        {"iss": ISSUER, "sub": "x", "exp": int(time.time()) + 600, "roles": ["ops-admin"]},
        "another-secret-of-at-least-32-bytes!!!",
        "HS256",
    )
    assert_envelope(
        httpx.get(server.url + "/admin/api/audit", headers={"Authorization": f"Bearer {forged}"}),
        401,
    )

    with httpx.Client(base_url=server.url, timeout=10) as console:
        assert_envelope(console.post("/admin/api/session", json={"key": user}), 401)
        signed = console.post("/admin/api/session", json={"key": admin})
        assert signed.status_code == 200, signed.text
        actor = signed.json()["actor"]
        assert actor.startswith("jwt:") and actor.endswith(":ops-1")
        made = console.post(
            "/admin/api/blocks",
            json={"identity": "api_key:alice", "reason": "test"},
            headers={"X-CSRF-Token": signed.json()["csrfToken"]},
        )
        assert made.status_code == 201, made.text
        assert made.json()["block"]["createdBy"] == actor
