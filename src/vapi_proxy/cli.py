"""The `vapi-proxy` command: serve, check, sandbox, db, usage, hash-key.

Options map onto settings; anything not given here comes from the config file or the
environment (`VAPI_PROXY__SECTION__FIELD`). A bad config exits with status 2 and names the field.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from pydantic import SecretStr

from vapi_proxy import __version__
from vapi_proxy.auth import cli as auth_cli
from vapi_proxy.ledger import cli as ledger_cli
from vapi_proxy.sandbox import cli as sandbox_cli
from vapi_proxy.settings import (
    ConfigError,
    Secrets,
    Settings,
    load_secrets,
    load_settings,
    parse_settings,
)

EXIT_CONFIG = 2


def _print_problems(error: ConfigError) -> None:
    print("vapi-proxy: invalid configuration:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def example_config_text() -> str:
    return files("vapi_proxy.examples").joinpath("sandbox.yaml").read_text(encoding="utf-8")


def _config_path(args: argparse.Namespace) -> str | None:
    path: str | None = args.config or os.environ.get("VAPI_PROXY_CONFIG")
    return path


def describe_profiles(settings: Settings) -> dict[str, Any]:
    """The resolved profiles as `check` prints them (what each name will start)."""
    from vapi_proxy.policy.webcall import compile_profiles

    out: dict[str, Any] = {}
    for name, compiled in compile_profiles(settings.profiles).items():
        profile = compiled.profile
        target = {
            k: (v if k.endswith("Id") else f"<transient {k}>") for k, v in compiled.target.items()
        }
        out[name] = {
            "target": target,
            "max_duration_seconds": compiled.max_duration_seconds,
            "client_variables": {
                k: v.model_dump(exclude_defaults=True) or {"type": "string"}
                for k, v in profile.client_variables.items()
            },
            "server_variables": sorted(profile.variables),
            "access": profile.access.model_dump(exclude_defaults=True) or "signed-in callers",
            "expose": profile.expose,
        }
    return out


def cmd_check(args: argparse.Namespace) -> int:
    path = _config_path(args)
    if path is None:
        print("vapi-proxy check: give --config PATH (or set VAPI_PROXY_CONFIG)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    print(f"{path}: OK, {len(settings.profiles)} profile(s)")
    print(yaml.safe_dump({"profiles": describe_profiles(settings)}, sort_keys=False).rstrip())
    if not settings.profiles:
        print("warning: no profiles: every call will be refused", file=sys.stderr)
    return 0


def _uvicorn_kwargs(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    return {
        "host": args.host,
        "port": args.port,
        "log_level": settings.logging.level,
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,  # the proxy's own trusted_proxies decide, not uvicorn
        "timeout_graceful_shutdown": 30,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    from vapi_proxy.app import create_app
    from vapi_proxy.logs import configure_logging

    if args.sandbox:
        return asyncio.run(_serve_sandbox(args))
    path = _config_path(args)
    if path is None:
        print(
            "vapi-proxy serve: give --config PATH (or set VAPI_PROXY_CONFIG), "
            "or try it without a Vapi account: vapi-proxy serve --sandbox",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        settings = load_settings(path)
        secrets = load_secrets()
        if secrets.vapi_api_key is None:
            raise ConfigError(
                [
                    "VAPI_API_KEY: not set (or set VAPI_API_KEY_FILE); "
                    "to try the proxy without a key run: vapi-proxy serve --sandbox"
                ]
            )
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    configure_logging(settings.logging.level, settings.logging.format)
    kwargs = _uvicorn_kwargs(args, settings)
    if args.workers > 1:
        os.environ["VAPI_PROXY_CONFIG"] = str(Path(path).resolve())
        uvicorn.run(
            "vapi_proxy.app:app_from_environment", factory=True, workers=args.workers, **kwargs
        )
    else:
        uvicorn.run(create_app(settings, secrets), **kwargs)
    return 0


async def _serve_sandbox(args: argparse.Namespace) -> int:
    from vapi_proxy.app import create_app
    from vapi_proxy.auth.api_key import generate_key, hash_key
    from vapi_proxy.logs import configure_logging
    from vapi_proxy.sandbox import SandboxSettings, SeededAssistant
    from vapi_proxy.sandbox import create_app as create_sandbox

    if args.workers > 1:
        print(
            "vapi-proxy serve --sandbox runs one worker (the simulator lives in-process)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    path = _config_path(args)
    try:
        if path is not None:
            settings = load_settings(path)
        else:
            raw = yaml.safe_load(example_config_text())
            settings = parse_settings(raw)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    saved = sorted({p.assistant_id for p in settings.profiles.values() if p.assistant_id})
    sandbox_settings = SandboxSettings(
        host=args.host,
        port=args.sandbox_port,
        admin_enabled=True,
        assistants=[
            SeededAssistant(
                id=a, name="Sandbox assistant", voice={"provider": "vapi", "voiceId": "Elliot"}
            )
            for a in saved
        ],
    )
    sandbox_url = f"http://{args.host}:{args.sandbox_port}"
    demo_key = generate_key()
    raw_settings = settings.model_dump(mode="json", exclude_none=True)
    raw_settings["vapi"]["base_url"] = sandbox_url
    if path is None:
        # The shipped demo keeps its ledger out of the working directory: it is thrown away.
        scratch = tempfile.mkdtemp(prefix="vapi-proxy-sandbox-")
        raw_settings["ledger"]["url"] = f"sqlite:///{scratch}/ledger.db"
    methods = raw_settings.setdefault("auth", {}).setdefault("methods", [])
    methods.insert(
        0,
        {
            "type": "api_key",
            "header": "X-API-Key",
            "keys": [{"name": "sandbox-demo", "hash": hash_key(demo_key)}],
        },
    )
    try:
        settings = parse_settings(raw_settings, environ={})
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    configure_logging(settings.logging.level, settings.logging.format)
    key = sandbox_settings.private_key
    proxy_app = create_app(settings, Secrets(vapi_api_key=SecretStr(key.get_secret_value())))
    servers = [
        _QuietServer(
            uvicorn.Config(
                create_sandbox(sandbox_settings),
                host=args.host,
                port=args.sandbox_port,
                log_level="warning",
                access_log=False,
            )
        ),
        _QuietServer(uvicorn.Config(proxy_app, **_uvicorn_kwargs(args, settings))),
    ]
    proxy_url = f"http://{args.host}:{args.port}"
    print(
        f"vapi-proxy {__version__} (sandbox) on {proxy_url}\n"
        f"  simulated Vapi:  {sandbox_url}  (inspect: {sandbox_url}/__sandbox/requests)\n"
        f"  profiles:        {', '.join(settings.profiles) or '(none)'}\n"
        f"  demo API key:    {demo_key}  (send as Authorization: Bearer <key>)\n"
        f"  try:  curl -s -X POST {proxy_url}/call/web -H 'Content-Type: application/json' "
        '-d \'{"assistantId":"demo"}\'\n'
        f"  web:  new Vapi('<token>', '{proxy_url}').start('demo')",
        flush=True,
    )

    # Two servers share one loop: the signals stop both, and neither re-raises them on exit
    # (uvicorn's own handling would kill the process with the signal once the first one ends).
    def stop_all() -> None:
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_all)
    await asyncio.gather(*(server.serve() for server in servers))
    return 0


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vapi-proxy", description="A backend proxy for the Vapi voice-AI platform."
    )
    parser.add_argument("--version", action="version", version=f"vapi-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML config (default: $VAPI_PROXY_CONFIG)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="run against an in-process Vapi simulator (no Vapi account needed)",
    )
    serve.add_argument(
        "--sandbox-port",
        type=int,
        default=8787,
        help="port of the in-process simulator with --sandbox (default 8787)",
    )
    serve.set_defaults(handler=cmd_serve)

    check = commands.add_parser("check", help="validate a config and print the resolved profiles")
    check.add_argument("--config", help="YAML config (default: $VAPI_PROXY_CONFIG)")
    check.set_defaults(handler=cmd_check)

    sandbox = commands.add_parser("sandbox", help="run the local Vapi simulator")
    sandbox_cli.configure_parser(sandbox)
    sandbox.set_defaults(handler=sandbox_cli.run)

    db = commands.add_parser("db", help="ledger database: migrate or show its revision")
    ledger_cli.configure_db_parser(db)
    db.set_defaults(handler=ledger_cli.run_db)

    usage = commands.add_parser("usage", help="calls, minutes and cost from the ledger")
    ledger_cli.configure_usage_parser(usage)
    usage.set_defaults(handler=ledger_cli.run_usage)

    hash_key = commands.add_parser("hash-key", help="hash an API key for the config")
    auth_cli.configure_parser(hash_key)
    hash_key.set_defaults(handler=auth_cli.run)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
