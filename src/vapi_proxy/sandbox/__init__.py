"""A local Vapi: the simulator tests, the demo and benchmarks talk to instead of api.vapi.ai.

from vapi_proxy.sandbox import SandboxSettings, run_sandbox
with run_sandbox(SandboxSettings(admin_enabled=True)) as sandbox:
    sandbox.url, sandbox.settings.private_key, sandbox.state.calls
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .clock import Clock, ManualClock, SystemClock
from .settings import (
    BearerCredential,
    FaultSpec,
    HmacCredential,
    SandboxSettings,
    SeededAssistant,
    SeededPhoneNumber,
    SeededSquad,
    SeededWorkflow,
    ServerConfig,
    TokenRestrictions,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .app import create_app
    from .state import SandboxState

# The app and its state (Starlette, the HTTP client for webhooks) load on first use, so that a
# command reading only the settings (the `sandbox` parser, built by every `vapi-proxy` command)
# stays light.
_LAZY = {"create_app": ".app", "SandboxState": ".state"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BearerCredential",
    "Clock",
    "FaultSpec",
    "HmacCredential",
    "ManualClock",
    "RunningSandbox",
    "SandboxSettings",
    "SandboxState",
    "SeededAssistant",
    "SeededPhoneNumber",
    "SeededSquad",
    "SeededWorkflow",
    "ServerConfig",
    "SystemClock",
    "TokenRestrictions",
    "create_app",
    "run_sandbox",
]


@dataclass(frozen=True)
class RunningSandbox:
    """A simulator serving on loopback: its base URL, settings, app and state."""

    url: str
    settings: SandboxSettings
    app: Starlette
    state: SandboxState


@contextmanager
def run_sandbox(
    settings: SandboxSettings, *, clock: Clock | None = None, host: str = "127.0.0.1"
) -> Iterator[RunningSandbox]:
    """Serve the simulator on a free loopback port for the duration of the `with` block."""
    from ..testing import ServerThread
    from .app import create_app

    app = create_app(settings, clock=clock)
    with ServerThread(app, host=host) as server:
        yield RunningSandbox(server.url, settings, app, app.state.sandbox)
