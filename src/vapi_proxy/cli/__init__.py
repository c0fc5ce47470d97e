"""The `vapi-proxy` command: `main` and the parser; each command family lives in its own module.
Options not given come from the config file or the environment (`VAPI_PROXY__SECTION__FIELD`);
a bad config exits with status 2 and names the field."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from vapi_proxy import __version__
from vapi_proxy.auth import cli as auth_cli
from vapi_proxy.cli.common import EXIT_CONFIG, EXIT_LISTEN, port_number, print_problems
from vapi_proxy.ledger import cli as ledger_cli
from vapi_proxy.listening import CannotListenError
from vapi_proxy.sandbox import cli as sandbox_cli
from vapi_proxy.settings import ConfigError


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command's runner, imported when the command runs: `serve` (the supervisor) must not
    load what only other commands, or only the workers, need."""

    def run(args: argparse.Namespace) -> int:
        handler: Any = getattr(importlib.import_module(module), name)
        return int(handler(args))

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vapi-proxy", description="A backend proxy for the Vapi voice-AI platform."
    )
    parser.add_argument("--version", action="version", version=f"vapi-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML config (default: $VAPI_PROXY_CONFIG)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=8080, help="port to bind (default 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="run against an in-process Vapi simulator (no Vapi account needed)",
    )
    serve.add_argument(
        "--sandbox-port",
        type=port_number,
        default=8787,
        help="port of the in-process simulator with --sandbox (default 8787)",
    )
    serve.add_argument("--pid-file", help="write the supervisor's pid here (for `reload`)")
    serve.set_defaults(handler=_lazy("vapi_proxy.cli.serve", "cmd_serve"))

    reload_cmd = commands.add_parser(
        "reload", help="validate the config, then make the running proxy reload it"
    )
    reload_cmd.add_argument("--pid-file", required=True, help="the file given to serve --pid-file")
    reload_cmd.add_argument(
        "--config", help="validate this config first (default: $VAPI_PROXY_CONFIG)"
    )
    reload_cmd.add_argument(
        "--wait",
        type=float,
        default=180,
        help="seconds to wait for the proxy to confirm the reload (default 180)",
    )
    reload_cmd.set_defaults(handler=_lazy("vapi_proxy.cli.reload", "cmd_reload"))

    check = commands.add_parser(
        "check",
        help="validate a config, cross-check it, print the resolved profiles",
        description="Validate a config and cross-check its sections: errors where it cannot "
        "work, warnings where it is probably wrong. Exits 2 on any error.",
    )
    check.add_argument("--config", help="YAML config (default: $VAPI_PROXY_CONFIG)")
    check.add_argument(
        "--token",
        metavar="JWT",
        help="explain why this token (from your identity provider) would be admitted or "
        "refused, and which profiles it may start; '-' reads it from standard input",
    )
    check.add_argument(
        "--online",
        action="store_true",
        help="also fetch each JWKS and issuer, prove VAPI_API_KEY works, and confirm every "
        "assistant_id, squad_id and workflow_id exists at Vapi",
    )
    check.set_defaults(handler=_lazy("vapi_proxy.cli.check", "cmd_check"))

    sandbox = commands.add_parser("sandbox", help="run the local Vapi simulator")
    sandbox_cli.configure_parser(sandbox)
    sandbox.set_defaults(handler=_lazy("vapi_proxy.sandbox.cli", "run"))

    db = commands.add_parser("db", help="ledger database: migrate or show its revision")
    ledger_cli.configure_db_parser(db)
    db.set_defaults(handler=_lazy("vapi_proxy.ledger.cli", "run_db"))

    usage = commands.add_parser("usage", help="calls, minutes and cost from the ledger")
    ledger_cli.configure_usage_parser(usage)
    usage.set_defaults(handler=_lazy("vapi_proxy.ledger.cli", "run_usage"))

    hash_key = commands.add_parser("hash-key", help="hash an API key for the config")
    auth_cli.configure_parser(hash_key)
    hash_key.set_defaults(handler=_lazy("vapi_proxy.auth.cli", "run"))

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_CONFIG
    except CannotListenError as exc:
        print(f"vapi-proxy: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    except KeyboardInterrupt:
        return 130
    return code
