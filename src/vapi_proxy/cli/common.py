"""What every `vapi-proxy` command shares: the exit status for a bad config, how problems are
printed, where the config path comes from, the checks `serve` and a reload both make, and how
uvicorn runs the proxy (`serve` and `serve --sandbox`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vapi_proxy.listening import CannotListenError, listen
from vapi_proxy.settings import ConfigError, Settings, load_secrets, load_settings

if TYPE_CHECKING:
    import socket

    import uvicorn

EXIT_CONFIG = 2
EXIT_LISTEN = 3
"""A port the command must listen on cannot be had (uvicorn's own exit status for that)."""


def port_number(text: str) -> int:
    """argparse's type for a port: 1-65535 (a port past that was a traceback from `bind`)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return port


def print_problems(error: ConfigError) -> None:
    print("vapi-proxy: invalid configuration:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def config_path(args: argparse.Namespace) -> str | None:
    path: str | None = args.config or os.environ.get("VAPI_PROXY_CONFIG")
    return path


def ledger_location(url: str) -> str:
    """Where the ledger (and the default limits' counts) live, for the start-up line: a SQLite
    file as an absolute path (a relative URL is relative to the directory `serve` starts in,
    so starting elsewhere would open another, empty file), a server without its credentials."""
    scheme, _, rest = url.partition("://")
    if scheme.split("+", 1)[0].lower() == "sqlite":
        path = rest[1:].split("?", 1)[0] if rest.startswith("/") else ""
        if not path or path == ":memory:":
            return "in memory (nothing is kept)"
        return str(Path(path).resolve())
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{scheme}://…"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}{port}{parts.path}"


def validate_for_serve(path: str) -> Settings:
    """Everything `serve` (and a reload) checks before any worker starts."""
    settings = load_settings(path)
    secrets = load_secrets()
    if secrets.vapi_api_key is None:
        raise ConfigError(
            [
                "VAPI_API_KEY: not set (or set VAPI_API_KEY_FILE); "
                "to try the proxy without a key run: vapi-proxy serve --sandbox"
            ]
        )
    return settings


def uvicorn_kwargs(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """How uvicorn runs the proxy, for `serve`'s workers and `serve --sandbox` alike."""
    # Here, not at the top: every command imports this module, and only `serve` runs uvicorn.
    from vapi_proxy.cli.drain import DrainingHttpToolsProtocol

    return {
        "host": args.host,
        "port": args.port,
        "log_level": settings.logging.level,
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,  # the proxy's own trusted_proxies decide, not uvicorn
        "timeout_graceful_shutdown": settings.server.drain_seconds,
        # A reload or stop answers a request already on its way over a kept-alive connection
        # instead of resetting it (cli/drain.py).
        "http": DrainingHttpToolsProtocol,
    }


def bind_sockets(config: uvicorn.Config, settings: Settings) -> list[socket.socket]:
    """The proxy's listening sockets, bound now: `config`'s, and the console's own port when
    `admin.port` is set. One server listens on both (each of `serve`'s workers, `serve
    --sandbox`'s one server): a second server on the same app would run its start-up again.
    The admin routes answer only on the console's port."""
    sockets = [listen(config.host, config.port, "the proxy, --port")]
    if settings.admin.enabled and settings.admin.port is not None:
        try:
            sockets.append(listen(config.host, settings.admin.port, "the console, admin.port"))
        except CannotListenError:
            sockets[0].close()
            raise
    return sockets
