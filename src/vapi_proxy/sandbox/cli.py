"""`vapi-proxy sandbox`: serve the simulator and print where it is and which keys it accepts.

The main CLI (`vapi_proxy.cli`) calls `configure_parser` and `run` for its `sandbox` command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vapi_proxy.listening import listen, url_host

from .settings import SandboxSettings

# Keys may come from the environment so they never have to appear on a command line.
ENV_PRIVATE_KEY = "VAPI_SANDBOX_PRIVATE_KEY"
ENV_PUBLIC_KEY = "VAPI_SANDBOX_PUBLIC_KEY"
EXIT_CONFIG = 2  # as `serve` and `check` exit on an invalid configuration


class SandboxConfigError(Exception):
    """The simulator's settings are invalid; `problems` lists each one as `where: reason`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8787)")
    parser.add_argument("--config", default=None, help="YAML file of SandboxSettings fields")
    parser.add_argument(
        "--admin", action="store_true", help="enable the /__sandbox admin API (admin_enabled)"
    )


def _read_config(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SandboxConfigError([f"{path}: cannot read it ({exc.strerror or exc})"]) from None
    except UnicodeDecodeError:
        raise SandboxConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        reason = getattr(exc, "problem", None) or "cannot be parsed"
        raise SandboxConfigError([f"{where}: not valid YAML: {reason}"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SandboxConfigError([f"{path}: expected a mapping of settings at the top level"])
    return raw


def load(args: argparse.Namespace) -> SandboxSettings:
    """Settings from `--config`, then the environment keys, then the flags, validated together
    (a flag's value is held to the same bounds as the file's). Raises `SandboxConfigError`."""
    fields: dict[str, Any] = _read_config(args.config) if args.config else {}
    origins: dict[str, str] = {}
    for env, field in ((ENV_PRIVATE_KEY, "private_key"), (ENV_PUBLIC_KEY, "public_key")):
        if os.environ.get(env):
            fields[field], origins[field] = os.environ[env], f"the environment variable {env}"
    for flag, field in (("host", "host"), ("port", "port")):
        if getattr(args, flag, None) is not None:
            fields[field], origins[field] = getattr(args, flag), f"--{flag}"
    if getattr(args, "admin", False):
        fields["admin_enabled"] = True
    try:
        return SandboxSettings.model_validate(fields)
    except ValidationError as exc:
        raise SandboxConfigError(_problems(exc, origins)) from None


def _problems(exc: ValidationError, origins: dict[str, str]) -> list[str]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            reason = "unknown setting (check the spelling; see docs/sandbox.md)"
        else:  # the message, not the input: a key's value is never echoed
            reason = err["msg"]
        origin = origins.get(str(err["loc"][0])) if err["loc"] else None
        problems.append(
            f"{where}: {reason}" + (f" (the value comes from {origin})" if origin else "")
        )
    return problems


def banner(settings: SandboxSettings) -> str:
    """What the command prints: the base URL and the keys to configure the proxy with."""
    url = settings.public_url or f"http://{url_host(settings.host)}:{settings.port}"
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

    try:
        settings = load(args)
    except SandboxConfigError as exc:
        print("vapi-proxy sandbox: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    # Bound before the banner: a port in use was a banner for a server that never came, then
    # uvicorn's bare "[Errno 98]". `vapi-proxy` prints the one line and exits with status 3.
    sock = listen(settings.host, settings.port, "the simulator, --port")
    if settings.port == 0:  # the port the system chose, for the banner
        settings = settings.model_copy(update={"port": sock.getsockname()[1]})
    app = create_app(settings)
    # Printed for the person who started it (it is their local, throwaway org); never logged.
    print(banner(settings), flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
