"""`vapi-proxy sandbox`: serve the simulator and print where it is and which keys it accepts.

The main CLI (`vapi_proxy.cli`) calls `configure_parser` and `run` for its `sandbox` command.
"""

from __future__ import annotations

import argparse
import os

from pydantic import SecretStr

from .settings import SandboxSettings

# Keys may come from the environment so they never have to appear on a command line.
ENV_PRIVATE_KEY = "VAPI_SANDBOX_PRIVATE_KEY"
ENV_PUBLIC_KEY = "VAPI_SANDBOX_PUBLIC_KEY"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8787)")
    parser.add_argument("--config", default=None, help="YAML file of SandboxSettings fields")
    parser.add_argument(
        "--admin", action="store_true", help="enable the /__sandbox admin API (admin_enabled)"
    )


def load(args: argparse.Namespace) -> SandboxSettings:
    """Settings from `--config`, then the environment keys, then the flags."""
    settings = SandboxSettings.from_yaml(args.config) if args.config else SandboxSettings()
    updates: dict[str, object] = {}
    for env, field in ((ENV_PRIVATE_KEY, "private_key"), (ENV_PUBLIC_KEY, "public_key")):
        if os.environ.get(env):
            updates[field] = SecretStr(os.environ[env])
    if args.host is not None:
        updates["host"] = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:  # model_copy does not validate; bind would raise
            raise SystemExit(f"vapi-proxy sandbox: --port {args.port} is not a port (0-65535)")
        updates["port"] = args.port
    if getattr(args, "admin", False):
        updates["admin_enabled"] = True
    return settings.model_copy(update=updates) if updates else settings


def banner(settings: SandboxSettings) -> str:
    """What the command prints: the base URL and the keys to configure the proxy with."""
    url = settings.public_url or f"http://{settings.host}:{settings.port}"
    return "\n".join(
        [
            f"Vapi sandbox on {url}",
            f"  private key: {settings.private_key.get_secret_value()}",
            f"  public key:  {settings.public_key.get_secret_value()}",
            f"  org id:      {settings.org_id}",
            f"  admin API:   {'on' if settings.admin_enabled else 'off'}",
        ]
    )


def run(args: argparse.Namespace) -> int:
    # The app (Starlette) and the server are imported here: the main CLI builds this parser
    # for every command, `serve` included, and its supervisor stays small.
    import uvicorn

    from .app import create_app

    settings = load(args)
    app = create_app(settings)
    # Printed for the person who started it (it is their local, throwaway org); never logged.
    print(banner(settings), flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    return 0
