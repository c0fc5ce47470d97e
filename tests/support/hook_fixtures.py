"""The webhook simulator's fixtures, shared by tests/webhooks and tests/console: a simulator whose
calls send real, signed lifecycle webhooks to proxies that know their own loopback URL
(`public_url`), on a manual clock. Each package's conftest.py registers the ones it uses by name."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.support.proxy import SAVED_ASSISTANT_ID, base_config
from tests.support.webhooks import (
    INBOUND_NUMBER,
    INBOUND_NUMBER_ID,
    VERIFIERS,
    HookProxyFactory,
    Keys,
    write_secret,
)
from vapi_proxy.app import create_app
from vapi_proxy.sandbox import (
    BearerCredential,
    HmacCredential,
    ManualClock,
    RunningSandbox,
    SandboxSettings,
    SeededAssistant,
    SeededPhoneNumber,
    ServerConfig,
    run_sandbox,
)
from vapi_proxy.settings import Secrets, parse_settings
from vapi_proxy.testing import ServerThread, free_port


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def clock() -> ManualClock:
    # Starts at the real time so HMAC timestamps fall inside the proxy's replay window.
    return ManualClock(start=time.time())


@pytest.fixture(scope="session")
def hook_sandbox(keys: Keys, clock: ManualClock) -> Iterator[RunningSandbox]:
    settings = SandboxSettings(
        admin_enabled=True,
        assistants=[SeededAssistant(id=SAVED_ASSISTANT_ID, name="Sales coach")],
        phone_numbers=[SeededPhoneNumber(id=INBOUND_NUMBER_ID, number=INBOUND_NUMBER)],
        credentials=[
            BearerCredential(id="bearer", type="bearer", token=SecretStr(keys.bearer)),
            BearerCredential(
                id="bearer-custom",
                type="bearer",
                token=SecretStr(keys.custom),
                headerName="X-Webhook-Token",
                bearerPrefixEnabled=False,
            ),
            BearerCredential(
                id="legacy",
                type="bearer",
                token=SecretStr(keys.legacy),
                headerName="X-Vapi-Secret",
                bearerPrefixEnabled=False,
            ),
            HmacCredential(id="hmac", type="hmac", secretKey=SecretStr(keys.hmac)),
            HmacCredential(
                id="hmac512",
                type="hmac",
                secretKey=SecretStr(keys.hmac512),
                secretIsBase64=True,
                algorithm="sha512",
                signatureHeader="x-vapi-signature",
                signaturePrefix="sha512=",
                signatureEncoding="base64",
                timestampUnit="ms",
            ),
            HmacCredential(
                id="svix",
                type="hmac",
                secretKey=SecretStr(keys.svix),
                algorithm="sha1",
                payloadFormat="{svix-id}.{timestamp}.{method}.{url}.{body}",
                messageIdHeader="svix-id",
            ),
        ],
        lifecycle={"ringing_after": 1, "in_progress_after": 2, "duration": 30},
        cost_per_minute=0.1,
    )
    with run_sandbox(settings, clock=clock) as running:
        yield running


@pytest.fixture
def app_secret(keys: Keys, tmp_path: Path) -> str:
    """A file holding the app's signing secret (webhooks.forward.secret_file)."""
    return write_secret(tmp_path, "app-secret", keys.app)


@pytest.fixture
def make_hook_proxy(
    hook_sandbox: RunningSandbox,
    keys: Keys,
    user_key: str,
    other_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HookProxyFactory]:
    """A proxy whose calls carry `server.credentialId = credential` and that verifies it."""
    started: list[ServerThread] = []

    def factory(
        credential: str = "hmac",
        patch: Callable[[dict[str, Any]], None] | None = None,
        *,
        org_server: bool = False,
    ) -> ServerThread:
        folder = tmp_path_factory.mktemp("hookproxy")
        port = free_port()
        config = base_config(hook_sandbox.url, user_key, other_key)
        config["ledger"] = {"url": f"sqlite:///{folder}/ledger.db"}
        config["public_url"] = f"http://127.0.0.1:{port}"
        verify = VERIFIERS[credential](keys, folder)
        if verify["type"] == "hmac":
            # The simulator's manual clock runs ahead of real time as tests advance it.
            verify["max_age_seconds"] = 3600
        config["webhooks"] = {"vapi_credential_id": credential, "verify": [verify]}
        if patch is not None:
            patch(config)
        settings = parse_settings(config, environ={})
        key = hook_sandbox.settings.private_key.get_secret_value()
        app = create_app(settings, Secrets(vapi_api_key=SecretStr(key)))
        server = ServerThread(app, port=port).start()
        started.append(server)
        if org_server:
            # Inbound calls ask the org's server URL (the number has none): point it here.
            hook_sandbox.settings.server = ServerConfig(
                url=f"{server.url}/webhook", credentialId=credential
            )
        return server

    yield factory
    hook_sandbox.settings.server = None
    for server in started:
        server.stop()
