"""The proxy under test: the saved assistant the simulator seeds, the app's origin, the base
configuration every test proxy starts from, and the type of the `make_proxy` factory."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from vapi_proxy.auth.api_key import hash_key
from vapi_proxy.testing import ServerThread

SAVED_ASSISTANT_ID = "3f1c2a7e-5b1d-4c8e-9a70-1b2c3d4e5f60"


APP_ORIGIN = "http://127.0.0.1:5173"


TRANSIENT_ASSISTANT: dict[str, Any] = {
    "name": "Support",
    "firstMessage": "Hello, how can I help?",
    "model": {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are a support agent. SECRET-PROMPT"}],
    },
    "voice": {"provider": "vapi", "voiceId": "Elliot"},
    "maxDurationSeconds": 300,
}


def base_config(sandbox_url: str, user_key: str, other_key: str) -> dict[str, Any]:
    return {
        "vapi": {"base_url": sandbox_url, "timeout_seconds": 5},
        "cors": {"allow_origins": [APP_ORIGIN]},
        "logging": {"access_log": False},
        "auth": {
            "methods": [
                {
                    "type": "api_key",
                    "keys": [
                        {"name": "alice", "hash": hash_key(user_key)},
                        {"name": "bob", "hash": hash_key(other_key), "profiles": ["support"]},
                    ],
                },
                {"type": "anonymous"},
            ]
        },
        "profiles": {
            "sales-coach": {
                "assistant_id": SAVED_ASSISTANT_ID,
                "client_variables": {
                    "firstName": {"type": "string", "max_length": 40},
                    "language": {"enum": ["en", "de", "fr"]},
                },
                "variables": {"plan": "pro", "caller": "{{identity.sub}}"},
                "max_duration_seconds": 600,
            },
            "support": {
                "assistant": copy.deepcopy(TRANSIENT_ASSISTANT),
                "max_duration_seconds": 900,
            },
            "team": {"squad": {"members": [{"assistantId": SAVED_ASSISTANT_ID}]}},
            "flow": {"workflow": {"name": "Flow", "nodes": [], "edges": []}},
            "demo": {
                "assistant_id": SAVED_ASSISTANT_ID,
                "access": {"anonymous": True},
                "expose": ["monitor.listenUrl"],
                "allow_reconnect": True,
            },
        },
    }


ProxyFactory = Callable[..., ServerThread]
