"""`vapi-proxy serve`: validate the config, then start the supervisor and its workers (or, with
`--sandbox`, the proxy and the simulator in one process: `vapi_proxy.sandbox.demo`)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import sys
from pathlib import Path

import uvicorn

from vapi_proxy import __version__
from vapi_proxy.cli.common import (
    EXIT_CONFIG,
    bind_sockets,
    config_path,
    ledger_location,
    print_problems,
    uvicorn_kwargs,
    validate_for_serve,
)
from vapi_proxy.cli.metrics import metrics_directory, serve_metrics_port
from vapi_proxy.cli.reload import reload_status_path
from vapi_proxy.cli.supervisor import Supervisor
from vapi_proxy.cli.worker import build_app
from vapi_proxy.listening import url_host
from vapi_proxy.settings import ConfigError


def cmd_serve(args: argparse.Namespace) -> int:
    from vapi_proxy.logs import configure_logging

    if args.sandbox:
        from vapi_proxy.sandbox.demo import serve_sandbox

        return asyncio.run(serve_sandbox(args))
    path = config_path(args)
    if path is None:
        print(
            "vapi-proxy serve: give --config PATH (or set VAPI_PROXY_CONFIG), "
            "or try it without a Vapi account: vapi-proxy serve --sandbox",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.workers < 1:
        print("vapi-proxy serve: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = validate_for_serve(path)
        memory = settings.limits.backend.startswith("memory")
        if args.workers > 1 and memory and settings.limits.rules:
            raise ConfigError(
                [
                    "limits.backend: memory:// counts per process, so with --workers "
                    f"{args.workers} every limit would be {args.workers} times too loose; use "
                    "sqlite:///path.db (one machine) or redis://... (several machines)"
                ]
            )
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_CONFIG
    configure_logging(settings.logging.level, settings.logging.format)
    # Workers are started (and, on SIGHUP, replaced) by a supervisor process, which also
    # means SIGTERM ends in exit status 0 after the drain. Each worker builds the app from
    # the config named here; metrics of all workers are summed through files in this folder.
    metrics_dir = metrics_directory()
    config = uvicorn.Config(
        functools.partial(build_app, str(Path(path).resolve()), metrics_dir.path),
        factory=True,
        workers=args.workers,
        # A replacement worker imports the whole app and migrates/opens its stores before it
        # answers the supervisor; on a busy host that takes a while, and giving up early
        # aborts a reload.
        timeout_worker_healthcheck=60,
        **uvicorn_kwargs(args, settings),
    )
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n", encoding="utf-8")
    metrics_server = None
    if settings.metrics.enabled and settings.metrics.port is not None:
        metrics_server = serve_metrics_port(args.host, settings.metrics.port, metrics_dir.path)
    status_file = reload_status_path(args.pid_file) if args.pid_file else None
    # With admin.port, every worker listens on the console's port too; the admin routes answer
    # only there (and only from admin.allowed_networks).
    sockets = bind_sockets(config, settings)
    supervisor = Supervisor(config, sockets, path, status_file, metrics_dir)
    print(
        f"vapi-proxy {__version__} listening on http://{url_host(args.host)}:{args.port} "
        f"({args.workers} worker(s), config {path}, "
        f"ledger {ledger_location(settings.ledger.url)})",
        flush=True,
    )
    try:
        supervisor.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        if args.pid_file:
            Path(args.pid_file).unlink(missing_ok=True)
        if status_file is not None:
            status_file.unlink(missing_ok=True)
        if metrics_dir.created:
            shutil.rmtree(metrics_dir.path, ignore_errors=True)
    return 1 if supervisor.startup_failed() else 0
